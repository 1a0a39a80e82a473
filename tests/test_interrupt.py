"""SIGTERM on a real `fedsim run`: a clean stop, a valid folder, a full resume.

Ctrl-C (SIGINT to the whole process group, as a terminal sends it) is played on
every `fedsim run` README shows (tests/test_readme.py), with the same checks.
"""

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from tests.conftest import fedsim_cmd

ROUNDS, PER_ROUND = 3, 2
# local epochs make a round last seconds, so the signal lands while clients train
ARGS = ["--clients", "4", "--rounds", str(ROUNDS), "--fraction", "0.5",
        "--local-epochs", "5", "--batch-size", "16", "--seed", "9"]
EXIT_WITHIN_S = 15


def _rows(run_dir):
    return [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]


def assert_clean_stop(run_dir: Path, sig, code, elapsed, output, expected_code, *,
                      cwd: Path | None = None) -> dict:
    """What a stopped run must show and leave; returns its summary.json."""
    assert code == expected_code, output[-2000:]
    assert elapsed < EXIT_WITHIN_S, f"{elapsed:.1f} s after {sig.name}"
    assert "Traceback" not in output
    shown = run_dir.relative_to(cwd) if cwd is not None else run_dir
    assert f"fedsim run --resume {shown}" in output, output[-2000:]
    rows = _rows(run_dir)
    done = len(rows)
    rounds = json.loads((run_dir / "config.json").read_text())["rounds"]
    assert 1 <= done < rounds
    assert [r["round"] for r in rows] == list(range(1, done + 1))
    for row in rows:  # no fake round: nothing recorded of the abandoned one
        assert row["clients_replied"] >= 1 and row["timed_out"] == 0, row
    state = json.loads((run_dir / "checkpoint" / "state.json").read_text())
    assert state["round"] == done
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["finished"] is False and summary["interrupted"] == sig.name
    assert summary["rounds_completed"] == done
    assert summary["client_updates"] == sum(r["clients_replied"] for r in rows)
    privacy = json.loads((run_dir / "privacy.json").read_text())
    assert privacy["finished"] is False
    assert "did not finish" in (run_dir / "report.html").read_text()
    return summary


def test_sigterm_mid_round_stops_cleanly_and_resume_completes(tmp_path):
    run_dir = tmp_path / "run"
    proc = subprocess.Popen(fedsim_cmd("run", *ARGS, "--out", str(run_dir)),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    state = run_dir / "checkpoint" / "state.json"
    deadline = time.monotonic() + 300
    while not state.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    if not state.exists():
        os.killpg(proc.pid, signal.SIGKILL)
        pytest.fail(f"no round completed: {proc.communicate()[0][-2000:]}")
    time.sleep(0.3)  # round 2's clients are training now
    sent = time.monotonic()
    proc.send_signal(signal.SIGTERM)  # to the process only, as a scheduler sends it
    try:
        output = proc.communicate(timeout=60)[0]
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        pytest.fail("still running 60 s after SIGTERM")
    stopped = assert_clean_stop(run_dir, signal.SIGTERM, proc.returncode,
                                time.monotonic() - sent, output, 143)
    for row in _rows(run_dir):
        assert row["clients_replied"] == row["clients_sampled"] == PER_ROUND

    done = subprocess.run(fedsim_cmd("run", "--resume", str(run_dir)), capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["finished"] is True and summary["interrupted"] is None
    assert summary["rounds_completed"] == ROUNDS
    assert summary["client_updates"] == ROUNDS * PER_ROUND
    assert [r["round"] for r in _rows(run_dir)] == list(range(1, ROUNDS + 1))
    assert summary["wall_time_s"] > stopped["wall_time_s"]  # earlier session counted
    assert summary["client_updates_per_s"] == pytest.approx(
        summary["client_updates"] / summary["wall_time_s"])
