"""Run a prepared federation on Flower's simulation engine (Ray backend)."""

from __future__ import annotations

import json
import logging
import os
import secrets
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path

from fedsim.config import RunConfig, config_from_json
from fedsim.errors import ConfigError
from fedsim.fedmodels.models import ModelSpec
from fedsim.privacy.files import atomic_write_json
from fedsim.privacy.ledger import RUN_LEDGER, SITE_LEDGERS
from fedsim.server.app import HEPlan, ServerPlan, build_server_app
from fedsim.server.hooks import Listeners, RoundListener
from fedsim.simulations.prepare import Prepared, prepare
from fedsim.simulations.rundir import (
    Checkpoint,
    RunClock,
    RunRecorder,
    check_out_dir,
    fresh_run_dir,
    load_checkpoint,
)
from fedsim.simulations.signals import StopOnSignals

DEFAULT_GPU_SHARE = 0.2  # clients per GPU = 5 when the user sets no --gpus-per-client


@dataclass(frozen=True, kw_only=True)
class RunOutcome:
    """Where the run went and what it measured."""

    run_dir: Path
    summary: dict
    interrupted: int | None = None  # the signal that stopped the run, if one did


def cuda_available() -> bool:
    """True when torch sees a CUDA GPU in this process."""
    import torch

    return torch.cuda.is_available()


ACTOR_RESTARTS = 1000  # a ClientApp worker that dies is restarted by Ray
RAY_ADDRESS_ENV = "FEDSIM_RAY_ADDRESS"  # the Ray cluster runs use when no --ray-address


def client_resources(cfg: RunConfig) -> dict[str, float]:
    """Ray options per ClientApp actor; on a GPU machine, share GPUs unless told.

    Flower passes these straight to the actor's Ray options: besides resources,
    `max_restarts` makes Ray restart a worker process that died (OOM, a crash in
    native code) so later rounds keep their full actor pool; the message it was
    handling comes back as a failed reply and is counted as such.
    """
    gpus = cfg.gpus_per_client
    if cfg.device == "cuda" and not cuda_available():
        raise ConfigError("--device cuda was asked for but no CUDA GPU is visible; "
                          "use --device auto or --device cpu")
    if gpus == 0.0 and cfg.device != "cpu" and cuda_available():
        gpus = DEFAULT_GPU_SHARE
    return {"num_cpus": cfg.cpus_per_client, "num_gpus": gpus,
            "max_restarts": ACTOR_RESTARTS}


def backend_config(cfg: RunConfig, *, verbose: bool) -> dict:
    """Flower's Ray backend settings: a local Ray, or an existing cluster.

    The cluster is --ray-address, else $FEDSIM_RAY_ADDRESS (a machine that keeps a
    `ray start --head` for many runs saves each run Ray's start-up).
    """
    init_args = {
        "logging_level": logging.INFO if verbose else logging.ERROR,
        "log_to_driver": verbose,
    }
    address = cfg.ray_address or os.environ.get(RAY_ADDRESS_ENV) or None
    if address:
        init_args["address"] = address
    else:  # always a fresh local Ray, even if a `ray start` cluster runs here
        init_args.update(address="local", num_cpus=os.cpu_count() or 1,
                         include_dashboard=False)
    return {"client_resources": client_resources(cfg), "init_args": init_args}


def quiet_logs(verbose: bool) -> None:
    """Keep Flower and Ray chatter out of the user's way unless --verbose."""
    level = logging.INFO if verbose else logging.ERROR
    # Flower logs a client's failure as a multi-line traceback; fedsim logs one line
    # per failed client itself, so Flower stays quiet unless --verbose.
    logging.getLogger("flwr").setLevel(logging.INFO if verbose else logging.CRITICAL)
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
    run_id: str | None = None  # random, in federation.json: names the run in ledgers


