"""Ctrl-C and SIGTERM on a real `fedsim run`: a clean stop, a valid folder, a full resume."""

import json
import os
import signal
import subprocess
import time

import pytest

from tests.conftest import fedsim_cmd

ROUNDS, PER_ROUND = 3, 2
# local epochs make a round last seconds, so the signal lands while clients train
ARGS = ["--clients", "4", "--rounds", str(ROUNDS), "--fraction", "0.5",
        "--local-epochs", "5", "--batch-size", "16", "--seed", "9"]
EXIT_WITHIN_S = 15


def _start(*args):
    return subprocess.Popen(fedsim_cmd("run", *args), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)


def _wait_for_round(proc, run_dir, n, timeout=300):
    state = run_dir / "checkpoint" / "state.json"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None:
        if state.exists() and json.loads(state.read_text())["round"] >= n:
            time.sleep(0.3)  # the next round's clients are training now
            return
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    pytest.fail(f"the run did not reach round {n}: {proc.communicate()[0][-2000:]}")


def _signal(proc, sig, *, whole_group):
    """Send `sig` like a terminal (whole process group) or a scheduler (the process)."""
    sent = time.monotonic()
    (os.killpg if whole_group else os.kill)(proc.pid, sig)
    try:
        output, _ = proc.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        output, _ = proc.communicate()
        pytest.fail(f"no exit 60 s after {sig.name}: {output[-2000:]}")
    return proc.returncode, time.monotonic() - sent, output


def _rows(run_dir):
    return [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]


def _assert_clean_stop(run_dir, sig, code, elapsed, output, expected_code):
    assert code == expected_code, output[-2000:]
    assert elapsed < EXIT_WITHIN_S, f"{elapsed:.1f} s after {sig.name}"
    assert "Traceback" not in output
    assert f"fedsim run --resume {run_dir}" in output
    rows = _rows(run_dir)
    done = len(rows)
    assert 1 <= done < ROUNDS
    assert [r["round"] for r in rows] == list(range(1, done + 1))
    for row in rows:  # no fake round: every recorded round had all its replies
        assert row["clients_replied"] == row["clients_sampled"] == PER_ROUND
        assert row["timed_out"] == 0
    state = json.loads((run_dir / "checkpoint" / "state.json").read_text())
    assert state["round"] == done
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["finished"] is False and summary["interrupted"] == sig.name
    assert summary["rounds_completed"] == done
    assert summary["client_updates"] == PER_ROUND * done
    privacy = json.loads((run_dir / "privacy.json").read_text())
    assert privacy["finished"] is False
    html = (run_dir / "report.html").read_text()
    assert "did not finish" in html
    return summary


def test_sigint_then_sigterm_stop_cleanly_and_resume_completes(tmp_path):
    run_dir = tmp_path / "run"
    proc = _start(*ARGS, "--out", str(run_dir))
    _wait_for_round(proc, run_dir, 1)
    code, elapsed, output = _signal(proc, signal.SIGINT, whole_group=True)
    first = _assert_clean_stop(run_dir, signal.SIGINT, code, elapsed, output, 130)

    proc = _start("--resume", str(run_dir))
    _wait_for_round(proc, run_dir, first["rounds_completed"] + 1)
    code, elapsed, output = _signal(proc, signal.SIGTERM, whole_group=False)
    second = _assert_clean_stop(run_dir, signal.SIGTERM, code, elapsed, output, 143)
    assert second["wall_time_s"] > first["wall_time_s"]

    done = subprocess.run(fedsim_cmd("run", "--resume", str(run_dir)), capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["finished"] is True and summary["interrupted"] is None
    assert summary["rounds_completed"] == ROUNDS
    assert summary["client_updates"] == ROUNDS * PER_ROUND
    assert [r["round"] for r in _rows(run_dir)] == list(range(1, ROUNDS + 1))
    assert summary["wall_time_s"] > second["wall_time_s"]
    assert summary["client_updates_per_s"] == pytest.approx(
        summary["client_updates"] / summary["wall_time_s"])
