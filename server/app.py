"""The fedsim ServerApp: handshake, then the chosen strategy's round loop with our hooks."""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field, replace

import numpy as np
import torch
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, MetricRecord
from flwr.serverapp import Grid, ServerApp

from fedsim import protocol
from fedsim.config import RunConfig
from fedsim.errors import RunInterrupted
from fedsim.fedmodels.models import ModelSpec, build_model
from fedsim.fedmodels.store import open_store
from fedsim.fedmodels.training import evaluate, resolve_device
from fedsim.protocol import is_encrypted
from fedsim.server.codecs import PlainCodec
from fedsim.server.federation import discover
from fedsim.server.hooks import RoundListener
from fedsim.server.strategies.fedavg import FedsimFedAvg
from fedsim.server.strategies.registry import strategies
from fedsim.server.streaming import StreamingGrid
from fedsim.settings import ClientSettings, DPSettings, HESettings

log = logging.getLogger("fedsim.server")


@dataclass(frozen=True, kw_only=True)
class HEPlan:
    """The server's view of the HE key set: server.ctx only (no secret key)."""

    server_context_path: str
    fingerprint: str
    client_key_path: str  # simulation: the run folder's he/client.key (deployment sites
    passphrase_file: str | None = None  # ignore both and use their own node config)
    run_id: str = ""  # bound into every tag; empty: Flower's run id


@dataclass(frozen=True, kw_only=True)
class ServerPlan:
    """What the ServerApp needs: the run config, the model and where data lives."""

    config: RunConfig
    model: ModelSpec
    data_dir: str | None  # None: clients hold their own data (deployment)
    ledger_path: str | None = None  # DP runs: privacy/ledger.jsonl
    run_id: str | None = None  # names the run in ledgers (simulation: federation.json)
    site_ledger_dir: str | None = None  # simulation + DP: clients' own ledgers here
    he: HEPlan | None = None
    central_eval: bool = True
    handshake_timeout: float = 120.0
    resume_round: int = 0  # rounds already completed (a resumed run)
    resume_arrays: dict[str, np.ndarray] | None = None  # the global state after it
    # set from outside (SIGINT/SIGTERM) to end the run after the last completed round
    stop: threading.Event = field(default_factory=threading.Event)


def client_settings(plan: ServerPlan) -> ClientSettings:
    """The training settings every client receives in its messages."""
    cfg = plan.config
    return ClientSettings(
        model=plan.model, dataset=cfg.dataset, local_epochs=cfg.local_epochs,
        batch_size=cfg.batch_size, lr=cfg.lr, device=cfg.device, seed=cfg.seed,
        val_fraction=cfg.val_fraction, run_id=plan.run_id, rounds=cfg.rounds,
        fraction=cfg.fraction, dp=DPSettings.from_run_config(cfg) if cfg.dp else None,
        he=None if plan.he is None else HESettings(
            key_path=plan.he.client_key_path, passphrase_file=plan.he.passphrase_file,
            fingerprint=plan.he.fingerprint, run_id=plan.he.run_id,
            clients=cfg.clients))


def initial_model(plan: ServerPlan) -> torch.nn.Module:
    """The seeded initial global model."""
    torch.manual_seed(plan.config.seed)
    return build_model(plan.model)


class CentralEvaluator:
    """Evaluates the global model on the held-out test split (plaintext runs)."""

    def __init__(self, plan: ServerPlan) -> None:
        self.model = build_model(plan.model)
        self.x, self.y = open_store(plan.data_dir).test_data()
        self.device = resolve_device("cpu")

    def __call__(self, arrays: ArrayRecord) -> tuple[float, float]:
        """(loss, accuracy) on the test split."""
        self.model.load_state_dict(arrays.to_torch_state_dict())
        return evaluate(self.model, self.x, self.y, device=self.device)


def _round_end_hook(strategy: FedsimFedAvg, evaluator: CentralEvaluator | None,
                    listener: RoundListener, completed: dict):
    """The end-of-round hook; `completed` keeps the last recorded round and its state."""
    def hook(server_round: int, arrays: ArrayRecord) -> MetricRecord | None:
        if server_round == 0 and strategy.round_offset:
            return None  # a resumed run: the initial evaluation was done before
        server_round = strategy.run_round(server_round)
        if strategy.stop_reason is not None and strategy.stats.clients_sampled == 0:
            return None  # the run has ended early; nothing happened this round
        completed.update(round=server_round, arrays=arrays)
        record: dict = {"round": server_round}
        metrics: dict = {}
        if evaluator is not None:
            loss, acc = evaluator(arrays)
            record.update(central_loss=loss, central_accuracy=acc)
            metrics = {"central-loss": loss, "central-acc": acc}
        if server_round == 0:
            listener.on_round(record | {"initial": True})
        else:
            record.update(strategy.stats.to_dict())
            record.update(strategy.round_extras())
            if strategy.stop_reason is not None:  # too few updates: the model is unchanged
                record["aggregated"] = False
            record["round_time_s"] = time.monotonic() - strategy.stats.started
            listener.on_round(record)
            listener.on_checkpoint(server_round, arrays)
        return MetricRecord(metrics) if metrics else None

    return hook


def make_codec(plan: ServerPlan):
    """Plaintext, or CKKS with server.ctx only (never a secret key)."""
    if plan.he is None:
        return PlainCodec()
    from fedsim.privacy.he_tag import Layout, initial_basis
    from fedsim.privacy.keys import load_server_context
    from fedsim.server.he_codec import HECodec

    context, params = load_server_context(plan.he.server_context_path,
                                          expect_fingerprint=plan.he.fingerprint)
    n_params = sum(p.numel() for p in build_model(plan.model).state_dict().values())
    return HECodec(public_context=context, fingerprint=plan.he.fingerprint,
                   layout=Layout(num_params=n_params, num_clients=plan.config.clients),
                   params_name=params.name,
                   initial_basis=initial_basis(plan.model.to_dict(), plan.config.seed))


