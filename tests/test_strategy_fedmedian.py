"""FedMedian: the coordinate-wise median of the round's updates; not under HE."""

from __future__ import annotations

import numpy as np
import pytest

from fedsim.config import build_config
from fedsim.errors import ConfigError
from fedsim.server.codecs import PlainCodec
from tests.strategy_rounds import arrays, build, layers, task_identity, train_round

__all__ = ["task_identity"]


def test_one_outlier_does_not_move_the_median():
    strategy = build("fedmedian", clients=3, codec=PlainCodec())
    ups = {0: arrays([1, 2], [5]), 1: arrays([2, 3], [6]), 2: arrays([1e6, -1e6], [7])}
    new, _ = train_round(strategy, 1, arrays([0, 0], [0]), ups)
    np.testing.assert_allclose(layers(new)[0], [2.0, 2.0])
    np.testing.assert_allclose(layers(new)[1], [6.0])
    assert strategy.stats.clients_replied == 3


def test_a_bad_reply_is_rejected_alone():
    strategy = build("fedmedian", clients=3)
    ups = {0: arrays([1, 1], [1]), 1: arrays([3, 3], [3]), 2: arrays([np.nan, 0], [0])}
    new, _ = train_round(strategy, 1, arrays([0, 0], [0]), ups)
    assert strategy.stats.rejected == 1
    np.testing.assert_allclose(layers(new)[0], [2.0, 2.0])


def test_he_is_refused_because_it_needs_each_update():
    with pytest.raises(ConfigError, match="needs each client's update"):
        build_config({"strategy": "fedmedian", "secure_agg": "he"})
