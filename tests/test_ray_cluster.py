"""--ray-address: a short simulation on a 2-node Ray cluster started on 127.0.0.1."""

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

RAY = str(Path(sys.executable).with_name("ray"))


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _node(*args: str) -> subprocess.Popen:
    """`ray start --block` in its own process group: stopping it stops only this node.

    (`ray stop` would kill every Ray process on the machine, a user's runs included.)
    """
    return subprocess.Popen([RAY, "start", "--block", "--node-ip-address=127.0.0.1",
                             "--num-cpus=1", "--disable-usage-stats", *args],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)


def _alive_nodes(address: str) -> int:
    probe = subprocess.run(
        [sys.executable, "-c", "import ray, json; ray.init(address=%r); "
         "print(json.dumps(sum(1 for n in ray.nodes() if n['Alive'])))" % address],
        capture_output=True, text=True, timeout=120)
    lines = probe.stdout.strip().splitlines()
    return int(lines[-1]) if probe.returncode == 0 and lines else 0


def _wait_for_nodes(address: str, count: int, nodes: list[subprocess.Popen]) -> None:
    deadline = time.monotonic() + 120
    while _alive_nodes(address) < count:
        if time.monotonic() > deadline or any(n.poll() is not None for n in nodes):
            pytest.fail(f"the Ray cluster at {address} did not reach {count} nodes")
        time.sleep(1)


def _stop(node: subprocess.Popen) -> None:
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


@pytest.fixture
def two_node_cluster():
    port = _free_port()
    address = f"127.0.0.1:{port}"
    nodes: list[subprocess.Popen] = []
    try:
        nodes.append(_node("--head", f"--port={port}", "--include-dashboard=false"))
        _wait_for_nodes(address, 1, nodes)
        nodes.append(_node(f"--address={address}"))
        _wait_for_nodes(address, 2, nodes)
        yield address
    finally:
        for node in reversed(nodes):
            _stop(node)


def test_simulation_runs_on_an_existing_cluster(tmp_path, two_node_cluster):
    out = tmp_path / "run"
    proc = subprocess.run(
        [sys.executable, "-m", "fedsim", "run", "--clients", "4", "--rounds", "2",
         "--fraction", "1.0", "--local-epochs", "1", "--ray-address", two_node_cluster,
         "--out", str(out)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["clients_replied"] for r in rows] == [4, 4]
    assert _alive_nodes(two_node_cluster) == 2
