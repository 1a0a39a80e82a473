"""Bulyan (El Mhamdi et al. 2018): Krum selection, then a trimmed median per coordinate."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from fedsim.server.robust import bulyan, bulyan_minimum
from fedsim.server.strategies.krum import byzantine_option, check_byzantine
from fedsim.server.strategies.registry import StrategyInfo
from fedsim.server.strategies.robust_base import REFUSES_HE, ByzantineFedAvg


class FedsimBulyan(ByzantineFedAvg):
    """Bulyan over the round's updates (unweighted, as Flower's)."""

    rule = "Bulyan"

    def needs(self) -> int:
        """At least 4f + 3 updates."""
        return bulyan_minimum(self.byzantine)

    def combine(self, updates: list[list[np.ndarray]], weights: list[float]
                ) -> list[np.ndarray]:
        """Bulyan's aggregate."""
        return bulyan(updates, byzantine=self.byzantine)


def _check(cfg: Mapping[str, Any], options: Mapping[str, Any]) -> list[str]:
    return check_byzantine(cfg, options, minimum=bulyan_minimum, rule="n >= 4f + 3")


STRATEGY = StrategyInfo(
    name="bulyan",
    help="Bulyan (El Mhamdi et al. 2018): keep the n - 2f updates with the best Krum "
         "scores, then per coordinate average the n - 4f values nearest their median.",
    build=FedsimBulyan,
    options=(byzantine_option("bulyan"),),
    refuses_he=REFUSES_HE,
    check=_check,
)
