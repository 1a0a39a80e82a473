"""`fedsim run` as a newcomer meets it: refused flags, defaults, the summary's figures."""

import json
import re
import sys

import pytest

from fedsim.cli.progress import (
    NOISY_EVAL_EXAMPLES,
    ProgressListener,
    federated_accuracy,
    summary_table,
)
from fedsim.config import RunConfig, build_config
from fedsim.errors import ConfigError
from fedsim.simulations.rundir import RunClock, RunRecorder, check_out_dir, fresh_run_dir


def _cli(monkeypatch, capsys, *args):
    """Run fedsim's console entry point in this process; (exit code, stdout, stderr)."""
    from fedsim.cli.main import main

    monkeypatch.setattr(sys, "argv", ["fedsim", *args])
    with pytest.raises(SystemExit) as info:
        main()
    captured = capsys.readouterr()
    return info.value.code, captured.out, captured.err


def _fake_run(folder):
    folder.mkdir(parents=True)
    (folder / "config.json").write_text(json.dumps(RunConfig().to_dict()))
    (folder / "federation.json").write_text("{}")
    (folder / "metrics.jsonl").write_text('{"round": 1}\n')


def _one_line_error(code, err):
    assert code == 2
    assert "Traceback" not in err
    assert len(err.strip().splitlines()) == 1, err


def test_out_holding_a_run_is_refused_and_left_alone(tmp_path, monkeypatch, capsys):
    run = tmp_path / "run"
    _fake_run(run)
    code, _, err = _cli(monkeypatch, capsys, "run", "--out", str(run), "--rounds", "1")
    _one_line_error(code, err)
    assert "--resume" in err and "--force" in err
    assert (run / "metrics.jsonl").read_text() == '{"round": 1}\n'


def test_out_with_other_files_is_refused_even_with_force(tmp_path, monkeypatch, capsys):
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "thesis.tex").write_text("keep me")
    code, _, err = _cli(monkeypatch, capsys, "run", "--out", str(mine), "--force")
    _one_line_error(code, err)
    assert "no fedsim run" in err
    assert (mine / "thesis.tex").read_text() == "keep me"


def test_force_never_replaces_a_folder_that_merely_has_a_config_json(tmp_path):
    project = tmp_path / "project"
    project.mkdir()
    (project / "config.json").write_text("{}")
    with pytest.raises(ConfigError, match="no fedsim run"):
        check_out_dir(str(project), force=True)
    fresh_run_dir(str(project), replace=True)
    assert (project / "config.json").is_file()


def test_flower_telemetry_is_off_unless_asked_for():
    import os
    import subprocess

    env = {k: v for k, v in os.environ.items() if k != "FLWR_TELEMETRY_ENABLED"}
    probe = ("import fedsim.simulations.runner; import flwr.supercore.telemetry as t; "
             "print(t.FLWR_TELEMETRY_ENABLED)")
    proc = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                          env=env, timeout=120)
    assert proc.stdout.strip() == "0", proc.stderr[-2000:]


def test_force_replaces_only_a_run_folder(tmp_path):
    run = tmp_path / "run"
    _fake_run(run)
    with pytest.raises(ConfigError):
        check_out_dir(str(run))
    check_out_dir(str(run), force=True)
    assert fresh_run_dir(str(run), replace=True) == run
    assert list(run.iterdir()) == []
    check_out_dir(str(tmp_path / "new"))  # a new or empty folder is fine
    check_out_dir(str(run))


