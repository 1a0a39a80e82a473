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


FIXED_POINT_BITS = 30  # fractional bits of the fixed-point plaintext sum
_SUM_LIMIT = float(2**62)  # stay clear of int64 overflow


class FixedPointOverflow(ValueError):
    """A contribution would push the fixed-point sum past the int64 range."""


def to_fixed(contribution: Sequence[np.ndarray]) -> list[np.ndarray]:
    """A weighted float update as int64 fixed point (2^-30 resolution).

    Integer addition is exact and commutative, so the sum of fixed-point
    contributions is bit-for-bit the same whatever order replies arrive in:
    streaming aggregation stays reproducible.
    """
    scale = float(2**FIXED_POINT_BITS)
    scaled = [np.rint(np.asarray(c, dtype=np.float64) * scale) for c in contribution]
    # checked before the cast: beyond int64 it would wrap (to INT64_MIN, whose
    # absolute value is negative), and the running bound would never see it
    if any(a.size and not float(np.abs(a).max()) < _SUM_LIMIT for a in scaled):
        raise FixedPointOverflow(
            "update too large for the fixed-point sum (|weight x value| above "
            f"{_SUM_LIMIT / scale:.3g})")
    return [a.astype(np.int64) for a in scaled]


def fixed_magnitude(fixed: Sequence[np.ndarray]) -> float:
    """The largest absolute entry of a fixed-point contribution."""
    return max((float(np.abs(a).max()) for a in fixed if a.size), default=0.0)


class FixedPointAccumulator(Accumulator):
    """An Accumulator over int64 fixed point that refuses to overflow."""

    def __init__(self) -> None:
        super().__init__()
        self.bound = 0.0  # upper bound of any entry of the running total

    def add(self, contribution: Sequence[Any], weight: float) -> None:
        """Add a fixed-point contribution; raise FixedPointOverflow if unsafe."""
        magnitude = fixed_magnitude(contribution)
        if self.bound + magnitude >= _SUM_LIMIT:
            raise FixedPointOverflow(
                "update too large for the fixed-point sum (|weight x value| above "
                f"{_SUM_LIMIT / 2**FIXED_POINT_BITS:.3g} in total)")
        super().add(contribution, weight)
        self.bound += magnitude


def fixed_average(acc: Accumulator, dtypes: Sequence[np.dtype]) -> list[np.ndarray]:
    """Divide a fixed-point sum by its total weight, back in each layer's dtype."""
    if acc.total is None or acc.weight <= 0:
        raise ValueError("nothing was accumulated")
    scale = float(2**FIXED_POINT_BITS) * acc.weight
    return [(t.astype(np.float64) / scale).astype(dt)
            for t, dt in zip(acc.total, dtypes, strict=True)]
