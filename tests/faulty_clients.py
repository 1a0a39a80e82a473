"""ClientApps that misbehave on purpose, for tests of the server's defences."""

import numpy as np
from flwr.app import Array, Message, MetricRecord, RecordDict

from fedsim import protocol
from fedsim.client import app as real
from tests.client_apps import client_app


def train(msg, context):
    """Client 0 sends NaNs, client 1 a wrong shape, client 2 no weight, client 3 raises."""
    cid = real.client_id(context)
    reply = real.train(msg, context)
    arrays = reply.content[protocol.ARRAYS]
    metrics = reply.content[protocol.METRICS]
    if cid == 0:
        key = next(iter(arrays.keys()))
        bad = arrays[key].numpy().copy()
        bad.flat[0] = np.nan
        arrays[key] = Array(bad)
    elif cid == 1:
        key = next(iter(arrays.keys()))
        arrays[key] = Array(np.zeros(3, dtype=np.float32))
    elif cid == 2:
        metrics = MetricRecord({protocol.CLIENT_ID: cid})
    elif cid == 3:
        raise RuntimeError("simulated client crash")
    return Message(RecordDict({protocol.ARRAYS: arrays, protocol.METRICS: metrics}),
                   reply_to=msg)


app = client_app(train=train)