@pytest.mark.parametrize(("args", "needle"), [
    (["--data-dir", "somewhere"], "'digits' is embedded and reads none: drop --data-dir"),
    (["--model", "text", "--data-dir", "x"], "'bbc-news' is embedded"),
    (["--min-clients", "50"], "--min-clients 50 is more than the 10 client(s) sampled"),
    (["--clients", "4", "--fraction", "0.5", "--min-clients", "3"],
     "use --min-clients 2 or fewer"),
    (["--force"], "--force replaces the run in --out: give --out DIR too"),
])
def test_ignored_or_impossible_flags_are_errors(args, needle, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    code, _, err = _cli(monkeypatch, capsys, "run", *args)
    _one_line_error(code, err)
    assert needle in err
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize("extra", [["--rounds", "40"], ["--dp", "--clients", "3"],
                                   ["--no-dp"], ["--force"], ["--config", "run.toml"]])
def test_resume_refuses_options_it_would_ignore(extra, tmp_path, monkeypatch, capsys):
    run = tmp_path / "run"
    _fake_run(run)
    code, _, err = _cli(monkeypatch, capsys, "run", "--resume", str(run), *extra)
    _one_line_error(code, err)
    for flag in (a for a in extra if a.startswith("--")):
        assert flag in err
    assert "would be ignored" in err


def test_text_model_defaults_to_bbc_news():
    assert build_config({"model": "text"}).dataset == "bbc-news"
    assert build_config({"model": "text", "dataset": "ag_news"}).dataset == "ag_news"
    assert build_config({}).dataset == "digits"


def test_help_shows_every_default_and_they_are_the_configs():
    from typer.testing import CliRunner

    from fedsim.cli.main import app

    result = CliRunner().invoke(app, ["run", "--help"], env={"COLUMNS": "400"})
    assert result.exit_code == 0
    blocks = re.findall(r"│ (--[a-z-]+)(.*?)(?=│ --|╰)", result.stdout, re.S)
    options = {name: " ".join(text.replace("│", " ").split()) for name, text in blocks}
    assert len(options) > 30
    missing = [name for name, text in options.items()
               if name != "--help" and "[default:" not in text]
    assert not missing, f"options without a default in --help: {missing}"
    defaults = RunConfig()
    checked = 0
    for name, text in options.items():
        field = name[2:].replace("-", "_")
        value = getattr(defaults, field, None)
        if isinstance(value, bool) or value is None:
            continue
        shown = re.search(r"\[default: ([^\];]+)", text).group(1).strip()
        if isinstance(value, int | float):
            assert float(shown) == value, (name, shown, value)
        else:
            assert shown == value, (name, shown, value)
        checked += 1
    assert checked >= 20


def test_federated_accuracy_names_its_sample_and_flags_small_ones():
    small = federated_accuracy(0.9091, 11)
    assert "11 examples" in small and "noisy" in small and "±0.30" in small
    large = federated_accuracy(0.91, NOISY_EVAL_EXAMPLES)
    assert "noisy" not in large and f"{NOISY_EVAL_EXAMPLES} examples" in large


def test_summary_shows_epsilon_of_a_dp_run_and_one_wall_time():
    from rich.console import Console

    summary = {"rounds_completed": 3, "final_eps_max": 2.345, "final_eps_median": 1.5,
               "wall_time_s": 12.34, "client_updates": 6, "client_updates_per_s": 0.49,
               "final_federated_accuracy": 0.5, "final_federated_examples": 20}
    console = Console(width=200, record=True)
    console.print(summary_table(summary, "RUN"))
    text = console.export_text()
    assert "epsilon max / median (final)" in text and "2.35 / 1.50" in text
    assert "12.3" in text and "20 examples" in text
    assert text.count("wall time (s)") == 1


def test_progress_bar_shows_epsilon_and_the_runs_wall_time():
    from rich.console import Console

    console = Console(width=250, record=True)
    listener = ProgressListener(console, 5, clock=RunClock(started=0.0, prior_s=0.0))
    listener.on_round({"round": 2, "central_accuracy": 0.5, "train_loss": 1.0,
                       "clients_replied": 2, "clients_sampled": 2, "eps_max": 1.25,
                       "eps_median": 0.75})
    listener.wall.frozen = 3725.0
    console.print(listener.progress)
    text = console.export_text()
    assert "ε max 1.25 med 0.75" in text and "1:02:05" in text


def test_progress_bar_keeps_round_and_times_at_80_columns():
    from rich.console import Console

    console = Console(width=80, record=True)
    listener = ProgressListener(console, 30, clock=RunClock(started=0.0))
    listener.on_round({"round": 12, "central_accuracy": 0.5, "train_loss": 1.0,
                       "clients_replied": 10, "clients_sampled": 10, "eps_max": 1.25,
                       "eps_median": 0.75})
    listener.wall.frozen = 65.0
    console.print(listener.progress)
    text = console.export_text()
    assert "round 12/30" in text and "0:01:05" in text and "eta" in text


def test_wall_time_carries_over_a_resume_and_skips_an_abandoned_round(tmp_path):
    clock = RunClock(started=100.0, prior_s=40.0)
    recorder = RunRecorder(tmp_path, clock=clock)
    assert recorder.checkpoint_wall_s == 40.0  # nothing completed yet in this session
    recorder.on_finish(_Plain(), {"interrupted": True})
    assert recorder.wall_time_s == 40.0 and recorder.finished is False
    assert recorder.summary()["wall_time_s"] == 40.0


class _Plain:
    """The smallest ArrayRecord stand-in on_finish can save."""

    def to_torch_state_dict(self):
        return {}


def test_datasets_table_loses_nothing_at_80_columns():
    from typer.testing import CliRunner

    from fedsim.cli.main import app

    result = CliRunner().invoke(app, ["datasets"], env={"COLUMNS": "80"})
    assert result.exit_code == 0
    assert "…" not in result.stdout
    assert max(len(line) for line in result.stdout.splitlines()) <= 80


def test_a_round_with_too_few_updates_is_not_counted_as_completed(tmp_path):
    recorder = RunRecorder(tmp_path)
    recorder.on_round({"round": 1, "clients_replied": 2, "clients_sampled": 10,
                       "aggregated": False})
    summary = recorder.summary()
    assert summary["rounds_completed"] == 0  # as "stops with the model of round 0" says
    assert summary["client_updates"] == 2


@pytest.mark.parametrize(("args", "needle"), [
    (["--strategy", "krum", "--secure-agg", "he"],
     "--strategy krum cannot run with --secure-agg he: it needs each client's update"),
    (["--strategy", "fedadam", "--secure-agg", "he"],
     "--strategy fedadam cannot run with --secure-agg he"),
    (["--mu", "0.1"], "--mu is an option of --strategy fedprox"),
])
def test_a_strategy_that_cannot_run_as_asked_is_one_line(args, needle, tmp_path,
                                                         monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    code, _, err = _cli(monkeypatch, capsys, "run", *args)
    _one_line_error(code, err)
    assert needle in err
    assert not (tmp_path / "runs").exists()


def test_strategies_command_runs_from_the_entry_point(monkeypatch, capsys):
    code, out, _ = _cli(monkeypatch, capsys, "strategies")
    assert code == 0
    assert "krum" in out and "--byzantine" in out
