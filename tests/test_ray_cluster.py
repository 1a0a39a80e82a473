"""--ray-address: a short simulation on a 2-node Ray cluster started on 127.0.0.1."""

import json
import socket
import subprocess
import sys
from pathlib import Path

import pytest

RAY = str(Path(sys.executable).with_name("ray"))


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _ray(*args: str) -> None:
    subprocess.run([RAY, *args], check=True, capture_output=True, timeout=120)


@pytest.fixture
def two_node_cluster():
    port = _free_port()
    address = f"127.0.0.1:{port}"
    try:
        _ray("start", "--head", f"--port={port}", "--node-ip-address=127.0.0.1",
             "--num-cpus=1", "--include-dashboard=false", "--disable-usage-stats")
        _ray("start", f"--address={address}", "--node-ip-address=127.0.0.1",
             "--num-cpus=1", "--disable-usage-stats")
        yield address
    finally:
        subprocess.run([RAY, "stop", "--force"], capture_output=True, timeout=120)


def test_simulation_runs_on_an_existing_cluster(tmp_path, two_node_cluster):
    out = tmp_path / "run"
    proc = subprocess.run(
        [sys.executable, "-m", "fedsim", "run", "--clients", "4", "--rounds", "2",
         "--fraction", "1.0", "--local-epochs", "1", "--ray-address", two_node_cluster,
         "--out", str(out)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["clients_replied"] for r in rows] == [4, 4]
    probe = subprocess.run(
        [sys.executable, "-c", "import ray, json; ray.init(address=%r); "
         "print(json.dumps(sum(1 for n in ray.nodes() if n['Alive'])))" % two_node_cluster],
        capture_output=True, text=True, timeout=120)
    assert probe.stdout.strip().splitlines()[-1] == "2"
