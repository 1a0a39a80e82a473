"""Krum (Blanchard et al. 2017): the one update closest to its n - f - 2 neighbours."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from fedsim.options import Option
from fedsim.server.robust import krum_minimum, multi_krum
from fedsim.server.strategies.registry import StrategyInfo
from fedsim.server.strategies.robust_base import REFUSES_HE, ByzantineFedAvg


class FedsimKrum(ByzantineFedAvg):
    """The next global is the update with the lowest Krum score (f Byzantine clients)."""

    rule = "Krum"

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


def clients_per_round(cfg: Mapping[str, Any]) -> int | None:
    """As RunConfig.clients_per_round, on raw values (None: they are not numbers yet)."""
    clients, fraction = cfg.get("clients"), cfg.get("fraction")
    if not (isinstance(clients, int) and isinstance(fraction, int | float)):
        return None  # reported by the run config's own checks
    return max(1, int(round(fraction * clients)))


def check_byzantine(cfg: Mapping[str, Any], options: Mapping[str, Any], *,
                    minimum=krum_minimum, rule: str = "n > 2f + 2") -> list[str]:
    """The byzantine count is >= 0 and the clients sampled per round are enough."""
    f = options["byzantine"]
    if f < 0:
        return [f"--byzantine must be >= 0, got {f}"]
    per_round = clients_per_round(cfg)
    if per_round is not None and per_round < minimum(f):
        return [f"--strategy {cfg['strategy']} with --byzantine {f} needs at least "
                f"{minimum(f)} clients per round ({rule}); this run samples "
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
