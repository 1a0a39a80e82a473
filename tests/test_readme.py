"""The newcomer path: every command README's bash blocks show, run as written.

Install lines aside (venv, pip, the test suite itself), each `fedsim` command runs in
one fresh folder, in README order. A command must exit 0; a `fedsim run` that is
still going once it has completed a round is stopped with Ctrl-C (SIGINT to its
process group, as a terminal sends it) and must stop cleanly: exit 130 within 15 s,
no traceback, a valid report, no fake round, and the line that says how to resume.
"""

import os
import re
import shlex
import signal
import subprocess
import time
from pathlib import Path

import pytest

from tests.conftest import fedsim_cmd
from tests.test_interrupt import assert_clean_stop

README = Path(__file__).resolve().parents[1] / "README.md"
INSTALL_ASIDE = {"python3.11", "pip", "pytest"}  # the install itself, and the suite
FIRST_ROUND_WITHIN_S = 300


def readme_commands(text: str) -> list[list[str]]:
    """The commands of README's ```bash blocks (continuations joined, comments off)."""
    commands = []
    for block in re.findall(r"```bash\n(.*?)```", text, re.S):
        for line in block.replace("\\\n", " ").splitlines():
            words = shlex.split(line, comments=True)
            if words:
                commands.append(words)
    return commands


def _states(cwd: Path) -> dict[Path, float]:
    return {p: p.stat().st_mtime for p in cwd.glob("**/checkpoint/state.json")}


def _run_dir_of(cwd: Path, before: dict[Path, float]) -> Path | None:
    """The folder a running `fedsim run` has checkpointed a round into, if any yet."""
    for path, mtime in _states(cwd).items():
        if before.get(path) != mtime:
            return path.parent.parent
    return None


def _walk_run(words: list[str], cwd: Path) -> None:
    before = _states(cwd)
    proc = subprocess.Popen(fedsim_cmd(*words[1:]), cwd=cwd, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)
    deadline = time.monotonic() + FIRST_ROUND_WITHIN_S
    run_dir = None
    while proc.poll() is None and run_dir is None and time.monotonic() < deadline:
        time.sleep(0.1)
        run_dir = _run_dir_of(cwd, before)
    if proc.poll() is not None:
        output = proc.communicate()[0]
        assert proc.returncode == 0, f"{shlex.join(words)}: {output[-2000:]}"
        return
    if run_dir is None:
        os.killpg(proc.pid, signal.SIGKILL)
        pytest.fail(f"{shlex.join(words)} completed no round in {FIRST_ROUND_WITHIN_S} s")
    sent = time.monotonic()
    os.killpg(proc.pid, signal.SIGINT)
    try:
        output = proc.communicate(timeout=60)[0]
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        pytest.fail(f"{shlex.join(words)} still running 60 s after Ctrl-C")
    assert_clean_stop(run_dir, signal.SIGINT, proc.returncode, time.monotonic() - sent,
                      output, 130, cwd=cwd)


def test_readme_lists_only_commands_a_user_has():
    commands = readme_commands(README.read_text())
    assert commands[0][:2] == ["python3.11", "-m"], "README starts with the install"
    others = {words[0] for words in commands} - {"fedsim"}
    assert others <= INSTALL_ASIDE, f"README shows commands the walk does not know: {others}"
    for words in commands:  # nothing that only the team has
        assert not any("shared/" in w for w in words), shlex.join(words)


def test_every_readme_command_runs_as_written(tmp_path, monkeypatch):
    monkeypatch.delenv("FEDSIM_HE_PASSPHRASE", raising=False)
    commands = [w for w in readme_commands(README.read_text()) if w[0] == "fedsim"]
    assert len(commands) >= 4
    for words in commands:
        if words[1] == "run":
            _walk_run(words, tmp_path)
            continue
        proc = subprocess.run(fedsim_cmd(*words[1:]), cwd=tmp_path, capture_output=True,
                              text=True, timeout=180)
        assert proc.returncode == 0, f"{shlex.join(words)}: {proc.stderr[-2000:]}"
