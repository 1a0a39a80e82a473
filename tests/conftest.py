import os
import sys
from pathlib import Path

import pytest

os.environ.setdefault("RAY_DEDUP_LOGS", "0")

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
DP_BUDGET = 2.7  # small enough that clients of `budgeted_dp_run` run out mid-run


def fedsim_cmd(*args: str) -> list[str]:
    """Run the installed CLI through the current interpreter."""
    return [sys.executable, "-m", "fedsim", *args]


@pytest.fixture
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.skip(f"needs local dataset files (MNIST IDX, AG News CSV) in {SHARED_DATA}, "
                    "which fedsim does not ship")
    return SHARED_DATA


@pytest.fixture(scope="session")
def budgeted_dp_run(tmp_path_factory):
    """A real DP simulation whose epsilon budget stops clients before the last round.

    Shared by the DP and report tests (one simulation for both).
    """
    from fedsim.config import build_config
    from fedsim.simulations.runner import simulate

    out = tmp_path_factory.mktemp("dp") / "run"
    cfg = build_config({
        "clients": 4, "rounds": 8, "fraction": 0.5, "local_epochs": 1, "batch_size": 16,
        "seed": 3, "dp": True, "noise_multiplier": 1.2, "epsilon_budget": DP_BUDGET,
        "out": str(out),
    })
    return simulate(cfg)


@pytest.fixture(scope="session", autouse=True)
def ray_head():
    """One local Ray head for the session's simulations ($FEDSIM_RAY_ADDRESS).

    Each run then connects to it instead of starting and stopping a Ray of its own
    (about 7 s a run). Runs given --ray-address use theirs. Set FEDSIM_TEST_OWN_RAY=1
    to have every run start its own local Ray, as a user's run does.
    """
    from tests.ray_nodes import free_port, start_head, stop_node, wait_for_nodes

    if os.environ.get("FEDSIM_TEST_OWN_RAY") == "1" or "FEDSIM_RAY_ADDRESS" in os.environ:
        yield None
        return
    port = free_port()
    address = f"127.0.0.1:{port}"
    head = start_head(port, cpus=os.cpu_count() or 1)
    try:
        if not wait_for_nodes(address, 1, [head]):
            pytest.fail(f"the session's Ray head at {address} did not start")
        os.environ["FEDSIM_RAY_ADDRESS"] = address
        yield address
    finally:
        os.environ.pop("FEDSIM_RAY_ADDRESS", None)
        stop_node(head)
