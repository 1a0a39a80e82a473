"""Drive Flower's own `flwr` command line: register SuperNodes, start and watch runs.

Flower 1.41 reads SuperLink connections (address, CA certificate) from
`$FLWR_HOME/config.toml`; each call here gets a private FLWR_HOME holding exactly
one connection, so the operator's own Flower configuration is never touched.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from fedsim.errors import FedsimError

CONNECTION = "fedsim"
FLWR_TIMEOUT_S = 120.0


class DeployError(FedsimError):
    """A deployment step failed (the SuperLink refused, a file is missing, ...)."""

    exit_code = 2


@dataclass(frozen=True, kw_only=True)
class Connection:
    """How the operator reaches the SuperLink's Control API."""

    address: str  # host:port
    ca: Path


def _toml_string(value: str) -> str:
    return json.dumps(value)  # a JSON string is a valid TOML basic string


def connection_toml(conn: Connection) -> str:
    """The Flower configuration file with one default connection."""
    return (f"[superlink]\ndefault = \"{CONNECTION}\"\n\n[superlink.{CONNECTION}]\n"
            f"address = {_toml_string(conn.address)}\n"
            f"root-certificates = {_toml_string(str(conn.ca.resolve()))}\n")


def check_connection(conn: Connection) -> None:
    """The CA file must exist before anything is sent."""
    if not conn.ca.is_file():
        raise DeployError(f"CA certificate '{conn.ca}' not found; pass the ca.crt of "
                          "`fedsim certs init` with --ca")


@contextmanager
def flower_home(conn: Connection) -> Iterator[Path]:
    """A temporary FLWR_HOME whose config.toml holds only this connection."""
    check_connection(conn)
    with tempfile.TemporaryDirectory(prefix="fedsim-flwr-") as folder:
        home = Path(folder)
        (home / "config.toml").write_text(connection_toml(conn), encoding="utf-8")
        yield home


def flwr_executable() -> str:
    """`flwr` beside this interpreter (the same environment), else on PATH."""
    beside = Path(sys.executable).with_name("flwr")
    if beside.is_file():
        return str(beside)
    found = shutil.which("flwr")
    if found is None:
        raise DeployError("the `flwr` command is not installed; pip install the "
                          "project (it depends on flwr)")
    return found


def _last_line(text: str) -> str:
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    return lines[-1] if lines else "(no output)"


def call_flwr(args: list[str], home: Path, *, timeout: float = FLWR_TIMEOUT_S
              ) -> subprocess.CompletedProcess:
    """Run `flwr ARGS` with this FLWR_HOME; a failure becomes one DeployError line."""
    env = {**os.environ, "FLWR_HOME": str(home)}
    try:
        done = subprocess.run([flwr_executable(), *args], env=env, capture_output=True,
                              text=True, timeout=timeout, check=False)
    except subprocess.TimeoutExpired as err:
        raise DeployError(f"`flwr {args[0]}` did not finish within {timeout:.0f}s; "
                          "is the SuperLink reachable?") from err
    if done.returncode != 0:
        raise DeployError(f"`flwr {' '.join(args[:2])}` failed: "
                          f"{_last_line(done.stderr + done.stdout)}")
    return done


def call_flwr_json(args: list[str], home: Path, *, timeout: float = FLWR_TIMEOUT_S
                   ) -> dict:
    """Run `flwr ARGS --format json`; its JSON, or its error as one DeployError line.

    With `--format json` Flower exits 0 even on failure and says `"success": false`.
    """
    done = call_flwr([*args, "--format", "json"], home, timeout=timeout)
    document = _json_document(done.stdout)
    if not document.get("success", False):
        reason = _last_line(str(document.get("error-message", "unknown error")))
        raise DeployError(f"`flwr {' '.join(args[:2])}` failed: {reason}")
    return document


def _json_document(stdout: str) -> dict:
    start = stdout.find("{")
    try:
        return json.loads(stdout[start:]) if start >= 0 else {}
    except json.JSONDecodeError as err:
        raise DeployError(f"`flwr` printed malformed JSON: "
                          f"{_last_line(stdout)}") from err


def public_key_files(folder: Path) -> list[Path]:
    """The `*.pub` files of a folder, sorted; a DeployError when there are none."""
    files = sorted(folder.glob("*.pub")) if folder.is_dir() else []
    if not files:
        raise DeployError(f"no site public keys (*.pub) in '{folder}'; give the "
                          "supernodes/public folder of `fedsim certs init`")
    return files


def register_key(pub: Path, home: Path) -> str:
    """Register one site public key; 'registered' or 'already registered'."""
    try:
        call_flwr_json(["supernode", "register", str(pub), CONNECTION, "--name",
                        pub.stem], home)
    except DeployError as err:
        if "already in use" in str(err).lower():
            return "already registered"
        raise DeployError(f"cannot register '{pub}': {err}") from err
    return "registered"
