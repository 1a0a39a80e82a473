"""The deployment's run folder on the server, in the layout a simulation writes.

config.json, metrics.jsonl, checkpoint/, model.pt (or model_encrypted.npz under HE),
summary.json and privacy/ledger.jsonl (DP): the same files, written by the same
RunRecorder, so `fedsim report` reads both alike. There is no partitions.json: the
sites' data never reaches the server. deployment.json names the run in ledgers
(`run_id`, from its first Flower run) and lists the Flower runs that worked on it.

A run whose ServerApp ended before its last round (a SuperLink restart, a crash,
`flwr stop`) is continued by a new Flower run with `resume = true` and the
same run-name (`DeployRecorder.reopen`): from its last checkpoint, with the config
it was started with, under the same run id, so that every site keeps accounting
it as one run (`fedsim.client.dp_step.run_keys`).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import zipfile
from dataclasses import dataclass
from pathlib import Path

from fedsim.config import config_from_json
from fedsim.deploy.runconfig import DeployPlan, model_spec
from fedsim.errors import ConfigError
from fedsim.fedmodels.models import build_model, count_parameters
from fedsim.privacy.files import LockHeld, atomic_write_json, lock_file
from fedsim.protocol import MAX_CLASSES, MAX_INPUT, flower_run_key, is_flower_run_key
from fedsim.server.app import ServerPlan
from fedsim.simulations.rundir import (
    Checkpoint,
    RunClock,
    RunRecorder,
    load_checkpoint,
)

log = logging.getLogger("fedsim.deploy")

DEPLOYMENT_FILE = "deployment.json"
LOCK_FILE = ".lock"


@dataclass(frozen=True, kw_only=True)
class Continuation:
    """What a resumed deployment goes on from."""

    plan: DeployPlan  # the submission, with the run's own stored config
    run_id: str  # the run's name in ledgers and HE tags (its first Flower run's)
    checkpoint: Checkpoint


class DeployRecorder(RunRecorder):
    """A RunRecorder that also writes config.json and summary.json itself.

    It holds the run folder's lock (`.lock`, an exclusive flock) from `create` or
    `reopen` until `close`: one ServerApp writes a run folder at a time.
    """

    lock: RunFolderLock | None = None

    @classmethod
    def create(cls, plan: DeployPlan) -> DeployRecorder:
        """Make `out/<run name>`; an existing non-empty folder is refused."""
        run_dir = plan.out / plan.run_name
        try:
            run_dir.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise ConfigError(f"cannot create the run folder '{run_dir}': "
                              f"{err.strerror}; mount a writable folder at "
                              f"'{plan.out}' or set out=PATH") from err
        lock = RunFolderLock.take(run_dir, plan.flower_run_id)
        if any(p.name != LOCK_FILE for p in run_dir.iterdir()):
            lock.release()
            raise ConfigError(f"run folder '{run_dir}' already holds a run; choose "
                              "another run-name (or resume it: resume=true)")
        atomic_write_json(run_dir / DEPLOYMENT_FILE, {
            "run_id": flower_run_key(plan.flower_run_id),
            "flower_runs": [plan.flower_run_id],
            "input_shape": list(plan.input_shape) if plan.input_shape else None,
            "num_classes": plan.num_classes})
        recorder = cls(run_dir)
        recorder.lock = lock
        return recorder

    @classmethod
    def reopen(cls, plan: DeployPlan) -> tuple[DeployRecorder, Continuation]:
        """Reopen `out/<run name>` to continue it from its last complete round.

        The run goes on with the config and model it was started with; options of
        the resuming submission that differ are logged and not used. An HE run is
        refused: each site accepts one global and gives one contribution per round
        of a run, so the round the ServerApp lost cannot be run again (which is what
        keeps a server from differencing two sums of one round).
        """
        run_dir = plan.out / plan.run_name
        if not (run_dir / DEPLOYMENT_FILE).is_file():
            raise ConfigError(f"cannot resume '{run_dir}': it holds no readable "
                              f"{DEPLOYMENT_FILE} (not a deployment's run folder?)")
        lock = RunFolderLock.take(run_dir, plan.flower_run_id)
        try:
            recorder, cont = cls._reopen_locked(plan, run_dir)
        except BaseException:
            lock.release()
            raise
        recorder.lock = lock
        return recorder, cont

    @classmethod
    def _reopen_locked(cls, plan: DeployPlan, run_dir: Path
                       ) -> tuple[DeployRecorder, Continuation]:
        stored, config, checkpoint = _resumable(run_dir)
        _log_ignored(plan, config)  # the submission's options, against the run's own
        shape = stored.get("input_shape")
        plan = dataclasses.replace(plan, config=config, num_classes=stored.get("num_classes"),
                                   input_shape=tuple(shape) if shape else None)
        _check_checkpoint(checkpoint, plan, run_dir)
        runs = [*stored["flower_runs"], plan.flower_run_id]
        atomic_write_json(run_dir / DEPLOYMENT_FILE, {**stored, "flower_runs": runs})
        recorder = cls(run_dir, resume_rows=checkpoint.rows,
                       clock=RunClock(prior_s=checkpoint.wall_time_s))
        return recorder, Continuation(plan=plan, run_id=stored["run_id"],
                                      checkpoint=checkpoint)

    def close(self) -> None:
        """Release the run folder's lock (the ServerApp is done with it)."""
        if self.lock is not None:
            self.lock.release()
            self.lock = None

    def write_config(self, plan: ServerPlan) -> None:
        """config.json: the resolved run config, its `out` the run folder itself."""
        values = plan.config.to_dict() | {"out": str(self.run_dir)}
        atomic_write_json(self.run_dir / "config.json", values)

    def write_summary(self, plan: ServerPlan) -> dict:
        """summary.json with the totals and what the run was."""
        cfg = plan.config
        extra = {"num_parameters": count_parameters(build_model(plan.model)),
                 "model": cfg.model, "dataset": cfg.dataset, "mode": "deployment",
                 "resumed_from_round": plan.resume_round or None}
        if plan.he is not None:
            extra["he_fingerprint"] = plan.he.fingerprint
        summary = self.summary(extra)
        atomic_write_json(Path(self.run_dir) / "summary.json", summary)
        return summary


