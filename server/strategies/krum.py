"""Krum (Blanchard et al. 2017): the one update closest to its n - f - 2 neighbours."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from fedsim.options import Option
from fedsim.server.robust import krum_minimum, multi_krum
from fedsim.server.strategies.registry import StrategyInfo
from fedsim.server.strategies.robust_base import REFUSES_HE, RobustFedAvg


class FedsimKrum(RobustFedAvg):
    """The next global is the update with the lowest Krum score (f Byzantine clients)."""

    rule = "Krum"

    def __init__(self, *, byzantine: int = 0, **common: Any) -> None:
        super().__init__(**common)
        self.byzantine = byzantine

    def needs(self) -> int:
        """More than 2f + 2 updates."""
        return krum_minimum(self.byzantine)

    def combine(self, updates: list[list[np.ndarray]], weights: list[float]
                ) -> list[np.ndarray]:
        """The single Krum-selected update."""
        return multi_krum(updates, weights, byzantine=self.byzantine, keep=1)


def byzantine_option(owner: str) -> Option:
    """f, the Byzantine clients a round may hold (Flower's num_malicious_nodes)."""
    return Option(name="byzantine", kind=int, default=0, owner=owner,
                  help="f: how many of a round's clients may be Byzantine; a round "
                       "needs more than 2f + 2 updates.")


def check_byzantine(cfg: Mapping[str, Any], options: Mapping[str, Any]) -> list[str]:
    """The byzantine count is >= 0 and the clients sampled per round are enough."""
    f = options["byzantine"]
    if f < 0:
        return [f"--byzantine must be >= 0, got {f}"]
    clients, fraction = cfg.get("clients"), cfg.get("fraction")
    if not (isinstance(clients, int) and isinstance(fraction, int | float)):
        return []  # reported by the run config's own checks
    per_round = max(1, int(round(fraction * clients)))
    if per_round < krum_minimum(f):
        return [f"--strategy {cfg['strategy']} with --byzantine {f} needs at least "
                f"{krum_minimum(f)} clients per round (n > 2f + 2); this run samples "
                f"{per_round}"]
    return []


STRATEGY = StrategyInfo(
    name="krum",
    help="Krum (Blanchard et al. 2017): the next global is the one update whose "
         "n - f - 2 nearest updates are closest to it; tolerates f Byzantine clients.",
    build=FedsimKrum,
    options=(byzantine_option("krum"),),
    refuses_he=REFUSES_HE,
    check=check_byzantine,
)
