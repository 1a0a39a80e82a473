"""How updates travel: one aggregation path, two payload codecs.

A codec turns a checked reply into a weighted contribution for the `Accumulator`
and turns the accumulated sum into the next global state. The plaintext codec
averages on the server; the HE codec (`server/he_codec.py`) adds ciphertexts and
leaves the division to the clients, who alone can decrypt.
"""

from __future__ import annotations

from typing import Protocol

import numpy as np
from flwr.app import Array, ArrayRecord, Message

from fedsim import protocol
from fedsim.server.aggregate import (
    Accumulator,
    FixedPointAccumulator,
    FixedPointOverflow,
    fixed_average,
    to_fixed,
    weighted,
)
from fedsim.server.replies import check_train_reply


class Rejected(Exception):
    """A reply's payload cannot enter the sum; carries the reason."""


__all__ = ["Codec", "PlainCodec", "Rejected", "FixedPointOverflow"]


class Codec(Protocol):
    """What the FedAvg strategy needs from a payload format."""

    name: str
    readable: bool  # can the server read the global model (central evaluation)?

    def accumulator(self) -> Accumulator:
        """A fresh running sum for one round."""

    def start_round(self, server_round: int, global_arrays: ArrayRecord) -> None:
        """Called as a round sends out `global_arrays` (the HE codec binds to it)."""

    def contribution(self, msg: Message, global_arrays: ArrayRecord, weight: float) -> list:
        """The reply's weighted contribution, or raise Rejected."""

    def finish(self, acc: Accumulator, global_arrays: ArrayRecord) -> ArrayRecord:
        """The next global state from the accumulated sum."""


def checked_update(msg: Message, global_arrays: ArrayRecord) -> tuple[int, list[np.ndarray]]:
    """(client id, arrays) of a plaintext reply, its layout and values checked."""
    verdict = check_train_reply(msg, global_arrays)
    if not verdict.ok:
        raise Rejected(verdict.reason)
    arrays = msg.content[protocol.ARRAYS]
    return verdict.client_id, [arrays[k].numpy() for k in global_arrays.keys()]


class PlainCodec:
    """Plaintext FedAvg: the server sees each update and averages them.

    Contributions are summed in int64 fixed point, so the average does not depend on
    the order replies arrive in (see `aggregate.to_fixed`).
    """

    name = "plaintext"
    readable = True

    def accumulator(self) -> Accumulator:
        """A fixed-point running sum."""
        return FixedPointAccumulator()

    def start_round(self, server_round: int, global_arrays: ArrayRecord) -> None:
        """Nothing to bind in plaintext."""

    def contribution(self, msg: Message, global_arrays: ArrayRecord, weight: float) -> list:
        """Check the layout and finiteness, then scale by the weight."""
        return to_fixed(weighted(checked_update(msg, global_arrays)[1], weight))

    def finish(self, acc: Accumulator, global_arrays: ArrayRecord) -> ArrayRecord:
        """Divide by the total weight, keeping each layer's dtype."""
        keys = list(global_arrays.keys())
        dtypes = [global_arrays[k].numpy().dtype for k in keys]
        averaged = fixed_average(acc, dtypes)
        return ArrayRecord(
            {k: Array(np.ascontiguousarray(v)) for k, v in zip(keys, averaged, strict=True)}
        )
