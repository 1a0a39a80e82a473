"""FedYogi (Reddi et al. 2021): a server-side Yogi step on FedAvg's average.

Yogi is Adam with an additive, sign-controlled second-moment update.

Flower's FedYogi over fedsim's streaming FedAvg sum (see `server_opt`); its options
and defaults are Flower's (`--server-lr` is Flower's `eta`).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from flwr.app import ArrayRecord, Message, MetricRecord
from flwr.serverapp.strategy import FedYogi

from fedsim.server.strategies import server_opt
from fedsim.server.strategies.fedavg import FedsimFedAvg
from fedsim.server.strategies.registry import StrategyInfo


class FedsimFedYogi(FedYogi, FedsimFedAvg):
    """Flower's FedYogi whose FedAvg is FedsimFedAvg (its `super()` in the MRO)."""

    def __init__(self, *, server_lr: float = 0.01, beta_1: float = 0.9,
                 beta_2: float = 0.99, tau: float = 1e-3, **common: Any) -> None:
        FedsimFedAvg.__init__(self, **common)
        server_opt.fedopt_state(self, eta=server_lr, beta_1=beta_1, beta_2=beta_2, tau=tau)

    def aggregate_train(self, server_round: int, replies: Iterable[Message]
                        ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """FedsimFedAvg's average, then Flower's step (in the model's dtypes)."""
        arrays, metrics = super().aggregate_train(server_round, replies)
        return server_opt.cast_like(arrays, self._global), metrics


STRATEGY = StrategyInfo(
    name="fedyogi",
    help="FedYogi (Reddi et al. 2021): a server-side Yogi step on FedAvg's average "
         "(Flower's FedYogi).",
    build=FedsimFedYogi,
    options=(server_opt.server_lr("fedyogi", 0.01), *server_opt.betas_and_tau("fedyogi")),
    refuses_he=server_opt.REFUSES_HE,
    check=server_opt.check,
)
