"""FedAdagrad (Reddi et al. 2021): a server-side Adagrad step on FedAvg's average.

Flower's FedAdagrad over fedsim's streaming FedAvg sum (see `server_opt`); its options
and defaults are Flower's (`--server-lr` is Flower's `eta`).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from flwr.app import ArrayRecord, Message, MetricRecord
from flwr.serverapp.strategy import FedAdagrad

from fedsim.server.strategies import server_opt
from fedsim.server.strategies.fedavg import FedsimFedAvg
from fedsim.server.strategies.registry import StrategyInfo


class FedsimFedAdagrad(FedAdagrad, FedsimFedAvg):
    """Flower's FedAdagrad whose FedAvg is FedsimFedAvg (its `super()` in the MRO)."""

    def __init__(self, *, server_lr: float = 0.1, tau: float = 1e-3,
                 **common: Any) -> None:
        FedsimFedAvg.__init__(self, **common)
        server_opt.fedopt_state(self, eta=server_lr, beta_1=0.0, beta_2=0.0, tau=tau)

    def aggregate_train(self, server_round: int, replies: Iterable[Message]
                        ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """FedsimFedAvg's average, then Flower's step (in the model's dtypes)."""
        arrays, metrics = super().aggregate_train(server_round, replies)
        return server_opt.cast_like(arrays, self._global), metrics


STRATEGY = StrategyInfo(
    name="fedadagrad",
    help="FedAdagrad (Reddi et al. 2021): a server-side Adagrad step on FedAvg's "
         "average (Flower's FedAdagrad).",
    build=FedsimFedAdagrad,
    options=(server_opt.server_lr("fedadagrad", 0.1), server_opt.tau("fedadagrad")),
    refuses_he=server_opt.REFUSES_HE,
    check=server_opt.check,
)
