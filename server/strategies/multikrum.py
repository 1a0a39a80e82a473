"""Multi-Krum (El Mhamdi et al. 2018): the weighted mean of the m best Krum scores."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from fedsim.options import Option
from fedsim.server.robust import krum_minimum, multi_krum
from fedsim.server.strategies.krum import byzantine_option, check_byzantine, clients_per_round
from fedsim.server.strategies.registry import StrategyInfo
from fedsim.server.strategies.robust_base import REFUSES_HE, ByzantineFedAvg


class FedsimMultiKrum(ByzantineFedAvg):
    """Average the `keep` updates with the lowest Krum scores (0: n - f of them)."""

    rule = "Multi-Krum"

    def __init__(self, *, keep: int = 0, **common: Any) -> None:
        super().__init__(**common)
        self.keep = keep

    def needs(self) -> int:
        """More than 2f + 2 updates, and at least `keep`."""
        return max(krum_minimum(self.byzantine), self.keep)

    def combine(self, updates: list[list[np.ndarray]], weights: list[float]
                ) -> list[np.ndarray]:
        """The example-weighted mean of the kept updates."""
        keep = self.keep or len(updates) - self.byzantine
        return multi_krum(updates, weights, byzantine=self.byzantine, keep=keep)


def _check(cfg: Mapping[str, Any], options: Mapping[str, Any]) -> list[str]:
    problems = check_byzantine(cfg, options)
    keep, per_round = options["keep"], clients_per_round(cfg)
    if keep < 0:
        problems.append(f"--keep must be >= 0, got {keep}")
    elif per_round is not None and keep > per_round:
        problems.append(f"--keep {keep} is more than the {per_round} clients per round")
    return problems


STRATEGY = StrategyInfo(
    name="multikrum",
    help="Multi-Krum (El Mhamdi et al. 2018): the example-weighted mean of the --keep "
         "updates with the lowest Krum scores; tolerates f Byzantine clients.",
    build=FedsimMultiKrum,
    options=(byzantine_option("multikrum"),
             Option(name="keep", kind=int, default=0, owner="multikrum",
                    help="How many lowest-score updates are averaged (0: n - f).")),
    refuses_he=REFUSES_HE,
    check=_check,
)
