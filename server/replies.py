"""Checks on what clients send back: a bad reply is rejected with a reason, never summed."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from flwr.app import ArrayRecord, Message, MetricRecord

from fedsim import protocol


@dataclass(frozen=True, kw_only=True)
class Verdict:
    """The outcome of checking one reply."""

    ok: bool
    kind: str = ""  # "failed" (the client errored) or "rejected" (bad content)
    reason: str = ""
    client_id: int | None = None


def _reject(reason: str, cid: int | None = None) -> Verdict:
    return Verdict(ok=False, kind="rejected", reason=reason, client_id=cid)


def _metrics(msg: Message) -> MetricRecord | None:
    try:
        record = msg.content.metric_records.get(protocol.METRICS)
    except Exception:  # noqa: BLE001 - any malformed content is a rejection
        return None
    return record


def check_metrics(msg: Message, *, need_weight: bool = True) -> Verdict:
    """A reply's MetricRecord must name its client and, if asked, a positive weight."""
    if msg.has_error():
        return Verdict(ok=False, kind="failed", reason=str(msg.error.reason))
    metrics = _metrics(msg)
    if metrics is None:
        return _reject("reply has no metrics record")
    cid = metrics.get(protocol.CLIENT_ID)
    if not isinstance(cid, int):
        return _reject("reply does not name its client id")
    if need_weight:
        weight = metrics.get(protocol.NUM_EXAMPLES)
        if not isinstance(weight, int | float) or not np.isfinite(weight) or weight <= 0:
            return _reject(f"missing or non-positive weight '{protocol.NUM_EXAMPLES}'", cid)
        if weight > protocol.MAX_EXAMPLES:  # one reply would fill the fixed-point sum
            return _reject(f"weight '{protocol.NUM_EXAMPLES}' {weight:.3g} is above "
                           f"{protocol.MAX_EXAMPLES:,}", cid)
    return Verdict(ok=True, client_id=cid)


def check_train_reply(msg: Message, reference: ArrayRecord) -> Verdict:
    """A training reply must carry finite arrays of the global model's exact layout."""
    verdict = check_metrics(msg)
    if not verdict.ok:
        return verdict
    cid = verdict.client_id
    arrays = msg.content.array_records.get(protocol.ARRAYS)
    if arrays is None:
        return _reject("reply has no model arrays", cid)
    if list(arrays.keys()) != list(reference.keys()):
        return _reject("model arrays do not match the global model's layers", cid)
    for key, ref in reference.items():
        try:
            value = arrays[key].numpy()
        except Exception as err:  # noqa: BLE001 - undecodable bytes
            return _reject(f"array '{key}' cannot be decoded ({err})", cid)
        if value.shape != tuple(ref.shape):
            return _reject(
                f"array '{key}' has shape {value.shape}, expected {tuple(ref.shape)}", cid
            )
        if str(value.dtype) != ref.dtype:  # a float64 1e308 would be inf as float32
            return _reject(f"array '{key}' is {value.dtype}, expected {ref.dtype}", cid)
        if not np.all(np.isfinite(value)):
            return _reject(f"array '{key}' holds NaN or infinite values", cid)
    return verdict
