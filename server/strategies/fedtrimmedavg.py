"""FedTrimmedAvg (Yin et al. 2018): per coordinate, the mean of the middle updates."""

from __future__ import annotations

from typing import Any

import numpy as np

from fedsim.options import Option
from fedsim.server.robust import trimmed_mean
from fedsim.server.strategies.registry import StrategyInfo
from fedsim.server.strategies.robust_base import REFUSES_HE, RobustFedAvg


class FedsimFedTrimmedAvg(RobustFedAvg):
    """Per coordinate, drop the `trim_fraction` lowest and highest values, average."""

    rule = "the trimmed mean"

    def __init__(self, *, trim_fraction: float = 0.2, **common: Any) -> None:
        super().__init__(**common)
        self.trim_fraction = trim_fraction

    def combine(self, updates: list[list[np.ndarray]], weights: list[float]
                ) -> list[np.ndarray]:
        """The coordinate-wise trimmed mean (unweighted, as Flower's)."""
        return trimmed_mean(updates, self.trim_fraction)


STRATEGY = StrategyInfo(
    name="fedtrimmedavg",
    help="FedTrimmedAvg (Yin et al. 2018): per coordinate, the mean of the updates "
         "after cutting the lowest and highest --trim-fraction of them.",
    build=FedsimFedTrimmedAvg,
    options=(Option(name="trim_fraction", kind=float, default=0.2, owner="fedtrimmedavg",
                    help="Fraction cut at each end, in [0, 0.5) (Flower's beta); "
                         "int(fraction x updates) values per end.",
                    valid=lambda trim: 0 <= trim < 0.5, valid_text="in [0, 0.5)"),),
    refuses_he=REFUSES_HE,
)
