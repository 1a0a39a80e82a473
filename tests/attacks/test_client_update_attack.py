"""A malicious client crafts its update to corrupt the global model.

Adversary: one client, with its own reply (values, dtype, weight). The server
rejects that reply with a reason and aggregates the honest ones; for every
registered strategy that runs in plaintext, the global stays finite.
"""

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord

from fedsim.server.strategies.registry import strategies
from tests.strategy_rounds import arrays, build, layers, task_identity, train_round  # noqa: F401

HONEST = {cid: arrays(np.full(4, 0.5 + 0.01 * cid)) for cid in range(7)}


def _evil(values: np.ndarray) -> ArrayRecord:
    return ArrayRecord({"w0": Array(values)})


@pytest.mark.parametrize("evil", [
    np.full(4, 1e10, dtype=np.float32),   # wraps int64 fixed point once scaled by 2^30
    np.full(4, 1e308, dtype=np.float64),  # finite as sent, inf as the model's float32
    np.full(4, 3e38, dtype=np.float32),
])
@pytest.mark.parametrize("name", sorted(strategies()))
def test_attack_one_crafted_update_cannot_corrupt_the_global(name, evil):
    options = {"byzantine": 1} if name in ("krum", "multikrum", "bulyan") else {}
    strategy = build(name, clients=8, **options)
    updates = {**HONEST, 7: _evil(evil)}
    result, _ = train_round(strategy, 1, arrays(np.zeros(4)), updates, examples=100)
    assert result is not None, f"{name}: the honest updates were not aggregated"
    (values,) = layers(result)
    assert values.dtype == np.float32 and np.all(np.isfinite(values))
    assert np.all(np.abs(values) < 10), f"{name}: the crafted update moved the global"


@pytest.mark.parametrize("name", ["fedavg", "fedprox"])
def test_attack_one_huge_example_count_cannot_crowd_out_the_others(name):
    # weight 2^32 - 1 x values 1.0 filled the fixed-point sum: every honest reply
    # after it overflowed, and the global was the attacker's
    strategy = build(name, clients=8)
    updates = {7: arrays(np.ones(4)), **HONEST}
    sent = {cid: (2**32 - 1 if cid == 7 else 100) for cid in updates}
    result, _ = train_round_weighted(strategy, updates, sent)
    (values,) = layers(result)
    assert np.all(np.abs(values - 0.53) < 0.1), f"{name}: {values}"


def train_round_weighted(strategy, updates, weights):
    from flwr.app import ConfigRecord

    from tests.strategy_rounds import reply

    sent = list(strategy.configure_train(1, arrays(np.zeros(4)), ConfigRecord({}), None))
    by_node = {m.metadata.dst_node_id: m for m in sent}
    replies = [reply(by_node[100 + cid], cid, update, examples=weights[cid])
               for cid, update in updates.items()]
    return strategy.aggregate_train(1, replies)
