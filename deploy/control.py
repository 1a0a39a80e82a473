"""The operator's side of a deployment: enroll sites, submit a run, wait, collect.

Every step goes through Flower's own `flwr` CLI (`fedsim.deploy.flwr_cli`), so what
fedsim does is exactly what an operator could type by hand.
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import fedsim.deploy
from fedsim.deploy.flwr_cli import (
    CONNECTION,
    Connection,
    DeployError,
    call_flwr,
    call_flwr_json,
    flower_home,
    public_key_files,
    register_key,
)

FINISHED = "finished"
POLL_S = 15.0  # longest wait between status polls (each starts a `flwr ls`)
POLL_FAILURES = 5  # status polls that may fail in a row while waiting for a run


@dataclass(frozen=True, kw_only=True)
class RunState:
    """A run's status as the SuperLink reports it."""

    run_id: int
    status: str  # pending, starting, running, finished:completed|failed|stopped
    details: str = ""

    @property
    def finished(self) -> bool:
        """True once the run has ended, in any way."""
        return self.status.startswith(FINISHED)

    @property
    def completed(self) -> bool:
        """True when the run ended without error."""
        return self.status == f"{FINISHED}:completed"


def app_folder() -> Path:
    """deploy/ of this installation: the Flower App project `flwr run` builds."""
    folder = Path(fedsim.deploy.__file__).resolve().parent
    if not (folder / "pyproject.toml").is_file():
        raise DeployError(f"no Flower App project (pyproject.toml) in '{folder}'; "
                          "install fedsim from its source tree or pass --app DIR")
    return folder


def enroll(conn: Connection, keys_dir: Path) -> list[tuple[str, str]]:
    """Register every site public key of `keys_dir`; (name, outcome) for each."""
    files = public_key_files(keys_dir)
    with flower_home(conn) as home:
        return [(pub.stem, register_key(pub, home)) for pub in files]


def config_value(value: Any) -> str:
    """One `--run-config` value in Flower's TOML-like syntax."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    return json.dumps(str(value))


def run_config_arg(items: Mapping[str, Any]) -> str:
    """The `--run-config` string: space-separated key=value pairs."""
    return " ".join(f"{key}={config_value(value)}" for key, value in items.items())


def submit(conn: Connection, items: Mapping[str, Any], *, app: Path | None = None
           ) -> int:
    """Start a run of the deploy app with these run-config overrides; its run id."""
    folder = app or app_folder()
    with flower_home(conn) as home:
        reply = call_flwr_json(["run", str(folder), CONNECTION, "--run-config",
                                run_config_arg(items)], home)
    try:
        return int(reply["run-id"])
    except (KeyError, TypeError, ValueError) as err:
        raise DeployError(f"`flwr run` reported no run id: {reply}") from err


def run_state(conn: Connection, run_id: int) -> RunState:
    """The SuperLink's status of one run."""
    with flower_home(conn) as home:
        reply = call_flwr_json(["ls", CONNECTION, "--run-id", str(run_id)], home)
    runs = reply.get("runs") or []
    if not runs:
        raise DeployError(f"the SuperLink knows no run {run_id}")
    return RunState(run_id=run_id, status=str(runs[0].get("status", "")),
                    details=str(runs[0].get("status-details") or ""))


def run_log(conn: Connection, run_id: int) -> str:
    """The run's log so far, as the ServerApp printed it (`flwr log --show`)."""
    with flower_home(conn) as home:
        return call_flwr(["log", str(run_id), CONNECTION, "--show"], home).stdout


def wait_for(conn: Connection, run_id: int, *, timeout: float,
             poll: float = POLL_S, tolerate: int = POLL_FAILURES) -> RunState:
    """Poll until the run has finished or `timeout` seconds have passed.

    Polls start 2 s apart and back off to `poll` seconds: each is a `flwr ls`
    process, which on a small machine takes CPU from the run it waits for. A poll
    that fails (the SuperLink busy or restarting) is retried; only `tolerate`
    failures in a row end the wait.
    """
    deadline = time.monotonic() + timeout
    failures, wait = 0, min(2.0, poll)
    while True:
        try:
            state = run_state(conn, run_id)
            failures = 0
        except DeployError:
            failures += 1
            if failures > tolerate:
                raise
            state = None
        if state is not None and state.finished:
            return state
        if state is not None and time.monotonic() > deadline:
            raise DeployError(f"run {run_id} is still '{state.status}' after "
                              f"{timeout:.0f}s; check again with "
                              "`fedsim deploy status`")
        time.sleep(wait)
        wait = min(poll, wait * 1.5)


def collect(source: Path, out: Path) -> Path:
    """Copy a finished run folder from the server's runs folder to `out`."""
    if not (source / "summary.json").is_file():
        raise DeployError(f"'{source}' holds no finished run (no summary.json); give "
                          "the run folder under the server's runs folder")
    if out.exists() and any(out.iterdir()):
        raise DeployError(f"'{out}' already holds files; choose an empty --out")
    shutil.copytree(source, out, dirs_exist_ok=True,
                    ignore=shutil.ignore_patterns(".lock"))  # the server's, not the run's
    return out
