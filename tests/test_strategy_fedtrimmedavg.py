"""FedTrimmedAvg: per coordinate, the mean of the middle updates."""

from __future__ import annotations

import re

import numpy as np
import pytest

from fedsim.config import build_config
from fedsim.errors import ConfigError
from tests.strategy_rounds import arrays, build, layers, task_identity, train_round

__all__ = ["task_identity"]


def test_the_extremes_of_each_coordinate_are_cut():
    strategy = build("fedtrimmedavg", clients=5, trim_fraction=0.2)
    ups = {0: arrays([0, 9]), 1: arrays([1, 1]), 2: arrays([2, 2]), 3: arrays([3, 3]),
           4: arrays([1000, -1000])}
    new, _ = train_round(strategy, 1, arrays([0, 0]), ups)
    np.testing.assert_allclose(layers(new)[0], [2.0, 2.0])


def test_arrival_order_does_not_change_the_result():
    results = []
    for order in ([0, 1, 2, 3], [3, 1, 0, 2]):
        strategy = build("fedtrimmedavg", clients=4, trim_fraction=0.25)
        values = {0: [0.1, 5], 1: [0.7, 1], 2: [0.3, 2], 3: [0.9, 8]}
        new, _ = train_round(strategy, 1, arrays([0, 0]), {c: arrays(values[c])
                                                           for c in order})
        results.append(layers(new)[0])
    np.testing.assert_array_equal(*results)


@pytest.mark.parametrize(("values", "needle"), [
    ({"strategy": "fedtrimmedavg", "trim_fraction": 0.5}, "--trim-fraction must be in [0, 0.5)"),
    ({"strategy": "fedtrimmedavg", "secure_agg": "he"}, "needs each client's update"),
    ({"trim_fraction": 0.1}, "--trim-fraction is an option of --strategy fedtrimmedavg"),
])
def test_bad_options_and_he_are_refused(values, needle):
    with pytest.raises(ConfigError, match=re.escape(needle)):
        build_config(values)
