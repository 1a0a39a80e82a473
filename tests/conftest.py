import os
import sys
from pathlib import Path

import pytest

os.environ.setdefault("RAY_DEDUP_LOGS", "0")

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def fedsim_cmd(*args: str) -> list[str]:
    """Run the installed CLI through the current interpreter."""
    return [sys.executable, "-m", "fedsim", *args]


@pytest.fixture
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.skip(f"team data folder {SHARED_DATA} is absent")
    return SHARED_DATA
