"""FedAvgM: Flower's momentum step on fedsim's FedAvg average, over two rounds."""

from __future__ import annotations

import re

import numpy as np
import pytest

from fedsim import protocol
from fedsim.config import build_config
from fedsim.errors import ConfigError
from fedsim.privacy.ledger import PrivacyLedger
from tests.strategy_rounds import arrays, build, layers, task_identity, train_round

__all__ = ["task_identity"]


def test_two_rounds_follow_the_momentum_rule():
    strategy = build("fedavgm", clients=2, server_lr=0.5, momentum=0.9)
    g0 = np.zeros(3)
    new, _ = train_round(strategy, 1, arrays(g0), {0: arrays([1, 2, 3]),
                                                   1: arrays([3, 2, 1])})
    pg1 = g0 - np.array([2.0, 2.0, 2.0])
    g1 = g0 - 0.5 * pg1
    np.testing.assert_allclose(layers(new)[0], g1, rtol=1e-6)
    assert layers(new)[0].dtype == np.float32
    new, _ = train_round(strategy, 2, new, {0: arrays([0, 0, 0]), 1: arrays([2, 2, 2])})
    pg2 = g1 - np.array([1.0, 1.0, 1.0])
    g2 = g1 - 0.5 * (0.9 * pg1 + pg2)
    np.testing.assert_allclose(layers(new)[0], g2, rtol=1e-6)


def test_server_lr_one_and_no_momentum_is_fedavg():
    strategy = build("fedavgm", clients=2, server_lr=1.0, momentum=0.0)
    new, _ = train_round(strategy, 1, arrays(np.zeros(2)), {0: arrays([1, 1]),
                                                            1: arrays([3, 5])})
    np.testing.assert_allclose(layers(new)[0], [2.0, 3.0])


def test_under_dp_the_ledger_records_each_update_as_under_fedavg(tmp_path):
    ledger = PrivacyLedger(tmp_path / "ledger.jsonl")
    dp = {"ledger": ledger, "accountant": "rdp", "delta": 1e-5, "budget": None}
    strategy = build("fedavgm", clients=2, dp=dp, server_lr=1.0, momentum=0.9)
    metrics = {protocol.DP_NOISE: 1.0, protocol.DP_SAMPLE_RATE: 0.5, protocol.DP_STEPS: 2,
               protocol.DP_RELEASE: 5, protocol.DP_EXHAUSTED: 0}
    new, _ = train_round(strategy, 1, arrays(np.zeros(2)), {0: arrays([1, 1]),
                                                            1: arrays([3, 3])},
                         metrics=metrics)
    np.testing.assert_allclose(layers(new)[0], [2.0, 2.0])
    assert [(r.client_id, r.outcome) for r in ledger.records()] == [(0, "aggregated"),
                                                                    (1, "aggregated")]


@pytest.mark.parametrize(("values", "needle"), [
    ({"strategy": "fedavgm", "momentum": 1.0}, "--momentum must be in [0, 1)"),
    ({"strategy": "fedavgm", "server_lr": 0.0}, "--server-lr must be a finite number > 0"),
    ({"strategy": "fedavgm", "secure_agg": "he"}, "cannot run with --secure-agg he"),
])
def test_bad_options_and_he_are_refused(values, needle):
    with pytest.raises(ConfigError, match=re.escape(needle)):
        build_config(values)


def test_a_resumed_run_says_its_momentum_starts_afresh(caplog):
    caplog.set_level("WARNING", logger="fedsim")
    build("fedavgm", clients=2, round_offset=3)
    assert "resumed after round 3" in caplog.text
