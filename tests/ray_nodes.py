"""Ray nodes started with `ray start --block`, each in its own process group.

Stopping one stops only that node (`ray stop` would kill every Ray process on the
machine, a user's runs included).
"""

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

RAY = str(Path(sys.executable).with_name("ray"))


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _stop_with_parent() -> None:
    """In the child: SIGTERM when the test process dies, even by SIGKILL (Linux)."""
    import ctypes

    pr_set_pdeathsig = 1
    ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, signal.SIGTERM)


def start_node(*args: str, cpus: int = 1) -> subprocess.Popen:
    return subprocess.Popen([RAY, "start", "--block", "--node-ip-address=127.0.0.1",
                             f"--num-cpus={cpus}", "--disable-usage-stats", *args],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True,
                            preexec_fn=_stop_with_parent if sys.platform == "linux"
                            else None)


def start_head(port: int, *, cpus: int = 1) -> subprocess.Popen:
    return start_node("--head", f"--port={port}", "--include-dashboard=false", cpus=cpus)


def alive_nodes(address: str) -> int:
    probe = subprocess.run(
        [sys.executable, "-c", "import ray, json; ray.init(address=%r); "
         "print(json.dumps(sum(1 for n in ray.nodes() if n['Alive'])))" % address],
        capture_output=True, text=True, timeout=120)
    lines = probe.stdout.strip().splitlines()
    return int(lines[-1]) if probe.returncode == 0 and lines else 0


def wait_for_nodes(address: str, count: int, nodes: list[subprocess.Popen]) -> bool:
    """True once `count` nodes are alive; False after 120 s or when a node exits."""
    deadline = time.monotonic() + 120
    while alive_nodes(address) < count:
        if time.monotonic() > deadline or any(n.poll() is not None for n in nodes):
            return False
        time.sleep(1)
    return True


def stop_node(node: subprocess.Popen) -> None:
    for sig, wait in ((signal.SIGTERM, 30), (signal.SIGKILL, 10)):
        try:
            os.killpg(node.pid, sig)
        except ProcessLookupError:
            return
        try:
            node.wait(timeout=wait)
            return
        except subprocess.TimeoutExpired:
            continue
