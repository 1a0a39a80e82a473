"""The run folder: every file written atomically (temp file + rename)."""

from __future__ import annotations

import dataclasses
import io
import json
import resource
import shutil
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import numpy as np
import torch

from fedsim.errors import ConfigError
from fedsim.privacy.files import atomic_write_bytes, atomic_write_json

RUN_MARKERS = ("config.json", "federation.json")  # what `fedsim run` writes at its start


def is_run_folder(path: Path) -> bool:
    """True when `path` holds what `fedsim run` writes at its start (both markers).

    Only such a folder is ever replaced by --force: a folder of the user's that just
    happens to hold a config.json is not.
    """
    return all((path / name).is_file() for name in RUN_MARKERS)


def check_out_dir(out: str | None, *, force: bool = False) -> None:
    """Refuse an --out that would overwrite a run (unless forced) or unrelated files."""
    if not out:
        return
    path = Path(out)
    if path.exists() and not path.is_dir():
        raise ConfigError(f"--out {out} is a file, not a folder; choose a new folder")
    if not path.is_dir() or not any(path.iterdir()):
        return
    if not is_run_folder(path):
        raise ConfigError(f"--out {out} is a folder with other files in it (no fedsim "
                          "run); choose a new or empty folder")
    if not force:
        raise ConfigError(f"--out {out} already holds a run: continue it with "
                          f"`fedsim run --resume {out}`, or add --force to replace it")


def fresh_run_dir(out: str | None, base: str = "runs", *, replace: bool = False) -> Path:
    """The requested folder, or a new runs/<timestamp> one (suffixed if taken).

    `replace` deletes a run folder already at `out` (after `check_out_dir` allowed it).
    """
    if out:
        path = Path(out)
        if replace and path.is_dir() and is_run_folder(path):
            shutil.rmtree(path)
    else:
        stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
        path = Path(base) / stamp
        n = 1
        while path.exists():
            path = Path(base) / f"{stamp}-{n}"
            n += 1
    path.mkdir(parents=True, exist_ok=True)
    return path


@dataclass(frozen=True, kw_only=True)
class RunClock:
    """The run's one wall time: this command's seconds plus earlier sessions'.

    `started` is `time.monotonic()` when the command started (before data
    preparation and Ray start); `prior_s` is the wall time a resumed run had
    reached at its last completed round (what state.json recorded). Time spent on
    a round that was interrupted and never completed is not carried over.
    """

    started: float = dataclasses.field(default_factory=time.monotonic)
    prior_s: float = 0.0

    def elapsed(self) -> float:
        """Seconds of wall time the run has taken so far."""
        return self.prior_s + (time.monotonic() - self.started)


@dataclass(frozen=True, kw_only=True)
class Checkpoint:
    """The last completed round of a run folder and its global state."""

    round: int
    arrays: dict[str, np.ndarray]  # in the global record's key order
    rows: list[dict]  # metrics.jsonl rows up to that round
    wall_time_s: float = 0.0  # the run's wall time when that round completed


def load_checkpoint(run_dir: Path) -> Checkpoint | None:
    """The run's last checkpoint, or None if it never completed a round."""
    folder = Path(run_dir) / "checkpoint"
    state_path = folder / "state.json"
    if not state_path.is_file():
        return None
    state = json.loads(state_path.read_text())
    with np.load(folder / "global.npz") as data:
        arrays = {k: data[k] for k in state["keys"]}
    rows = []
    metrics = Path(run_dir) / "metrics.jsonl"
    if metrics.is_file():
        rows = [json.loads(line) for line in metrics.read_text().splitlines() if line]
    rows = [r for r in rows if r.get("round", 0) <= state["round"]]
    return Checkpoint(round=int(state["round"]), arrays=arrays, rows=rows,
                      wall_time_s=float(state.get("wall_time_s", 0.0)))