def he_min_clients(plan: ServerPlan) -> int:
    """--min-clients, raised under HE to the clients' default floor of contributors.

    Clients refuse a sum of fewer than 2 distinct contributions (it would show one
    client's update to the others), so a round with fewer ends the run here, with
    its reason, instead of every client refusing the next global.
    """
    from fedsim.privacy.he_tag import MIN_CONTRIBUTORS

    cfg = plan.config
    if plan.he is None:
        return cfg.min_clients
    return max(cfg.min_clients, min(MIN_CONTRIBUTORS, cfg.clients))


def make_strategy(plan: ServerPlan, federation) -> FedsimFedAvg:
    """The registered `--strategy`, with the DP ledger when DP is on, and the codec.

    DP-SGD runs on the clients; the server's part (ledger, budgets, participation
    caps) is `DPFedAvg`, composed with whichever strategy was chosen (`with_dp`).
    """
    cfg = plan.config
    strategy = strategies()[cfg.strategy].build
    common = {"federation": federation, "fraction": cfg.fraction,
              "fraction_evaluate": cfg.fraction, "codec": make_codec(plan),
              "min_clients": he_min_clients(plan), "round_offset": plan.resume_round,
              **dict(cfg.strategy_options)}
    if not cfg.dp:
        return strategy(**common)
    from fedsim.privacy.accounting import participation_cap
    from fedsim.privacy.ledger import PrivacyLedger
    from fedsim.server.strategies.dp_fedavg import with_dp

    return with_dp(strategy)(
        ledger=PrivacyLedger(plan.ledger_path), accountant=cfg.accountant,
        delta=cfg.delta, budget=cfg.epsilon_budget,
        max_participations=participation_cap(cfg.rounds, cfg.max_participations),
        run_id=plan.run_id, replay_identical=cfg.insecure_reproducible_noise, **common)


def run_server(grid: Grid, plan: ServerPlan, listener: RoundListener) -> None:
    """The ServerApp body: discover clients, run the rounds, hand over the model."""
    cfg = plan.config
    if plan.he is not None and not plan.he.run_id:
        plan = replace(plan, he=replace(plan.he, run_id=protocol.flower_run_key(grid.run.run_id)))
    streaming = StreamingGrid(grid, stop=plan.stop)
    try:
        federation = discover(streaming, expected=cfg.clients, seed=cfg.seed,
                              timeout=plan.handshake_timeout)
    except RunInterrupted:
        log.info("stop requested before the first round")
        return
    listener.on_start({"clients": len(federation.nodes)})
    strategy = make_strategy(plan, federation)
    readable = strategy.codec.readable
    evaluator = (CentralEvaluator(plan)
                 if plan.central_eval and plan.data_dir and readable else None)
    settings = strategy.settings_for_clients(client_settings(plan))
    config = ConfigRecord({protocol.SETTINGS: settings.encode()})
    if plan.data_dir:
        config[protocol.DATA_DIR] = plan.data_dir
    if plan.data_dir and plan.site_ledger_dir:  # simulated sites keep theirs here
        config[protocol.SIM_PRIVACY_DIR] = plan.site_ledger_dir
    initial = (ArrayRecord({k: Array(v) for k, v in plan.resume_arrays.items()})
               if plan.resume_arrays is not None
               else ArrayRecord(initial_model(plan).state_dict()))
    completed = {"round": plan.resume_round, "arrays": initial}
    try:
        result = strategy.start(
            grid=streaming,
            initial_arrays=initial,
            num_rounds=cfg.rounds - plan.resume_round,
            timeout=cfg.round_timeout,
            train_config=config,
            evaluate_config=ConfigRecord(dict(config)),
            evaluate_fn=_round_end_hook(strategy, evaluator, listener, completed),
        )
    except RunInterrupted:
        _finish_interrupted(listener, completed, _he_info(plan))
        return
    strategy.take_late_replies()  # replies that came in after the last round closed
    final = result.arrays if result.arrays is not None and len(result.arrays) else initial
    info = {"stop_reason": strategy.stop_reason, "encrypted": is_encrypted(final),
            **_he_info(plan)}
    listener.on_finish(final, info)


def _he_info(plan: ServerPlan) -> dict:
    """What a key holder needs to verify and decrypt the final model (HE runs)."""
    if plan.he is None:
        return {}
    return {"he": {"run_id": plan.he.run_id, "clients": plan.config.clients,
                   "fingerprint": plan.he.fingerprint, "model": plan.model.to_dict()}}


def _finish_interrupted(listener: RoundListener, completed: dict, he_info: dict) -> None:
    """Hand over the state of the last completed round; the abandoned one leaves no trace."""
    final = completed["arrays"]
    log.info("stop requested: the round in progress is abandoned; the run keeps "
             "%d completed round(s)", completed["round"])
    listener.on_finish(final, {"interrupted": True, "rounds_completed": completed["round"],
                               "encrypted": is_encrypted(final), **he_info})


def build_server_app(plan: ServerPlan, listener: RoundListener) -> ServerApp:
    """A ServerApp bound to one plan and one listener."""
    app = ServerApp()

    @app.main()
    def main(grid: Grid, context: Context) -> None:
        run_server(grid, plan, listener)

    return app
