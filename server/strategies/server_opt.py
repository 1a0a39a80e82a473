"""What the server-side optimizers (FedAvgM, FedAdam, FedYogi, FedAdagrad) share.

Each is Flower's class of that name over `FedsimFedAvg`: Flower's `aggregate_train`
calls `super().aggregate_train`, which in the combined class is fedsim's streaming,
checked FedAvg sum, and then applies its server step to that average. So they stay
sum-based; but the server must read the average to step on it, which
--secure-agg he hides from it. Under DP they are post-processing of the clients'
private updates: the privacy ledger counts exactly as under FedAvg.

Their state (momentum, moments) lives in memory: a resumed run starts it afresh.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable
from typing import Any

import numpy as np
from flwr.app import Array, ArrayRecord, Message, MetricRecord

from fedsim.options import Option
from fedsim.server.strategies.fedavg import FedsimFedAvg
from fedsim.server.strategies.registry import StrategyInfo

log = logging.getLogger("fedsim.server")

REFUSES_HE = ("the server applies its optimizer step to the averaged update, which "
              "--secure-agg he hides from the server")


def _finite_positive(value: float) -> bool:
    return math.isfinite(value) and value > 0


DECAY = {"valid": lambda value: 0 <= value < 1, "valid_text": "in [0, 1)"}  # momenta


def server_lr(owner: str, default: float) -> Option:
    """The server's learning rate (Flower: `server_learning_rate` or `eta`)."""
    return Option(name="server_lr", kind=float, default=default, owner=owner,
                  help="Server-side learning rate of the optimizer step on the average.",
                  valid=_finite_positive, valid_text="a finite number > 0")


def betas_and_tau(owner: str) -> tuple[Option, ...]:
    """FedAdam's and FedYogi's beta_1, beta_2 and tau, at Flower's defaults."""
    return (
        Option(name="beta_1", kind=float, default=0.9, owner=owner,
               help="First-moment (momentum) decay, in [0, 1).", **DECAY),
        Option(name="beta_2", kind=float, default=0.99, owner=owner,
               help="Second-moment decay, in [0, 1).", **DECAY),
        tau(owner),
    )


def tau(owner: str) -> Option:
    """The adaptivity constant added to the root of the second moment."""
    return Option(name="tau", kind=float, default=1e-3, owner=owner,
                  help="Adaptivity: added to the root of the second moment (> 0).",
                  valid=_finite_positive, valid_text="a finite number > 0")


def cast_like(arrays: ArrayRecord | None, like: ArrayRecord | None) -> ArrayRecord | None:
    """`arrays` in `like`'s dtypes (Flower's steps come back in float64)."""
    if arrays is None or like is None:
        return arrays
    return ArrayRecord({k: Array(np.ascontiguousarray(
        arrays[k].numpy().astype(like[k].numpy().dtype))) for k in like.keys()})


def fedopt_state(strategy: Any, *, eta: float, beta_1: float, beta_2: float,
                 tau: float) -> None:
    """The state Flower's `FedOpt.__init__` sets (whose FedAvg arguments are not ours)."""
    strategy.current_arrays = None
    strategy.eta, strategy.tau = eta, tau
    strategy.eta_l = float("nan")  # the clients' --lr; Flower's step does not use it
    strategy.beta_1, strategy.beta_2 = beta_1, beta_2
    strategy.m_t = strategy.v_t = None
    warn_on_resume(strategy)


def warn_on_resume(strategy: Any) -> None:
    """A resumed run's server optimizer starts with no momentum or moments: say so."""
    if strategy.round_offset:
        log.warning("resumed after round %d: the server optimizer's state (momentum, "
                    "moments) is not checkpointed and starts afresh", strategy.round_offset)


class CastBack:
    """A mixin put first in a class over FedsimFedAvg.

    Its average, then the Flower step that follows it in the MRO, in the model's dtypes.
    """

    def aggregate_train(self, server_round: int, replies: Iterable[Message]
                        ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """The optimizer's step on FedsimFedAvg's average, in the model's dtypes."""
        arrays, metrics = super().aggregate_train(server_round, replies)
        return cast_like(arrays, self._global), metrics


def fedopt(flower: type, *, module: str, name: str, help: str,
           options: tuple[Option, ...]) -> StrategyInfo:
    """The STRATEGY of one of Flower's FedOpt family over FedsimFedAvg.

    FedAdam, FedYogi, FedAdagrad: the options are `server_lr`, `tau` and, where it
    has them, `beta_1` and `beta_2` (Adagrad's are 0: no momentum, a running sum).
    """
    def __init__(self, **given: Any) -> None:
        own = {o.name: given.pop(o.name, o.default) for o in options}
        FedsimFedAvg.__init__(self, **given)
        fedopt_state(self, eta=own["server_lr"], beta_1=own.get("beta_1", 0.0),
                     beta_2=own.get("beta_2", 0.0), tau=own["tau"])

    doc = f"Flower's {flower.__name__} whose FedAvg is FedsimFedAvg (its `super()`)."
    cls = type(f"Fedsim{flower.__name__}", (CastBack, flower, FedsimFedAvg),
               {"__init__": __init__, "__doc__": doc, "__module__": module})
    return StrategyInfo(name=name, help=help, build=cls, options=options,
                        refuses_he=REFUSES_HE)
