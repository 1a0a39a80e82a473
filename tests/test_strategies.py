"""The strategy registry as `fedsim run` and `fedsim strategies` meet it."""

from __future__ import annotations

from typer.testing import CliRunner

from fedsim.server.strategies.dp_fedavg import DPFedAvg, with_dp
from fedsim.server.strategies.fedavg import FedsimFedAvg
from fedsim.server.strategies.registry import strategies, strategy_options


def test_strategies_command_lists_every_strategy_with_its_options():
    from fedsim.cli.main import app

    result = CliRunner().invoke(app, ["strategies"], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    for name, info in strategies().items():
        assert name in result.output
        for option in info.options:
            assert f"--{option.flag}" in result.output


def test_every_strategy_class_composes_with_dp():
    for info in strategies().values():
        composed = with_dp(info.build)
        assert issubclass(composed, DPFedAvg) and issubclass(composed, info.build)
    assert with_dp(FedsimFedAvg) is DPFedAvg


def test_an_option_name_is_one_flag_however_many_strategies_declare_it():
    names = [o.name for o in strategy_options()]
    assert len(names) == len(set(names))