class RunRecorder:
    """Listens to the server and keeps the run folder's files current."""

    def __init__(self, run_dir: Path, *, resume_rows: list[dict] | None = None,
                 clock: RunClock | None = None) -> None:
        self.run_dir = Path(run_dir)
        self.rows: list[dict] = list(resume_rows or [])
        self.initial: dict | None = None
        self.clock = clock or RunClock()
        self.wall_time_s: float | None = None  # frozen when the rounds end
        # at the last completed round (a resumed run starts from its earlier sessions')
        self.checkpoint_wall_s: float | None = self.clock.prior_s or None
        self.finished = False
        self.info: dict = {}

    def on_start(self, info: dict) -> None:
        """Remember what the server found (number of clients, ...)."""
        self.info = dict(info)

    def on_round(self, record: dict) -> None:
        """Append one round to metrics.jsonl (rewritten whole, atomically)."""
        if record.get("initial"):
            self.initial = {k: v for k, v in record.items() if k != "initial"}
            return
        self.rows.append(dict(record))
        text = "".join(json.dumps(row, sort_keys=True) + "\n" for row in self.rows)
        atomic_write_bytes(self.run_dir / "metrics.jsonl", text.encode())

    def on_checkpoint(self, server_round: int, arrays) -> None:
        """Persist the global state after a completed round (atomic, state.json last)."""
        folder = self.run_dir / "checkpoint"
        buffer = io.BytesIO()
        np.savez(buffer, **{k: arrays[k].numpy() for k in arrays.keys()})
        atomic_write_bytes(folder / "global.npz", buffer.getvalue())
        self.checkpoint_wall_s = self.clock.elapsed()
        atomic_write_json(folder / "state.json", {
            "round": server_round, "keys": list(arrays.keys()),
            "metrics_rows": len(self.rows), "wall_time_s": self.checkpoint_wall_s})

    def on_finish(self, final, info: dict) -> None:
        """Save the final global state: model.pt, or the encrypted sum under HE."""
        if info.get("encrypted"):
            arrays = {k: final[k].numpy() for k in final.keys()}
            buffer = io.BytesIO()
            np.savez(buffer, **arrays)
            atomic_write_bytes(self.run_dir / "model_encrypted.npz", buffer.getvalue())
            if info.get("he"):  # run id, layout, model: `fedsim keys decrypt-model` reads it
                atomic_write_json(self.run_dir / "model_encrypted.json", info["he"])
        else:
            buffer = io.BytesIO()
            torch.save(final.to_torch_state_dict(), buffer)
            atomic_write_bytes(self.run_dir / "model.pt", buffer.getvalue())
        self.info["stop_reason"] = info.get("stop_reason")
        self.info["model_encrypted"] = bool(info.get("encrypted"))
        interrupted = bool(info.get("interrupted"))
        # an abandoned round is no part of the run: its time is not counted
        self.wall_time_s = (self.checkpoint_wall_s if interrupted and self.checkpoint_wall_s
                            else self.clock.elapsed())
        self.finished = not interrupted

    def summary(self, extra: dict | None = None) -> dict:
        """Totals over the recorded rounds (all sessions of a resumed run)."""
        wall = self.wall_time_s if self.wall_time_s is not None else self.clock.elapsed()
        updates = sum(r.get("clients_replied", 0) for r in self.rows)
        last = self.rows[-1] if self.rows else {}
        central = [r["central_accuracy"] for r in self.rows
                   if r.get("central_accuracy") is not None]
        best = max(central, default=None)
        return {
            "finished": self.finished,
            # a round that ended the run with too few updates did not change the model
            "rounds_completed": sum(1 for r in self.rows if r.get("aggregated", True)),
            "final_central_accuracy": last.get("central_accuracy"),
            "best_central_accuracy": best,
            "final_federated_accuracy": last.get("fed_accuracy"),
            "final_federated_examples": last.get("fed_examples"),
            "final_eps_max": last.get("eps_max"),
            "final_eps_median": last.get("eps_median"),
            "initial_central_accuracy": (self.initial or {}).get("central_accuracy"),
            "client_updates": updates,
            # from the command's start (data, Ray, handshake included) to the end of
            # the last round, summed over the sessions of a resumed run
            "wall_time_s": wall,
            "client_updates_per_s": updates / wall if wall > 0 else None,
            "bytes_sent": sum(r.get("bytes_sent", 0) for r in self.rows),
            "bytes_received": sum(r.get("bytes_received", 0) for r in self.rows),
            # the driver process (ServerApp, strategy, aggregation); Ray workers apart
            "driver_peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            **self.info,
            **(extra or {}),
        }
