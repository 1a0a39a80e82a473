"""FedMedian (Yin et al. 2018): the coordinate-wise median of the clients' updates."""

from __future__ import annotations

import numpy as np

from fedsim.server.robust import coordinate_median
from fedsim.server.strategies.registry import StrategyInfo
from fedsim.server.strategies.robust_base import REFUSES_HE, RobustFedAvg


class FedsimFedMedian(RobustFedAvg):
    """The coordinate-wise median of the round's updates (unweighted, as Flower's)."""

    rule = "the median"

    def combine(self, updates: list[list[np.ndarray]], weights: list[float]
                ) -> list[np.ndarray]:
        """The coordinate-wise median."""
        return coordinate_median(updates)


STRATEGY = StrategyInfo(
    name="fedmedian",
    help="FedMedian (Yin et al. 2018): the coordinate-wise median of the updates, "
         "robust to a minority of outliers (unweighted, as Flower's FedMedian).",
    build=FedsimFedMedian,
    refuses_he=REFUSES_HE,
)
