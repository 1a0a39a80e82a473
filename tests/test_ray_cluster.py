"""--ray-address: a short simulation on a 2-node Ray cluster started on 127.0.0.1."""

import json
import subprocess
import sys

import pytest

from tests.ray_nodes import (
    alive_nodes,
    free_port,
    start_head,
    start_node,
    stop_node,
    wait_for_nodes,
)


@pytest.fixture
def two_node_cluster():
    port = free_port()
    address = f"127.0.0.1:{port}"
    nodes: list[subprocess.Popen] = []
    try:
        for count, node in ((1, lambda: start_head(port)),
                            (2, lambda: start_node(f"--address={address}"))):
            nodes.append(node())
            if not wait_for_nodes(address, count, nodes):
                pytest.fail(f"the Ray cluster at {address} did not reach {count} nodes")
        yield address
    finally:
        for node in reversed(nodes):
            stop_node(node)


def test_simulation_runs_on_an_existing_cluster(tmp_path, two_node_cluster):
    out = tmp_path / "run"
    proc = subprocess.run(
        [sys.executable, "-m", "fedsim", "run", "--clients", "4", "--rounds", "2",
         "--fraction", "1.0", "--local-epochs", "1", "--ray-address", two_node_cluster,
         "--out", str(out)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["clients_replied"] for r in rows] == [4, 4]
    assert alive_nodes(two_node_cluster) == 2
