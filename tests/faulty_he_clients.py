"""An HE ClientApp whose clients misbehave on purpose (one fault each)."""

import numpy as np
from flwr.app import Array, ConfigRecord, Message, MetricRecord, RecordDict

from fedsim import protocol
from fedsim.client import app as real
from tests.client_apps import client_app


def _ciphertext_keys(arrays):
    return sorted(k for k in arrays.keys() if k.startswith(protocol.HE_PREFIX))


def train(msg, context):
    """0: wrong key fingerprint, 1: truncated, 2: garbage, 3: a vector missing,
    4: no weight; the others are honest."""
    cid = real.client_id(context)
    reply = real.train(msg, context)
    content = reply.content
    arrays = content[protocol.ARRAYS]
    keys = _ciphertext_keys(arrays)
    if cid == 0:
        content[protocol.HE_CONFIG] = ConfigRecord({protocol.HE_FINGERPRINT: "0" * 64})
    elif cid == 1:
        blob = arrays[keys[0]].numpy()
        arrays[keys[0]] = Array(np.ascontiguousarray(blob[: len(blob) // 2]))
    elif cid == 2:
        blob = arrays[keys[0]].numpy()
        arrays[keys[0]] = Array(np.random.default_rng(0).integers(0, 255, len(blob),
                                                                  dtype=np.uint8))
    elif cid == 3:
        del arrays[keys[-1]]
    elif cid == 4:
        metrics = dict(content[protocol.METRICS])
        metrics.pop(protocol.NUM_EXAMPLES)
        content[protocol.METRICS] = MetricRecord(metrics)
    return Message(RecordDict(dict(content)), reply_to=msg)


app = client_app(train=train)