class RunFolderLock:
    """An exclusive, non-blocking flock on `<run folder>/.lock`, held while a run writes.

    The kernel drops it when its process ends, however it ends (a crashed
    ServerApp leaves no stale lock behind).
    """

    def __init__(self, fd: int) -> None:
        self.fd: int | None = fd

    @classmethod
    def take(cls, run_dir: Path, flower_run: int) -> RunFolderLock:
        """Take the lock or refuse in one line, naming the Flower run that holds it."""
        try:
            fd = lock_file(run_dir / LOCK_FILE, wait=False, holder=str(flower_run))
        except LockHeld as err:
            raise ConfigError(f"run folder '{run_dir}' is in use by Flower run "
                              f"{err.holder or 'another'}; wait for it to end (or stop "
                              "it) before resuming") from err
        except OSError as err:
            raise ConfigError(f"cannot lock the run folder '{run_dir}': "
                              f"{err.strerror}") from err
        return cls(fd)

    def release(self) -> None:
        """Unlock and close (idempotent)."""
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None


def _resumable(run_dir: Path) -> tuple[dict, object, Checkpoint]:
    """deployment.json, config.json and the checkpoint of a run that can go on."""
    try:
        stored = json.loads((run_dir / DEPLOYMENT_FILE).read_text())
        summary_path = run_dir / "summary.json"
        summary = json.loads(summary_path.read_text()) if summary_path.is_file() else {}
        config = config_from_json((run_dir / "config.json").read_text())
        checkpoint = load_checkpoint(run_dir)
    except (OSError, ValueError, KeyError, TypeError, AttributeError, ArithmeticError,
            EOFError, RecursionError, zipfile.BadZipFile) as err:
        raise ConfigError(f"cannot resume '{run_dir}': its files cannot be read "
                          f"({type(err).__name__}: {str(err)[:120]})") from err
    runs = stored.get("flower_runs") if isinstance(stored, dict) else None
    if not (isinstance(runs, list) and runs and all(type(r) is int for r in runs)
            and isinstance(stored.get("run_id"), str)
            and is_flower_run_key(stored["run_id"])):
        raise ConfigError(f"cannot resume '{run_dir}': {DEPLOYMENT_FILE} names no "
                          "deployed run (run_id flower-<id>, flower_runs [ids])")
    shape, classes = stored.get("input_shape"), stored.get("num_classes")
    if not (shape is None or (isinstance(shape, list) and 0 < len(shape) <= 4
                              and all(type(d) is int and 0 < d <= 4096 for d in shape)
                              and math.prod(shape) <= MAX_INPUT)) \
            or not (classes is None or (type(classes) is int and 0 < classes <= MAX_CLASSES)):
        raise ConfigError(f"cannot resume '{run_dir}': {DEPLOYMENT_FILE} holds no valid "
                          "input_shape / num_classes (small positive integers or null)")
    if checkpoint is not None and checkpoint.round < 1:
        raise ConfigError(f"cannot resume '{run_dir}': its checkpoint names round "
                          f"{checkpoint.round}")
    if not isinstance(summary, dict):
        raise ConfigError(f"cannot resume '{run_dir}': its summary.json is no run summary")
    if summary.get("finished"):
        raise ConfigError(f"run folder '{run_dir}' holds a finished run; nothing to "
                          "resume")
    if config.secure_agg == "he":
        raise ConfigError("an HE deployment run cannot be resumed: its sites accept "
                          "one global and one contribution per round of a run, so "
                          "the lost round cannot be run again; start a new run")
    if checkpoint is None:
        raise ConfigError(f"run folder '{run_dir}' has no completed round to resume "
                          "from; submit the run anew under another run-name")
    return stored, config, checkpoint


def _check_checkpoint(checkpoint: Checkpoint, plan: DeployPlan, run_dir: Path) -> None:
    """The checkpoint holds exactly the run's model (names and shapes)."""
    want = {k: tuple(v.shape) for k, v in build_model(model_spec(plan)).state_dict().items()}
    have = {k: tuple(v.shape) for k, v in checkpoint.arrays.items()}
    if want != have:
        raise ConfigError(f"cannot resume '{run_dir}': its checkpoint is not the run's "
                          f"model ({plan.config.model}); the folder was changed")


def _log_ignored(plan: DeployPlan, stored) -> None:
    """Name the submitted options that differ from the run's own (which win)."""
    given, own = plan.config.to_dict(), stored.to_dict()
    differ = sorted(k for k in own if k != "out" and given.get(k) != own.get(k))
    if differ:
        log.warning("fedsim: resuming with the run's own config; the submission's "
                    "%s differ and are not used", ", ".join(differ))
