"""FedProx (Li et al. 2020): FedAvg whose clients keep close to the global model.

The server side is FedAvg's (the same streaming sum, so it works under
--secure-agg he and with DP); what changes is local training: each client adds the
proximal term mu/2 * ||w - w_global||^2 to its objective, with the `mu` this
strategy sends in the clients' settings (`proximal_mu`).

`--mu` defaults to 0.0, as Flower's `FedProx(proximal_mu=0.0)`: the right weight
depends on the data and model (the paper tunes it over {0.001, 0.01, 0.1, 1}), so
none is imposed, and a run with 0 (FedAvg's training) says so in the log.
"""

from __future__ import annotations

import logging
import math
from dataclasses import replace
from typing import Any

from fedsim.options import Option
from fedsim.server.strategies.fedavg import FedsimFedAvg
from fedsim.server.strategies.registry import StrategyInfo
from fedsim.settings import ClientSettings

log = logging.getLogger("fedsim.server")


class FedsimFedProx(FedsimFedAvg):
    """FedsimFedAvg that sends its clients FedProx's proximal weight `mu`."""

    def __init__(self, *, mu: float = 0.0, **common: Any) -> None:
        super().__init__(**common)
        self.mu = mu
        if mu == 0.0:
            log.warning("FedProx with --mu 0: the clients train as under FedAvg")

    def settings_for_clients(self, settings: ClientSettings) -> ClientSettings:
        """The settings, with `proximal_mu` set to this strategy's mu."""
        return replace(super().settings_for_clients(settings), proximal_mu=self.mu)


STRATEGY = StrategyInfo(
    name="fedprox",
    help="FedProx (Li et al. 2020): FedAvg's aggregation; clients add the proximal "
         "term mu/2*||w - w_global||^2 to their loss, which keeps heterogeneous "
         "clients near the global model. Works under --secure-agg he and --dp.",
    build=FedsimFedProx,
    options=(Option(name="mu", kind=float, default=0.0, owner="fedprox",
                    help="FedProx's proximal weight mu (0: FedAvg's local training; "
                         "the paper tries 0.001 to 1).",
                    valid=lambda mu: math.isfinite(mu) and mu >= 0,
                    valid_text="a finite number >= 0"),),
)
