"""FedAvgM (Hsu et al. 2019): FedAvg plus server momentum, Flower's class on fedsim's sum.

The server keeps a momentum of the pseudo-gradient (global - average) and steps
the global along it. `--momentum` defaults to 0.9, the paper's main setting, not
Flower's 0.0 (which with `--server-lr 1` is plain FedAvg).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from flwr.app import ArrayRecord, Message, MetricRecord
from flwr.serverapp.strategy import FedAvgM

from fedsim.options import Option
from fedsim.server.strategies import server_opt
from fedsim.server.strategies.fedavg import FedsimFedAvg
from fedsim.server.strategies.registry import StrategyInfo


class FedsimFedAvgM(FedAvgM, FedsimFedAvg):
    """Flower's FedAvgM whose FedAvg is FedsimFedAvg (its `super()` in the MRO)."""

    def __init__(self, *, server_lr: float = 1.0, momentum: float = 0.9,
                 **common: Any) -> None:
        FedsimFedAvg.__init__(self, **common)
        # FedAvgM.__init__ takes Flower's FedAvg arguments; its own state, as it sets it:
        self.server_learning_rate = server_lr
        self.server_momentum = momentum
        self.server_opt = momentum != 0.0 or server_lr != 1.0
        self.current_arrays = None
        self.momentum_vector = None
        server_opt.warn_on_resume(self)

    def aggregate_train(self, server_round: int, replies: Iterable[Message]
                        ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """FedsimFedAvg's average, then Flower's momentum step (in the model's dtypes)."""
        arrays, metrics = super().aggregate_train(server_round, replies)
        arrays = server_opt.cast_like(arrays, self._global)
        if arrays is not None and self.server_opt:
            self.current_arrays = arrays
        return arrays, metrics


STRATEGY = StrategyInfo(
    name="fedavgm",
    help="FedAvgM (Hsu et al. 2019): FedAvg's average, then a server step with "
         "momentum on the pseudo-gradient (Flower's FedAvgM).",
    build=FedsimFedAvgM,
    options=(server_opt.server_lr("fedavgm", 1.0),
             Option(name="momentum", kind=float, default=0.9, owner="fedavgm",
                    help="Server momentum, in [0, 1) (0 with --server-lr 1: FedAvg).",
                    **server_opt.DECAY)),
    refuses_he=server_opt.REFUSES_HE,
)
