"""The robust aggregation rules' math (server.robust), on their own."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from fedsim.server.robust import coordinate_median, krum_scores, multi_krum, trimmed_mean

values = st.floats(-1e3, 1e3, allow_nan=False, width=32)
updates = st.integers(3, 7).flatmap(
    lambda n: st.lists(arrays(np.float32, (4,), elements=values), min_size=n, max_size=n))


@settings(max_examples=50, deadline=None)
@given(updates, st.randoms())
def test_median_and_trimmed_mean_ignore_order_and_stay_in_range(ups, rnd):
    shuffled = list(ups)
    rnd.shuffle(shuffled)
    stacked = np.stack(ups)
    for rule in (coordinate_median, lambda u: trimmed_mean(u, 0.2)):
        result = rule([[u] for u in ups])[0]
        np.testing.assert_array_equal(result, rule([[u] for u in shuffled])[0])
        assert np.all(stacked.min(axis=0) - 1e-9 <= result)
        assert np.all(result <= stacked.max(axis=0) + 1e-9)


@settings(max_examples=30, deadline=None)
@given(updates)
def test_trimmed_mean_without_trimming_is_the_mean(ups):
    np.testing.assert_allclose(trimmed_mean([[u] for u in ups], 0.0)[0],
                               np.mean(np.stack(ups).astype(np.float64), axis=0))


def test_trimming_drops_the_extremes():
    ups = [[np.array([v])] for v in (0.0, 1.0, 2.0, 3.0, 1000.0)]
    assert trimmed_mean(ups, 0.2)[0][0] == 2.0  # one cut per end: mean of 1, 2, 3


def test_krum_picks_an_honest_update_against_a_far_outlier():
    rng = np.random.default_rng(0)
    honest = [[rng.normal(0, 0.1, 5)] for _ in range(5)]
    attack = [[np.full(5, 100.0)]]
    ups = honest + attack
    scores = krum_scores(ups, byzantine=1)
    assert scores.argmax() == 5
    chosen = multi_krum(ups, [1.0] * 6, byzantine=1, keep=1)[0]
    assert any(np.array_equal(chosen, h[0]) for h in honest)


def test_multi_krum_averages_the_kept_updates_by_weight():
    ups = [[np.array([0.0])], [np.array([1.0])], [np.array([50.0])]]
    result = multi_krum(ups, [1.0, 3.0, 1.0], byzantine=0, keep=2)[0]
    assert result[0] == 0.75


def test_bulyan_ignores_f_outliers_and_needs_4f_plus_3():
    import pytest

    from fedsim.server.robust import bulyan

    rng = np.random.default_rng(1)
    honest = [[rng.normal(1.0, 0.05, 4)] for _ in range(6)]
    ups = honest + [[np.full(4, -500.0)]]
    result = bulyan(ups, byzantine=1)[0]
    assert np.all(np.abs(result - 1.0) < 0.2)
    with pytest.raises(ValueError, match="needs 7 updates"):
        bulyan(ups[:6], byzantine=1)
