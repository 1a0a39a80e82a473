"""Robust aggregation rules over whole client updates: pure numpy, no Flower types.

Unlike FedAvg these need every client's update, not a sum: the coordinate-wise
median, the trimmed mean (Yin et al. 2018), Krum / Multi-Krum (Blanchard et al. 2017)
and Bulyan (El Mhamdi et al. 2018). An update is a list of arrays (one per layer),
all of the same layout.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from flwr.serverapp.strategy.bulyan import aggregate_n_closest_weights
from flwr.serverapp.strategy.fedtrimmedavg import trim_mean

Update = Sequence[np.ndarray]


def _layers(updates: Sequence[Update]) -> list[np.ndarray]:
    """Per layer, the clients' values stacked on a first axis."""
    return [np.stack([np.asarray(u[i], dtype=np.float64) for u in updates])
            for i in range(len(updates[0]))]


def coordinate_median(updates: Sequence[Update]) -> list[np.ndarray]:
    """The coordinate-wise median of the updates (unweighted)."""
    return [np.median(layer, axis=0) for layer in _layers(updates)]


def trimmed_mean(updates: Sequence[Update], trim: float) -> list[np.ndarray]:
    """Per coordinate, the mean after dropping the `trim` fraction at each end.

    Flower's `trim_mean` (scipy's rule): int(trim * n) values cut at each end.
    """
    if not 0.0 <= trim < 0.5:
        raise ValueError(f"trim fraction must be in [0, 0.5), got {trim}")
    return [trim_mean(layer, trim) for layer in _layers(updates)]


def squared_distances(updates: Sequence[Update]) -> np.ndarray:
    """The n x n matrix of squared L2 distances between whole updates."""
    flat = np.stack([np.concatenate([np.ravel(np.asarray(a, dtype=np.float64))
                                     for a in u]) for u in updates])
    # one row at a time: an n x n x d difference tensor would not fit for real models
    return np.stack([np.square(flat - row).sum(axis=1) for row in flat])


def krum_scores(updates: Sequence[Update], byzantine: int) -> np.ndarray:
    """Each update's Krum score: the summed squared distance to its n - f - 2 nearest."""
    distances = squared_distances(updates)
    nearest = max(1, len(updates) - byzantine - 2)
    return np.array([np.sort(np.delete(row, i))[:nearest].sum()
                     for i, row in enumerate(distances)])


def multi_krum(updates: Sequence[Update], weights: Sequence[float], *, byzantine: int,
               keep: int = 1) -> list[np.ndarray]:
    """The weighted mean of the `keep` updates with the lowest Krum scores (1: Krum).

    Ties go to the earlier update (a stable sort), so callers order updates stably.
    """
    chosen = np.argsort(krum_scores(updates, byzantine), kind="stable")[:keep]
    total = float(sum(weights[i] for i in chosen))
    return [sum(np.asarray(updates[i][layer], dtype=np.float64) * (weights[i] / total)
                for i in chosen) for layer in range(len(updates[0]))]


def krum_minimum(byzantine: int) -> int:
    """The fewest updates Krum is defined for with f Byzantine ones: n > 2f + 2."""
    return 2 * byzantine + 3


def bulyan(updates: Sequence[Update], *, byzantine: int) -> list[np.ndarray]:
    """Bulyan: the n - 2f best Krum scores, then per coordinate a mean near the median.

    Per coordinate, the n - 4f kept values nearest their median are averaged
    (Flower's selection and averaging).
    """
    n = len(updates)
    if n < bulyan_minimum(byzantine):
        raise ValueError(f"Bulyan with f={byzantine} needs {bulyan_minimum(byzantine)} "
                         f"updates, got {n}")
    chosen = np.argsort(krum_scores(updates, byzantine), kind="stable")[:n - 2 * byzantine]
    kept = [[np.asarray(a, dtype=np.float64) for a in updates[i]] for i in chosen]
    median = coordinate_median(kept)
    return aggregate_n_closest_weights(median, kept, n - 4 * byzantine)


def bulyan_minimum(byzantine: int) -> int:
    """The fewest updates Bulyan is defined for with f Byzantine ones: n >= 4f + 3."""
    return 4 * byzantine + 3
