"""What the robust aggregators (median, trimmed mean, Krum, ...) share: every update.

FedAvg needs only the sum of the updates; these rules need each client's own
update, so `UpdatesCodec` keeps the round's checked plaintext updates instead of
adding them, and the strategy's `combine` (pure numpy, `server.robust`) makes the
next global from them. Replies go through FedsimFedAvg's checks and hooks as under
FedAvg (and DP's ledger with them: choosing among private updates is
post-processing). The round holds one copy of the model per update.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import numpy as np
from flwr.app import Array, ArrayRecord, Message

from fedsim.errors import ConfigError
from fedsim.server.aggregate import Accumulator
from fedsim.server.codecs import PlainCodec, checked_update
from fedsim.server.strategies.fedavg import FedsimFedAvg

log = logging.getLogger("fedsim.server")

REFUSES_HE = "it needs each client's update, which --secure-agg he hides from the server"


class UpdateList(Accumulator):
    """The round's updates and weights, one entry per admitted reply."""

    def __init__(self) -> None:
        super().__init__()
        self.updates: list[tuple[int, list[np.ndarray], float]] = []

    def add(self, contribution: Sequence[Any], weight: float) -> None:
        """Keep one (client id, update) with its weight."""
        client_id, update = contribution
        self.updates.append((client_id, update, float(weight)))
        self.weight += float(weight)
        self.count += 1

    def ordered(self) -> tuple[list[list[np.ndarray]], list[float]]:
        """Updates and weights by client id: the result does not depend on arrival."""
        entries = sorted(self.updates, key=lambda e: e[0])
        return [e[1] for e in entries], [e[2] for e in entries]


class UpdatesCodec(PlainCodec):
    """Plaintext updates kept whole for a rule over all of them (`combine`)."""

    def __init__(self, combine) -> None:
        self.combine = combine

    def accumulator(self) -> UpdateList:
        """A fresh list for one round."""
        return UpdateList()

    def contribution(self, msg: Message, global_arrays: ArrayRecord, weight: float) -> list:
        """(client id, update): checked as FedAvg's plaintext payloads are."""
        client_id, update = checked_update(msg, global_arrays)
        return [client_id, [a.copy() for a in update]]

    def finish(self, acc: UpdateList, global_arrays: ArrayRecord) -> ArrayRecord:
        """The rule's result, in the global model's layers and dtypes."""
        updates, weights = acc.ordered()
        combined = self.combine(updates, weights)
        return ArrayRecord({k: Array(np.ascontiguousarray(v.astype(ref.numpy().dtype)))
                            for (k, ref), v in zip(global_arrays.items(), combined,
                                                   strict=True)})


class RobustFedAvg(FedsimFedAvg):
    """FedsimFedAvg whose aggregate is a rule over every update (`combine`)."""

    rule = "this rule"

    def __init__(self, *, codec=None, **common: Any) -> None:
        if codec is not None and not isinstance(codec, PlainCodec):
            raise ConfigError(f"{type(self).__name__}: {REFUSES_HE}")
        super().__init__(codec=UpdatesCodec(self.combine), **common)

    def combine(self, updates: list[list[np.ndarray]], weights: list[float]
                ) -> list[np.ndarray]:
        """The next global from the round's updates (ordered by client id)."""
        raise NotImplementedError

    def needs(self) -> int:
        """The fewest updates `combine` is meant for."""
        return 1

    def _finish_round(self, server_round: int, acc, losses: list[float]):
        if self.stop_reason is None and self.stats.clients_sampled \
                and 0 < acc.count < self.needs():
            self._stop(f"round {server_round}: only {acc.count} usable update(s); "
                       f"{self.rule} needs at least {self.needs()}; the run stops with "
                       f"the model of round {server_round - 1}")
            return None, None
        return super()._finish_round(server_round, acc, losses)


class ByzantineFedAvg(RobustFedAvg):
    """A robust rule built to tolerate f Byzantine clients a round (`--byzantine`)."""

    def __init__(self, *, byzantine: int = 0, **common: Any) -> None:
        super().__init__(**common)
        self.byzantine = byzantine
