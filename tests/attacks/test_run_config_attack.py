"""A deployment's submitter plays with the run config the ServerApp reads.

Adversary: whoever can `flwr run` on the SuperLink (a federation member with a
user account). The ServerApp validates Flower's run config with fedsim's own rules;
what a deployment refuses stays refused however it is spelt.
"""

import json

import pytest

from fedsim.deploy.runconfig import app_config, deploy_plan
from fedsim.errors import ConfigError


@pytest.mark.parametrize("smuggled", [
    {"insecure_reproducible_noise": True},
    {"insecure-reproducible-noise": True},
    {"max_participations": 1},
    {"partition": "iid"},
    {"rounds": 50},
])
def test_attack_strategy_options_cannot_carry_run_options(smuggled):
    run_config = {**app_config(), "dp": True, "strategy-options": json.dumps(smuggled)}
    with pytest.raises(ConfigError, match="no strategy's option"):
        deploy_plan(run_config, run_id=3)


def test_attack_simulation_only_options_are_refused_as_keys_too():
    for key in ("insecure-reproducible-noise", "max-participations", "data-dir"):
        with pytest.raises(ConfigError, match="simulations only"):
            deploy_plan({**app_config(), key: 1}, run_id=3)


def test_attack_another_strategys_option_is_refused_through_the_table():
    run_config = {**app_config(), "strategy": "fedavg",
                  "strategy-options": json.dumps({"mu": 0.5})}
    with pytest.raises(ConfigError, match="option of --strategy fedprox"):
        deploy_plan(run_config, run_id=3)
    plan = deploy_plan({**run_config, "strategy": "fedprox"}, run_id=3)
    assert plan.config.option("mu") == 0.5


@pytest.mark.parametrize("table", ["[1, 2]", "not json", '"mu"', "1e999",
                                   '{"mu": 0.1, "mu": 1e308}'])
def test_attack_malformed_strategy_table_is_one_line(table):
    with pytest.raises(ConfigError, match="must be a JSON table"):
        deploy_plan({**app_config(), "strategy-options": table}, run_id=3)
