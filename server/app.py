"""The fedsim ServerApp: handshake, then Flower's FedAvg round loop with our hooks."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, MetricRecord
from flwr.serverapp import Grid, ServerApp

from fedsim import protocol
from fedsim.client.training import evaluate, resolve_device
from fedsim.config import RunConfig
from fedsim.fedmodels.models import ModelSpec, build_model
from fedsim.fedmodels.store import open_store
from fedsim.server.federation import discover
from fedsim.server.hooks import RoundListener
from fedsim.server.strategies.fedavg import FedsimFedAvg

log = logging.getLogger("fedsim.server")


@dataclass(frozen=True, kw_only=True)
class ServerPlan:
    """What the ServerApp needs: the run config, the model and where data lives."""

    config: RunConfig
    model: ModelSpec
    data_dir: str | None  # None: clients hold their own data (deployment)
    central_eval: bool = True
    handshake_timeout: float = 120.0


def client_settings(plan: ServerPlan) -> dict:
    """The training settings every client receives in its messages."""
    cfg = plan.config
    return {
        "model": plan.model.to_dict(),
        "local_epochs": cfg.local_epochs,
        "batch_size": cfg.batch_size,
        "lr": cfg.lr,
        "device": cfg.device,
        "seed": cfg.seed,
    }


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
                    listener: RoundListener):
    def hook(server_round: int, arrays: ArrayRecord) -> MetricRecord | None:
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
            record["round_time_s"] = time.monotonic() - strategy.stats.started
            listener.on_round(record)
        return MetricRecord(metrics) if metrics else None

    return hook


def run_server(grid: Grid, plan: ServerPlan, listener: RoundListener) -> None:
    """The ServerApp body: discover clients, run the rounds, hand over the model."""
    cfg = plan.config
    federation = discover(grid, expected=cfg.clients, seed=cfg.seed,
                          timeout=plan.handshake_timeout)
    listener.on_start({"clients": len(federation.nodes)})
    strategy = FedsimFedAvg(federation=federation, fraction=cfg.fraction,
                            fraction_evaluate=cfg.fraction)
    evaluator = CentralEvaluator(plan) if plan.central_eval and plan.data_dir else None
    config = ConfigRecord({protocol.SETTINGS: protocol.encode_settings(client_settings(plan))})
    if plan.data_dir:
        config[protocol.DATA_DIR] = plan.data_dir
    initial = ArrayRecord(initial_model(plan).state_dict())
    result = strategy.start(
        grid=grid,
        initial_arrays=initial,
        num_rounds=cfg.rounds,
        timeout=cfg.round_timeout,
        train_config=config,
        evaluate_config=ConfigRecord(dict(config)),
        evaluate_fn=_round_end_hook(strategy, evaluator, listener),
    )
    final = result.arrays if result.arrays is not None and len(result.arrays) else initial
    listener.on_finish(final.to_torch_state_dict())


def build_server_app(plan: ServerPlan, listener: RoundListener) -> ServerApp:
    """A ServerApp bound to one plan and one listener."""
    app = ServerApp()

    @app.main()
    def main(grid: Grid, context: Context) -> None:
        run_server(grid, plan, listener)

    return app
