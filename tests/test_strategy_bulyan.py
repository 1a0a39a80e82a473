"""Bulyan: Krum selection, then the mean of the values nearest the median."""

from __future__ import annotations

import re

import numpy as np
import pytest

from fedsim.config import build_config
from fedsim.errors import ConfigError
from tests.strategy_rounds import arrays, build, layers, task_identity, train_round

__all__ = ["task_identity"]


def test_one_byzantine_update_of_seven_does_not_pull_the_model():
    strategy = build("bulyan", clients=7, byzantine=1)
    ups = {c: arrays([1.0 + 0.01 * c, 2.0]) for c in range(6)}
    ups[6] = arrays([-1e4, 1e4])
    new, _ = train_round(strategy, 1, arrays([0, 0]), ups)
    np.testing.assert_allclose(layers(new)[0], [1.025, 2.0], atol=0.02)


@pytest.mark.parametrize(("values", "needle"), [
    ({"strategy": "bulyan", "byzantine": 2, "clients": 10},
     "--strategy bulyan with --byzantine 2 needs at least 11 clients per round"),
    ({"strategy": "bulyan", "secure_agg": "he"}, "needs each client's update"),
])
def test_bad_options_and_he_are_refused(values, needle):
    with pytest.raises(ConfigError, match=re.escape(needle)):
        build_config(values)
