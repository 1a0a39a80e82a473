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
