"""Multi-Krum: the weighted mean of the updates with the best Krum scores."""

from __future__ import annotations

import re

import numpy as np
import pytest

from fedsim.config import build_config
from fedsim.errors import ConfigError
from tests.strategy_rounds import arrays, build, layers, task_identity, train_round

__all__ = ["task_identity"]


def test_the_outlier_is_left_out_of_the_mean():
    strategy = build("multikrum", clients=5, byzantine=1, keep=0)  # n - f = 4 kept
    ups = {0: arrays([1.0]), 1: arrays([2.0]), 2: arrays([3.0]), 3: arrays([2.0]),
           4: arrays([900.0])}
    new, _ = train_round(strategy, 1, arrays([0]), ups)
    np.testing.assert_allclose(layers(new)[0], [2.0])


@pytest.mark.parametrize(("values", "needle"), [
    ({"strategy": "multikrum", "keep": 20}, "--keep 20 is more than the 10 clients"),
    ({"strategy": "multikrum", "secure_agg": "he"}, "needs each client's update"),
    ({"strategy": "fedavg", "byzantine": 1},
     "--byzantine is an option of --strategy krum or multikrum or bulyan"),
])
def test_bad_options_and_he_are_refused(values, needle):
    with pytest.raises(ConfigError, match=re.escape(needle)):
        build_config(values)
