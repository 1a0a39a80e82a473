"""The newcomer path: every command README's bash blocks show, run as written.

Install lines aside (venv, pip, the test suite itself), each `fedsim` command runs in
one fresh folder, in README order; a command must exit 0. The walk is also the test
of stopping a real `fedsim run` mid-round, as a newcomer and a scheduler do:

- README's first run is stopped with Ctrl-C (SIGINT to its whole process group, as a
  terminal sends it) while its second round trains; the `--resume` that README shows
  next must then finish every round with the full update count;
- every later `fedsim run` is stopped with SIGTERM (to the process only, as
  `docker stop` or a batch scheduler sends it) once it has completed a round.

A stopped run must exit 130 / 143 within 15 s with no traceback, say how to resume,
and leave a valid report and no fake round.
"""

import json
import os
import re
import shlex
import signal
import subprocess
import time
from pathlib import Path

import pytest

from tests.conftest import fedsim_cmd

README = Path(__file__).resolve().parents[1] / "README.md"
INSTALL_ASIDE = {"python3.11", "pip", "pytest"}  # the install itself, and the suite
FIRST_ROUND_WITHIN_S = 300
EXIT_WITHIN_S = 15


def readme_commands(text: str) -> list[list[str]]:
    """The commands of README's ```bash blocks (continuations joined, comments off)."""
    commands = []
    for block in re.findall(r"```bash\n(.*?)```", text, re.S):
        for line in block.replace("\\\n", " ").splitlines():
            words = shlex.split(line, comments=True)
            if words:
                commands.append(words)
    return commands


def _rows(run_dir: Path) -> list[dict]:
    return [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]


def _summary(run_dir: Path) -> dict:
    return json.loads((run_dir / "summary.json").read_text())


def assert_clean_stop(run_dir: Path, sig: signal.Signals, code: int, elapsed: float,
                      output: str, *, cwd: Path) -> None:
    """What a run stopped by `sig` must show and leave behind."""
    assert code == 128 + sig, output[-2000:]
    assert elapsed < EXIT_WITHIN_S, f"{elapsed:.1f} s after {sig.name}"
    assert "Traceback" not in output
    assert f"fedsim run --resume {run_dir.relative_to(cwd)}" in output, output[-2000:]
    rows = _rows(run_dir)
    done = len(rows)
    rounds = json.loads((run_dir / "config.json").read_text())["rounds"]
    assert 1 <= done < rounds
    assert [r["round"] for r in rows] == list(range(1, done + 1))
    for row in rows:  # no fake round: nothing is recorded of the abandoned one
        assert row["clients_replied"] >= 1 and row["timed_out"] == 0, row
    state = json.loads((run_dir / "checkpoint" / "state.json").read_text())
    assert state["round"] == done
    summary = _summary(run_dir)
    assert summary["finished"] is False and summary["interrupted"] == sig.name
    assert summary["rounds_completed"] == done
    assert summary["client_updates"] == sum(r["clients_replied"] for r in rows)
    assert json.loads((run_dir / "privacy.json").read_text())["finished"] is False
    assert "did not finish" in (run_dir / "report.html").read_text()


def assert_complete(run_dir: Path, earlier_wall_s: float) -> None:
    """A resumed run that finished: every round and every update, one wall time."""
    summary = _summary(run_dir)
    rows = _rows(run_dir)
    rounds = json.loads((run_dir / "config.json").read_text())["rounds"]
    assert summary["finished"] is True and summary["interrupted"] is None
    assert [r["round"] for r in rows] == list(range(1, rounds + 1))
    assert summary["rounds_completed"] == rounds
    assert summary["client_updates"] == sum(r["clients_sampled"] for r in rows)
    assert summary["wall_time_s"] > earlier_wall_s  # the stopped session counts too
    assert summary["client_updates_per_s"] == pytest.approx(
        summary["client_updates"] / summary["wall_time_s"])


def _states(cwd: Path) -> dict[Path, float]:
    return {p: p.stat().st_mtime for p in cwd.glob("**/checkpoint/state.json")}


def _wait_for_a_round(proc, cwd: Path, before: dict[Path, float]) -> Path | None:
    """The folder the run checkpointed its first new round into; None if it exited."""
    deadline = time.monotonic() + FIRST_ROUND_WITHIN_S
    while proc.poll() is None and time.monotonic() < deadline:
        for path, mtime in _states(cwd).items():
            if before.get(path) != mtime:
                time.sleep(0.3)  # the next round's clients are training now
                return path.parent.parent
        time.sleep(0.05)
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGKILL)
        pytest.fail(f"no round completed within {FIRST_ROUND_WITHIN_S} s")
    return None


def _stop(proc, sig: signal.Signals, *, whole_group: bool) -> tuple[int, float, str]:
    sent = time.monotonic()
    (os.killpg if whole_group else os.kill)(proc.pid, sig)
    try:
        output = proc.communicate(timeout=60)[0]
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        pytest.fail(f"still running 60 s after {sig.name}")
    return proc.returncode, time.monotonic() - sent, output


def _walk_run(words: list[str], cwd: Path, sig: signal.Signals | None) -> Path | None:
    """Run `fedsim run ...`; stop it with `sig` after a round (None: let it finish)."""
    before = _states(cwd)
    proc = subprocess.Popen(fedsim_cmd(*words[1:]), cwd=cwd, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)
    if sig is None:
        output = proc.communicate(timeout=600)[0]
        assert proc.returncode == 0, f"{shlex.join(words)}: {output[-2000:]}"
        return None
    run_dir = _wait_for_a_round(proc, cwd, before)
    if run_dir is None:  # it finished before a round could be stopped
        output = proc.communicate()[0]
        assert proc.returncode == 0, f"{shlex.join(words)}: {output[-2000:]}"
        return None
    code, elapsed, output = _stop(proc, sig, whole_group=sig == signal.SIGINT)
    assert_clean_stop(run_dir, sig, code, elapsed, output, cwd=cwd)
    return run_dir


def test_readme_shows_only_commands_a_user_has():
    commands = readme_commands(README.read_text())
    assert commands[0][:2] == ["python3.11", "-m"], "README starts with the install"
    others = {words[0] for words in commands} - {"fedsim"}
    assert others <= INSTALL_ASIDE, f"README shows commands the walk does not know: {others}"
    for words in commands:  # nothing that only the team has
        assert not any("shared/" in w for w in words), shlex.join(words)


def test_every_readme_command_runs_as_written_and_stops_cleanly(tmp_path, monkeypatch):
    monkeypatch.delenv("FEDSIM_HE_PASSPHRASE", raising=False)
    commands = [w for w in readme_commands(README.read_text()) if w[0] == "fedsim"]
    first, resume = commands[0], commands[1]
    out = first[first.index("--out") + 1]
    assert first[1] == "run" and resume == ["fedsim", "run", "--resume", out], \
        "README's newcomer path is: a first run, then --resume of its folder"

    stopped = _walk_run(first, tmp_path, signal.SIGINT)
    assert stopped == tmp_path / out
    earlier = _summary(stopped)["wall_time_s"]
    _walk_run(resume, tmp_path, None)
    assert_complete(stopped, earlier)
    for words in commands[2:]:
        if words[1] == "run":
            _walk_run(words, tmp_path, signal.SIGTERM)
            continue
        proc = subprocess.run(fedsim_cmd(*words[1:]), cwd=tmp_path, capture_output=True,
                              text=True, timeout=180)
        assert proc.returncode == 0, f"{shlex.join(words)}: {proc.stderr[-2000:]}"
