"""Aggregation written against addition: no Flower types, no knowledge of encryption.

A contribution is an update already multiplied by its weight. Plaintext and
encrypted updates take the same path: add contributions as they arrive, add the
weights, divide by the total weight once at the end (for ciphertexts, the division
happens on the clients after decryption).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np


class Accumulator:
    """Streaming sum of weighted contributions; holds one running total only."""

    def __init__(self) -> None:
        self.total: list[Any] | None = None
        self.weight = 0.0
        self.count = 0

    def add(self, contribution: Sequence[Any], weight: float) -> None:
        """Add one weighted contribution (a list of arrays or ciphertexts)."""
        if self.total is None:
            self.total = list(contribution)
        else:
            if len(contribution) != len(self.total):
                raise ValueError(
                    f"contribution has {len(contribution)} parts, expected "
                    f"{len(self.total)}"
                )
            self.total = [t + c for t, c in zip(self.total, contribution, strict=True)]
        self.weight += float(weight)
        self.count += 1


def weighted(arrays: Sequence[np.ndarray], weight: float) -> list[np.ndarray]:
    """A plaintext update scaled by its weight, in float64 for a stable sum."""
    return [np.asarray(a, dtype=np.float64) * weight for a in arrays]


def weighted_average(acc: Accumulator, dtypes: Sequence[np.dtype]) -> list[np.ndarray]:
    """Divide an accumulated plaintext sum by its total weight."""
    if acc.total is None or acc.weight <= 0:
        raise ValueError("nothing was accumulated")
    return [
        (t / acc.weight).astype(dt) for t, dt in zip(acc.total, dtypes, strict=True)
    ]


def fedavg(updates: Sequence[Sequence[np.ndarray]], weights: Sequence[float]) -> list[np.ndarray]:
    """Reference FedAvg over whole updates (used by tests and benchmarks)."""
    acc = Accumulator()
    for update, weight in zip(updates, weights, strict=True):
        acc.add(weighted(update, weight), weight)
    return weighted_average(acc, [np.asarray(a).dtype for a in updates[0]])
