"""Drive a registered strategy through rounds with hand-made replies (no Ray)."""

from __future__ import annotations

import numpy as np
import pytest
from flwr.app import (
    Array,
    ArrayRecord,
    ConfigRecord,
    Message,
    MessageType,
    MetricRecord,
    RecordDict,
)

from fedsim import protocol
from fedsim.server.federation import Federation
from fedsim.server.strategies.registry import strategies


@pytest.fixture(autouse=True)
def task_identity():
    """Messages made outside a ServerApp need a task identity."""
    from flwr.supercore.task_identity import TaskIdentity

    TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 1, 1, 1
    yield
    TaskIdentity.run_id = TaskIdentity.node_id = TaskIdentity.task_id = None


def build(name: str, *, clients: int, dp=None, **options):
    """Strategy `name` over `clients` clients (nodes 100 + id); `dp`: with_dp's kwargs."""
    cls = strategies()[name].build
    common = {"federation": Federation(nodes={c: 100 + c for c in range(clients)}, seed=1),
              "fraction": 1.0, "fraction_evaluate": 1.0, **options}
    if dp is None:
        return cls(**common)
    from fedsim.server.strategies.dp_fedavg import with_dp

    return with_dp(cls)(**dp, **common)


def arrays(*layers: np.ndarray) -> ArrayRecord:
    """An ArrayRecord with layers 'w0', 'w1', ... in float32."""
    return ArrayRecord({f"w{i}": Array(np.asarray(a, dtype=np.float32))
                        for i, a in enumerate(layers)})


def reply(sent: Message, cid: int, update: ArrayRecord, *, examples: int = 10,
          metrics: dict | None = None) -> Message:
    """Client `cid`'s honest training reply to `sent`."""
    values = {protocol.CLIENT_ID: cid, protocol.NUM_EXAMPLES: examples, **(metrics or {})}
    content = RecordDict({protocol.METRICS: MetricRecord(values), protocol.ARRAYS: update})
    return Message(content, reply_to=sent)


def train_round(strategy, server_round: int, global_arrays: ArrayRecord,
                updates: dict[int, ArrayRecord], **reply_options):
    """configure_train, then the sampled clients' replies (`updates`) to aggregate_train."""
    sent = list(strategy.configure_train(server_round, global_arrays, ConfigRecord({}),
                                         None))
    assert sent and all(m.metadata.message_type == MessageType.TRAIN for m in sent)
    by_node = {m.metadata.dst_node_id: m for m in sent}
    replies = [reply(by_node[100 + cid], cid, update, **reply_options)
               for cid, update in updates.items()]
    return strategy.aggregate_train(server_round, replies)


def layers(record: ArrayRecord) -> list[np.ndarray]:
    """The record's arrays, in order."""
    return [record[k].numpy() for k in record.keys()]
