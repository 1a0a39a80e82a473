"""Run a prepared federation on Flower's simulation engine (Ray backend)."""

from __future__ import annotations

import logging
import os
import secrets
import warnings
from dataclasses import dataclass
from pathlib import Path

from fedsim.config import RunConfig
from fedsim.errors import ConfigError
from fedsim.server.app import HEPlan, ServerPlan, build_server_app
from fedsim.server.hooks import Listeners, RoundListener
from fedsim.simulations.prepare import Prepared, prepare
from fedsim.simulations.rundir import RunRecorder, atomic_write_json, fresh_run_dir

DEFAULT_GPU_SHARE = 0.2  # clients per GPU = 5 when the user sets no --gpus-per-client


@dataclass(frozen=True, kw_only=True)
class RunOutcome:
    """Where the run went and what it measured."""

    run_dir: Path
    summary: dict


def cuda_available() -> bool:
    """True when torch sees a CUDA GPU in this process."""
    import torch

    return torch.cuda.is_available()


def client_resources(cfg: RunConfig) -> dict[str, float]:
    """Ray resources per ClientApp; on a GPU machine, share GPUs unless told."""
    gpus = cfg.gpus_per_client
    if cfg.device == "cuda" and not cuda_available():
        raise ConfigError("--device cuda was asked for but no CUDA GPU is visible; "
                          "use --device auto or --device cpu")
    if gpus == 0.0 and cfg.device != "cpu" and cuda_available():
        gpus = DEFAULT_GPU_SHARE
    return {"num_cpus": cfg.cpus_per_client, "num_gpus": gpus}


def backend_config(cfg: RunConfig, *, verbose: bool) -> dict:
    """Flower's Ray backend settings."""
    return {
        "client_resources": client_resources(cfg),
        "init_args": {
            "num_cpus": os.cpu_count() or 1,
            "logging_level": logging.INFO if verbose else logging.ERROR,
            "log_to_driver": verbose,
            "include_dashboard": False,
        },
    }


def quiet_logs(verbose: bool) -> None:
    """Keep Flower and Ray chatter out of the user's way unless --verbose."""
    level = logging.INFO if verbose else logging.ERROR
    logging.getLogger("flwr").setLevel(level)
    logging.getLogger("ray").setLevel(level)
    logging.getLogger("fedsim").setLevel(logging.INFO if verbose else logging.WARNING)
    if not verbose:
        os.environ.setdefault("RAY_DEDUP_LOGS", "0")
        warnings.filterwarnings("ignore")


@dataclass(frozen=True, kw_only=True)
class PreparedRun:
    """A run folder with its config and data written, ready to simulate."""

    config: RunConfig
    run_dir: Path
    prepared: Prepared
    he: HEPlan | None = None


def provision_simulation_keys(cfg: RunConfig, run_dir: Path) -> HEPlan:
    """A fresh HE key set inside the run folder, provisioned as `fedsim keys init` does.

    In simulation every client runs on this machine, so the client key file's
    passphrase is a random one kept in a 0600 file beside it; the server side is
    only ever given the public context.
    """
    from fedsim.privacy.he import PARAMETER_SETS
    from fedsim.privacy.keys import provision

    folder = run_dir / "he"
    folder.mkdir(parents=True, exist_ok=True)
    passphrase = secrets.token_urlsafe(32)
    pass_file = folder / "passphrase"
    fd = os.open(pass_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(passphrase)
    keys = provision(folder, params=PARAMETER_SETS[cfg.he_params], passphrase=passphrase)
    return HEPlan(server_context_path=str(keys.server_context_path),
                  fingerprint=keys.fingerprint,
                  client_key_path=str(keys.client_key_path),
                  passphrase_file=str(pass_file))


def start_run(cfg: RunConfig) -> PreparedRun:
    """Check the config against the data, make the run folder, write config and data."""
    client_resources(cfg)  # fail early on an impossible device request
    run_dir, prepared = prepare(cfg, lambda: fresh_run_dir(cfg.out))
    he = provision_simulation_keys(cfg, run_dir) if cfg.secure_agg == "he" else None
    atomic_write_json(run_dir / "config.json", cfg.to_dict() | {"out": str(run_dir)})
    return PreparedRun(config=cfg, run_dir=run_dir, prepared=prepared, he=he)


def simulate(cfg: RunConfig, *, listener: RoundListener | None = None,
             verbose: bool = False, started: PreparedRun | None = None,
             client_app=None) -> RunOutcome:
    """Prepare (unless `started` is given) and run a whole simulation.

    `client_app` replaces fedsim's ClientApp (tests inject faulty clients this way).
    """
    from flwr.simulation import run_simulation

    if client_app is None:
        from fedsim.client.app import app as client_app

    quiet_logs(verbose)
    started = started or start_run(cfg)
    run_dir, prepared = started.run_dir, started.prepared
    recorder = RunRecorder(run_dir)
    listeners = Listeners(recorder, *( [listener] if listener else [] ))
    plan = ServerPlan(
        config=cfg, model=prepared.model, data_dir=str(prepared.data_dir.resolve()),
        ledger_path=str(run_dir / "privacy" / "ledger.jsonl") if cfg.dp else None,
        he=started.he,
    )
    run_simulation(
        server_app=build_server_app(plan, listeners),
        client_app=client_app,
        num_supernodes=cfg.clients,
        backend_config=backend_config(cfg, verbose=verbose),
        verbose_logging=verbose,
    )
    extra = {"num_parameters": prepared.num_parameters, "model": cfg.model,
             "dataset": cfg.dataset}
    if started.he is not None:
        extra["he_fingerprint"] = started.he.fingerprint
    summary = recorder.summary(extra)
    atomic_write_json(run_dir / "summary.json", summary)
    return RunOutcome(run_dir=run_dir, summary=summary)
