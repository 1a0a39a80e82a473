"""Each run option is declared once; the CLI, TOML keys and the app config come from it."""

import ast
import inspect
import re
import tomllib
from pathlib import Path

import pytest
from typer.testing import CliRunner

from fedsim.cli.deploy import submit, submit_options
from fedsim.cli.main import app
from fedsim.cli.run import run
from fedsim.config import build_config, field_options, run_options
from fedsim.deploy.runconfig import (
    APP_CONFIG_START,
    DEPLOY_OPTIONS,
    app_config,
    deploy_plan,
    render_app_config,
)
from fedsim.errors import ConfigError
from fedsim.options import DEPLOYMENT, SIMULATION

ROOT = Path(__file__).resolve().parents[1]
RUN_OWN = {"force", "resume", "config", "verbose"}
SUBMIT_OWN = {"superlink", "ca", "config", "app_dir", "wait", "timeout", "runs", "out"}


def _params(command) -> set[str]:
    return set(inspect.signature(command).parameters)


def test_run_flags_are_the_simulation_options():
    expected = {o.flag.replace("-", "_") for o in run_options() if o.applies_to(SIMULATION)}
    assert _params(run) - RUN_OWN == expected
    assert {"val_fraction", "strategy", "partition"} <= expected


def test_submit_flags_are_the_deployment_options():
    expected = {(o.deploy_flag or o.flag).replace("-", "_") for o in submit_options()
                if o.applies_to(DEPLOYMENT) and o.on_cli}
    assert _params(submit) - SUBMIT_OWN == expected
    assert "server_out" in expected and "partition" not in expected


def test_app_config_is_generated_from_the_declarations():
    text = (ROOT / "deploy" / "pyproject.toml").read_text()
    body = text[text.index(APP_CONFIG_START) + len(APP_CONFIG_START):]
    assert body == render_app_config(), "run `python -m fedsim.deploy.runconfig`"
    table = tomllib.loads(text)["tool"]["flwr"]["app"]["config"]
    assert table == app_config()
    deployed = {o.flag for o in field_options() if o.applies_to(DEPLOYMENT)}
    assert set(table) == deployed | {o.flag for o in DEPLOY_OPTIONS}


def test_the_app_defaults_are_valid_and_mean_what_submit_help_says():
    plan = deploy_plan(app_config(), run_id=5)
    assert (plan.config.clients, plan.config.rounds, plan.config.local_epochs) == (2, 3, 1)
    assert plan.config.batch_size == 10 and plan.config.dataset == "digits"
    with_dp = deploy_plan({**app_config(), "dp": True}, run_id=5).config
    assert (with_dp.batch_size, with_dp.lr, with_dp.model) == (64, 1.0, "dp-cnn")
    result = CliRunner().invoke(app, ["deploy", "submit", "--help"], env={"COLUMNS": "400"})
    assert result.exit_code == 0
    assert re.search(r"--clients\s.*?\[default: 2\]", result.stdout)
    assert re.search(r"--server-out\s.*?\[default: /fedsim/runs\]", result.stdout)


def test_every_option_is_a_toml_key_and_nothing_else_is():
    for option in run_options():
        if option.owner is None and option.default is not None:
            assert getattr(build_config({option.flag: option.default}), option.name) \
                == option.default
    with pytest.raises(ConfigError, match="unknown config key 'epochs'"):
        build_config({"epochs": 3})


def _typer_flags(path: Path) -> list[str]:
    """The flags a module declares by hand with typer.Option("--x", ...)."""
    flags = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Call) and getattr(node.func, "attr", "") == "Option":
            flags += [a.value.split("/")[0] for a in node.args
                      if isinstance(a, ast.Constant) and isinstance(a.value, str)]
    return flags


def test_no_run_option_is_declared_again_by_hand():
    # --out (a local folder of `collect`, `site-data`, `submit --wait`) and `run`'s
    # --resume FOLDER are command options of their own, not the run options
    declared = {f"--{o.flag}" for o in (*run_options(), *DEPLOY_OPTIONS)} - {"--out",
                                                                            "--resume"}
    for path in sorted((ROOT / "fedsim" / "cli").glob("*.py")):
        again = declared & set(_typer_flags(path))
        assert not again, f"{path.name} declares {sorted(again)} again"
    names = [o.name for o in (*run_options(), *DEPLOY_OPTIONS)]
    assert len(names) == len(set(names))