def provision_simulation_keys(cfg: RunConfig, run_dir: Path) -> HEPlan:
    """A fresh HE key set inside the run folder, provisioned as `fedsim keys init` does.

    In simulation every client runs on this machine, so the client key file's
    passphrase is a random one kept in a 0600 file beside it, in a 0700 folder. The
    strategy is only ever given server.ctx (parameters, no key), but the process that
    hosts it could read he/: one machine holds every key in a simulation, so the
    server/client separation is real only in a deployment.
    """
    from fedsim.privacy.he import PARAMETER_SETS
    from fedsim.privacy.keys import provision

    folder = he_folder(run_dir)
    passphrase = secrets.token_urlsafe(32)
    pass_file = folder / "passphrase"
    fd = os.open(pass_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(passphrase)
    keys = provision(folder, params=PARAMETER_SETS[cfg.he_params], passphrase=passphrase)
    return _he_plan(folder, keys.fingerprint)


def he_folder(run_dir: Path) -> Path:
    """The run folder's he/, created private to this user (0700, whatever the umask)."""
    folder = (Path(run_dir) / "he").resolve()
    folder.mkdir(parents=True, exist_ok=True, mode=0o700)
    os.chmod(folder, 0o700)
    return folder


def _he_plan(folder: Path, fingerprint: str) -> HEPlan:
    """The run's HE plan: absolute paths inside its he/, its key set's fingerprint.

    Each simulation has its own key set, so its fingerprint doubles as the run id
    bound into every tag (stable when the run is resumed).
    """
    from fedsim.privacy.keys import CLIENT_KEY_NAME, SERVER_CONTEXT_NAME  # loaded by now

    return HEPlan(server_context_path=str(folder / SERVER_CONTEXT_NAME),
                  fingerprint=fingerprint, client_key_path=str(folder / CLIENT_KEY_NAME),
                  passphrase_file=str(folder / "passphrase"), run_id=f"sim-{fingerprint}")


def start_run(cfg: RunConfig, *, force: bool = False) -> PreparedRun:
    """Check the config against the data, make the run folder, write config and data.

    An --out folder that already holds a run is refused unless `force` (then replaced).
    """
    client_resources(cfg)  # fail early on an impossible device request
    check_out_dir(cfg.out, force=force)
    run_dir, prepared = prepare(cfg, lambda: fresh_run_dir(cfg.out, replace=force))
    he = provision_simulation_keys(cfg, run_dir) if cfg.secure_agg == "he" else None
    run_id = secrets.token_hex(8)
    atomic_write_json(run_dir / "federation.json", {
        "model": prepared.model.to_dict(), "num_parameters": prepared.num_parameters,
        "train_size": prepared.train_size, "test_size": prepared.test_size,
        "run_id": run_id})
    atomic_write_json(run_dir / "config.json", cfg.to_dict() | {"out": str(run_dir)})
    return PreparedRun(config=cfg, run_dir=run_dir, prepared=prepared, he=he,
                       run_id=run_id)


def simulate(cfg: RunConfig, *, listener: RoundListener | None = None,
             verbose: bool = False, started: PreparedRun | None = None,
             client_app=None, started_at: float | None = None) -> RunOutcome:
    """Prepare (unless `started` is given) and run a whole simulation.

    `client_app` replaces fedsim's ClientApp (tests inject faulty clients this way);
    `started_at` is the `time.monotonic()` the run's wall time counts from (the CLI
    passes its own start; default: now).
    """
    clock = RunClock() if started_at is None else RunClock(started=started_at)
    quiet_logs(verbose)
    started = started or start_run(cfg)
    return _execute(started, listener=listener, verbose=verbose, client_app=client_app,
                    clock=clock)


def resume(run_dir: str | Path, *, listener: RoundListener | None = None,
           verbose: bool = False, client_app=None,
           started_at: float | None = None) -> RunOutcome:
    """Continue a run folder from its last complete round (after a crash or kill)."""
    quiet_logs(verbose)
    run_dir = Path(run_dir)
    started = reopen_run(run_dir)
    checkpoint = load_checkpoint(run_dir)
    prior = checkpoint.wall_time_s if checkpoint else 0.0
    clock = (RunClock(prior_s=prior) if started_at is None
             else RunClock(started=started_at, prior_s=prior))
    return _execute(started, listener=listener, verbose=verbose, client_app=client_app,
                    checkpoint=checkpoint, clock=clock)


def reopen_run(run_dir: Path) -> PreparedRun:
    """Rebuild a PreparedRun from what start_run wrote into the folder."""
    missing = [n for n in ("config.json", "federation.json", "data") if not (run_dir / n).exists()]
    if missing:
        raise ConfigError(f"cannot resume '{run_dir}': {', '.join(missing)} missing; "
                          "give a run folder made by fedsim run")
    cfg = config_from_json((run_dir / "config.json").read_text())
    fed = json.loads((run_dir / "federation.json").read_text())
    prepared = Prepared(model=ModelSpec.from_dict(fed["model"]), data_dir=run_dir / "data",
                        num_parameters=fed["num_parameters"], train_size=fed["train_size"],
                        test_size=fed["test_size"])
    he = None
    if cfg.secure_agg == "he":
        from fedsim.privacy.keys import SERVER_CONTEXT_NAME, key_info

        folder = he_folder(run_dir)
        he = _he_plan(folder, str(key_info(folder / SERVER_CONTEXT_NAME)["fingerprint"]))
    return PreparedRun(config=cfg, run_dir=run_dir, prepared=prepared, he=he,
                       run_id=str(fed.get("run_id") or run_dir.resolve()))


def _start_ray(init_args: dict) -> None:
    """Start (or connect to) Ray here, so that our signal handlers can follow its own.

    Flower's Ray backend then finds Ray up and uses it. Workers get this process's
    import path, so ClientApps defined outside the installed package load there too.
    """
    import ray

    if ray.is_initialized():
        return
    path = os.pathsep.join([*sys.path, *filter(None, [os.environ.get("PYTHONPATH")])])
    os.environ["PYTHONPATH"] = path
    ray.init(runtime_env={"env_vars": {"PYTHONPATH": path}},
             **{"include_dashboard": False, **init_args})


def _run_federation(plan: ServerPlan, listeners: Listeners, client_app, cfg: RunConfig,
                    *, verbose: bool, stop: StopOnSignals) -> None:
    """Flower's simulation on Ray, with SIGINT/SIGTERM turned into a clean stop."""
    from flwr.simulation import run_simulation

    backend = backend_config(cfg, verbose=verbose)
    with stop:
        _start_ray(backend["init_args"])
        stop.install()  # ray.init replaced the SIGTERM handler with its own
        if stop.event.is_set():
            return
        run_simulation(
            server_app=build_server_app(plan, listeners),
            client_app=client_app,
            num_supernodes=cfg.clients,
            backend_config=backend,
            verbose_logging=verbose,
        )


def _execute(started: PreparedRun, *, listener, verbose: bool, client_app,
             checkpoint: Checkpoint | None = None,
             clock: RunClock | None = None) -> RunOutcome:
    if client_app is None:
        from fedsim.client.app import app as client_app
    cfg, run_dir, prepared = started.config, started.run_dir, started.prepared
    recorder = RunRecorder(run_dir, resume_rows=checkpoint.rows if checkpoint else None,
                           clock=clock)
    listeners = Listeners(recorder, *([listener] if listener else []))
    stop = StopOnSignals(second_signal_note=f"Resume with: fedsim run --resume {run_dir}")
    plan = ServerPlan(
        config=cfg, model=prepared.model, data_dir=str(prepared.data_dir.resolve()),
        ledger_path=str(run_dir / RUN_LEDGER) if cfg.dp else None,
        run_id=started.run_id,
        site_ledger_dir=(str((run_dir / SITE_LEDGERS).resolve())
                         if cfg.dp else None),
        he=started.he,
        resume_round=checkpoint.round if checkpoint else 0,
        resume_arrays=checkpoint.arrays if checkpoint else None,
        stop=stop.event,
    )
    _run_federation(plan, listeners, client_app, cfg, verbose=verbose, stop=stop)
    # a signal that came after the last round changes nothing: the run is complete
    interrupted = stop.signum if stop.signum is not None and not recorder.finished else None
    extra = {"num_parameters": prepared.num_parameters, "model": cfg.model,
             "dataset": cfg.dataset, "resumed_from_round": plan.resume_round or None,
             "interrupted": stop.name if interrupted else None}
    if interrupted:
        done = recorder.rows[-1]["round"] if recorder.rows else 0
        extra["stop_reason"] = (f"interrupted by {stop.name} after round {done} of "
                                f"{cfg.rounds}; continue with: fedsim run --resume {run_dir}")
    if started.he is not None:
        extra["he_fingerprint"] = started.he.fingerprint
    if cfg.dp:
        extra["dp_against_server"] = not cfg.insecure_reproducible_noise
    summary = recorder.summary(extra)
    atomic_write_json(run_dir / "summary.json", summary)
    return RunOutcome(run_dir=run_dir, summary=summary, interrupted=interrupted)
