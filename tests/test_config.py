import subprocess

import pytest

from fedsim.config import RunConfig, build_config, resolve_config
from fedsim.errors import ConfigError
from tests.conftest import fedsim_cmd


def test_defaults_are_valid():
    cfg = build_config({})
    assert cfg == RunConfig()
    assert cfg.clients_per_round() == 10


def test_flags_override_file(tmp_path):
    path = tmp_path / "run.toml"
    path.write_text('clients = 20\nrounds = 3\nlocal-epochs = 2\n[run]\nlr = 0.5\n')
    cfg = resolve_config(config_file=path, overrides={"rounds": 7, "lr": None})
    assert (cfg.clients, cfg.rounds, cfg.local_epochs, cfg.lr) == (20, 7, 2, 0.5)


@pytest.mark.parametrize(
    ("values", "needle"),
    [
        ({"clients": 0}, "clients must be > 0"),
        ({"fraction": 0.0}, "fraction must be in (0, 1]"),
        ({"fraction": 1.5}, "fraction must be in (0, 1]"),
        ({"model": "resnet9000"}, "unknown model 'resnet9000'; choose one of: cnn"),
        ({"dataset": "imagenet"}, "unknown dataset 'imagenet'"),
        ({"partition": "random"}, "partition must be one of iid, dirichlet, shards"),
        ({"clients": "ten"}, "clients must be an integer"),
        ({"colour": "red"}, "unknown config key 'colour'; valid keys: clients, rounds"),
        ({"dp": True, "accountant": "gdp"}, "--accountant gdp is refused for runs"),
        ({"dp": True, "max_participations": 0}, "--max-participations must be > 0"),
        ({"max_participations": 3}, "--max-participations needs --dp"),
        ({"insecure_reproducible_noise": True}, "--insecure-reproducible-noise needs --dp"),
    ],
)
def test_bad_values_are_named(values, needle):
    with pytest.raises(ConfigError) as info:
        build_config(values)
    assert needle in str(info.value)


def test_target_epsilon_is_the_default_budget():
    cfg = build_config({"dp": True, "target_epsilon": 4.0})
    assert cfg.epsilon_budget == 4.0 and cfg.noise_multiplier is None
    assert build_config({"dp": True, "target_epsilon": 4.0,
                         "epsilon_budget": 3.0}).epsilon_budget == 3.0
    assert build_config({"dp": True}).epsilon_budget is None


def test_all_problems_reported_together():
    with pytest.raises(ConfigError) as info:
        build_config({"clients": 0, "fraction": 2.0, "model": "nope"})
    assert len(info.value.problems) == 3


def test_unreadable_and_invalid_files(tmp_path):
    with pytest.raises(ConfigError, match="cannot read config file"):
        resolve_config(config_file=tmp_path / "missing.toml", overrides={})
    bad = tmp_path / "bad.toml"
    bad.write_text("clients = = 3")
    with pytest.raises(ConfigError, match="not valid TOML"):
        resolve_config(config_file=bad, overrides={})


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--clients", "0"], "clients must be > 0"),
        (["--fraction", "1.5"], "fraction must be in (0, 1]"),
        (["--model", "nope"], "unknown model 'nope'"),
        (["--dataset", "nope"], "unknown dataset 'nope'"),
        (["--clients", "5000"], "--clients 5000 is more than dataset 'digits' can serve"),
        (["--config", "/nonexistent/run.toml"], "cannot read config file"),
        (["--bogus"], "No such option '--bogus'"),
    ],
)
def test_cli_bad_input_is_one_line_without_traceback(args, needle, tmp_path):
    out = tmp_path / "run"
    proc = subprocess.run(fedsim_cmd("run", "--out", str(out), *args),
                          capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert proc.returncode == 2
    assert needle in proc.stderr
    assert "Traceback" not in proc.stderr + proc.stdout
    assert len(proc.stderr.strip().splitlines()) == 1
    assert not out.exists(), "a rejected run must not leave a run folder"


def test_cli_unknown_config_key_names_it(tmp_path):
    path = tmp_path / "run.toml"
    path.write_text("clients = 4\nnum_rounds = 3\n")
    proc = subprocess.run(fedsim_cmd("run", "--config", str(path)),
                          capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert proc.returncode == 2
    assert "unknown config key 'num_rounds'" in proc.stderr
    assert "rounds" in proc.stderr.split("valid keys:")[1]
