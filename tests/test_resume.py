"""Kill -9 a real run mid-way, resume it, and get what an uninterrupted run gets."""

import json
import os
import random
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

from fedsim.config import build_config
from fedsim.privacy.ledger import PrivacyLedger
from fedsim.simulations.runner import simulate

# Reproducible noise: with secret DP noise (the default) no two runs are alike, and
# a resumed run's re-run rounds are fresh releases (tests/test_dp_simulation.py).
ARGS = {"clients": 4, "rounds": 5, "fraction": 0.5, "local_epochs": 1, "batch_size": 16,
        "seed": 21, "dp": True, "noise_multiplier": 1.0, "insecure_reproducible_noise": True}


def _flags(values):
    out = []
    for key, value in values.items():
        flag = "--" + key.replace("_", "-")
        out += [flag] if value is True else [flag, str(value)]
    return out


def _rows(run_dir):
    rows = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in r.items() if k != "round_time_s"} for r in rows]


def _ledger(run_dir):
    records = PrivacyLedger(run_dir / "privacy" / "ledger.jsonl").records()
    return sorted((r.round, r.client_id, r.epsilon, r.steps, r.released) for r in records)


def _kill_after(out, rounds_done, timeout=240):
    cmd = [sys.executable, "-m", "fedsim", "run", *_flags(ARGS), "--out", str(out)]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    state = out / "checkpoint" / "state.json"
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline and proc.poll() is None:
            if state.exists() and json.loads(state.read_text())["round"] >= rounds_done:
                break
            time.sleep(0.05)
        else:
            pytest.fail("the run did not reach the kill point")
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def test_kill_and_resume_matches_uninterrupted_run(tmp_path):
    reference = simulate(build_config({**ARGS, "out": str(tmp_path / "reference")}))
    killed = tmp_path / "killed"
    _kill_after(killed, random.Random().choice([1, 2, 3]))
    assert not (killed / "summary.json").exists()
    proc = subprocess.run([sys.executable, "-m", "fedsim", "run", "--resume", str(killed)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    ref_model = torch.load(reference.run_dir / "model.pt")
    new_model = torch.load(killed / "model.pt")
    diff = max(float(np.abs(ref_model[k].numpy() - new_model[k].numpy()).max())
               for k in ref_model)
    assert diff <= 1e-6
    assert _ledger(killed) == _ledger(reference.run_dir)
    assert _rows(killed) == _rows(reference.run_dir)
    summary = json.loads((killed / "summary.json").read_text())
    assert summary["finished"] and summary["rounds_completed"] == ARGS["rounds"]


def test_resume_of_a_non_run_folder_is_one_line(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "fedsim", "run", "--resume", str(tmp_path)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert "cannot resume" in proc.stderr and "Traceback" not in proc.stderr
