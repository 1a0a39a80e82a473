"""FedAdagrad: Flower's Adagrad step on fedsim's FedAvg average."""

from __future__ import annotations

import numpy as np
import pytest

from fedsim.config import build_config
from fedsim.errors import ConfigError
from tests.strategy_rounds import arrays, build, layers, task_identity, train_round

__all__ = ["task_identity"]


def test_three_rounds_follow_the_update_rule():
    strategy = build("fedadagrad", clients=2, server_lr=0.1, tau=1e-3)
    x, m, v = np.array([0.0, 1.0]), np.zeros(2), np.zeros(2)
    record = arrays(x)
    for t, (a, b) in enumerate([([1, 3], [3, 1]), ([0, 0], [1, 1]), ([2, 2], [2, 4])], 1):
        record, _ = train_round(strategy, t, record, {0: arrays(a), 1: arrays(b)})
        delta = (np.array(a) + np.array(b)) / 2 - x
        m = 0.0 * m + (1 - 0.0) * delta
        v = v + delta**2
        eta = 0.1
        x = x + eta * m / (np.sqrt(v) + 1e-3)
        np.testing.assert_allclose(layers(record)[0], x, rtol=1e-5, atol=1e-6)
        assert layers(record)[0].dtype == np.float32


def test_he_is_refused_with_the_reason():
    with pytest.raises(ConfigError, match="--strategy fedadagrad cannot run with --secure-agg he"):
        build_config({"strategy": "fedadagrad", "secure_agg": "he"})


def test_a_bad_tau_is_refused():
    with pytest.raises(ConfigError, match="--tau must be a finite number > 0"):
        build_config({"strategy": "fedadagrad", "tau": 0.0})
