"""Krum: the one update nearest its neighbours; f Byzantine clients; not under HE."""

from __future__ import annotations

import re

import numpy as np
import pytest

from fedsim.config import build_config
from fedsim.errors import ConfigError
from tests.strategy_rounds import arrays, build, layers, task_identity, train_round

__all__ = ["task_identity"]


def test_a_byzantine_update_is_never_the_one_chosen():
    strategy = build("krum", clients=5, byzantine=1)
    ups = {0: arrays([1.0, 1.0]), 1: arrays([1.1, 0.9]), 2: arrays([0.9, 1.0]),
           3: arrays([1.0, 1.2]), 4: arrays([-50.0, 80.0])}
    new, _ = train_round(strategy, 1, arrays([0, 0]), ups)
    chosen = layers(new)[0]
    assert any(np.allclose(chosen, layers(ups[c])[0]) for c in range(4))


def test_too_few_updates_for_f_end_the_run_with_the_last_model():
    strategy = build("krum", clients=5, byzantine=1)
    new, _ = train_round(strategy, 1, arrays([0, 0]), {0: arrays([1, 1]),
                                                       1: arrays([2, 2])})
    assert new is None
    assert "Krum needs at least 5" in strategy.stop_reason


@pytest.mark.parametrize(("values", "needle"), [
    ({"strategy": "krum", "byzantine": 2, "clients": 6},
     "--strategy krum with --byzantine 2 needs at least 7 clients per round"),
    ({"strategy": "krum", "byzantine": -1}, "--byzantine must be >= 0"),
    ({"strategy": "krum", "secure_agg": "he"},
     "--strategy krum cannot run with --secure-agg he: it needs each client's update"),
])
def test_bad_options_and_he_are_refused(values, needle):
    with pytest.raises(ConfigError, match=re.escape(needle)):
        build_config(values)
