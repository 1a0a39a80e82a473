import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from fedsim.server.aggregate import Accumulator, fedavg, weighted, weighted_average


@settings(max_examples=60, deadline=None)
@given(
    shapes=st.lists(st.tuples(st.integers(1, 5), st.integers(1, 4)), min_size=1, max_size=3),
    weights=st.lists(st.integers(1, 1000), min_size=1, max_size=6),
    seed=st.integers(0, 2**16),
)
def test_fedavg_matches_weighted_mean(shapes, weights, seed):
    rng = np.random.default_rng(seed)
    updates = [[rng.normal(size=s).astype(np.float32) for s in shapes] for _ in weights]
    result = fedavg(updates, weights)
    w = np.asarray(weights, dtype=np.float64)
    for i, _ in enumerate(shapes):
        stacked = np.stack([u[i].astype(np.float64) for u in updates])
        expected = np.tensordot(w / w.sum(), stacked, axes=1)
        np.testing.assert_allclose(result[i], expected, rtol=1e-5, atol=1e-6)
        assert result[i].dtype == np.float32


def test_accumulator_streams_and_counts():
    acc = Accumulator()
    acc.add(weighted([np.ones(3)], 2.0), 2.0)
    acc.add(weighted([np.zeros(3)], 6.0), 6.0)
    assert acc.count == 2 and acc.weight == 8.0
    np.testing.assert_allclose(weighted_average(acc, [np.float64])[0], 0.25)


def test_accumulator_rejects_mismatched_parts():
    acc = Accumulator()
    acc.add([np.ones(2)], 1.0)
    try:
        acc.add([np.ones(2), np.ones(2)], 1.0)
    except ValueError as err:
        assert "2 parts, expected 1" in str(err)
    else:
        raise AssertionError("mismatched contribution was accepted")
