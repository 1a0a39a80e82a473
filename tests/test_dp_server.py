"""The server's side of DP: participation cap, budget refusal, a record per reply.

DPFedAvg is driven directly with the replies a client would send (no Ray): each
case is a message the server can receive, and the ledger must say what it did.
"""

from __future__ import annotations

import numpy as np
import pytest
from flwr.app import (
    Array,
    ArrayRecord,
    ConfigRecord,
    Error,
    Message,
    MessageType,
    MetricRecord,
    RecordDict,
)

from fedsim import protocol
from fedsim.privacy.accounting import epsilon
from fedsim.privacy.ledger import PrivacyLedger
from fedsim.server.federation import Federation
from fedsim.server.strategies.dp_fedavg import DPFedAvg


def strategy(tmp_path, *, clients=3, **options) -> DPFedAvg:
    federation = Federation(nodes={c: 100 + c for c in range(clients)}, seed=1)
    settings = {"accountant": "rdp", "delta": None, "budget": None, **options}
    return DPFedAvg(ledger=PrivacyLedger(tmp_path / "ledger.jsonl"),
                    federation=federation, fraction=1.0, fraction_evaluate=1.0,
                    **settings)


def test_no_client_is_sampled_past_the_participation_cap(tmp_path):
    dp = strategy(tmp_path, clients=4, max_participations=2)
    counts = dict.fromkeys(range(4), 0)
    for server_round in range(1, 7):
        ids = dp.federation.sample(server_round, 0.75, stream=0,
                                   eligible=dp.eligible_clients(server_round))
        for cid in ids:
            dp.train_config_for(cid, ConfigRecord({}))
            counts[cid] += 1
    assert counts == dict.fromkeys(range(4), 2)  # 8 slots, then nobody is eligible
    assert dp.eligible_clients(7) == []


# ---------------------------------------------------------------- replies
STEP = (1.0, 1.0, 1)
GLOBAL = ArrayRecord({"w": Array(np.zeros(4, dtype=np.float32))})


@pytest.fixture(autouse=True)
def task_identity():
    from flwr.supercore.task_identity import TaskIdentity

    TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 1, 1, 1
    yield
    TaskIdentity.run_id = TaskIdentity.node_id = TaskIdentity.task_id = None


def eps(releases: int) -> float:
    return epsilon([STEP] * releases, delta=1e-5, accountant="rdp")


def reply(dp: DPFedAvg, cid: int, *, value: float = 1.0, step=STEP, release: int = 7,
          arrays: bool = True, exhausted: bool = False, server_round: int = 1,
          error: bool = False) -> Message:
    sent = Message(RecordDict({protocol.CONFIG: ConfigRecord({})}),
                   dst_node_id=dp.federation.nodes[cid], message_type=MessageType.TRAIN)
    if error:
        return Message(Error(code=1, reason="boom"), reply_to=sent)
    metrics = {protocol.CLIENT_ID: cid, protocol.NUM_EXAMPLES: 10, protocol.DP_DELTA: 1e-5}
    if exhausted:
        metrics[protocol.DP_EXHAUSTED] = 1
    elif step is not None:
        metrics.update({protocol.DP_NOISE: step[0], protocol.DP_SAMPLE_RATE: step[1],
                        protocol.DP_STEPS: step[2], protocol.DP_RELEASE: release,
                        protocol.DP_ROUND: server_round, protocol.DP_EXHAUSTED: 0})
    content = RecordDict({protocol.METRICS: MetricRecord(metrics)})
    if arrays and not exhausted:
        content[protocol.ARRAYS] = ArrayRecord(
            {"w": Array(np.full(4, value, dtype=np.float32))})
    return Message(content, reply_to=sent)


def run_round(dp: DPFedAvg, server_round: int, replies: list[Message]):
    dp._global = GLOBAL
    dp.stats.clients_sampled = len(replies)
    dp.stats.round = server_round
    return dp.aggregate_train(server_round, replies)


def outcomes(dp: DPFedAvg) -> list[tuple[int, int, str, bool, int]]:
    return [(r.round, r.client_id, r.outcome, r.released, r.steps)
            for r in dp.ledger.records()]


def test_server_refuses_an_update_over_budget_by_its_own_count(tmp_path):
    dp = strategy(tmp_path, clients=2, budget=(eps(1) + eps(2)) / 2, delta=1e-5)
    run_round(dp, 1, [reply(dp, 0, release=1), reply(dp, 1, release=2)])
    # Client 0 trains again regardless of its budget (a broken or lying client).
    arrays, _ = run_round(dp, 2, [reply(dp, 0, value=5.0, release=3),
                                  reply(dp, 1, exhausted=True)])
    assert arrays is None  # nothing usable entered round 2's sum
    records = dp.ledger.records()
    refused = records[2]
    assert (refused.round, refused.client_id, refused.outcome) == (2, 0, "refused")
    assert refused.released and refused.epsilon == pytest.approx(eps(2))  # it counts
    assert "pass --epsilon-budget" in refused.reason
    assert records[3].outcome == "exhausted" and not records[3].released
    assert dp.eligible_clients(3) == [] and dp.eligible_evaluators(3) == []


def test_every_reply_received_gets_a_record_saying_if_it_was_used(tmp_path):
    dp = strategy(tmp_path, clients=5, delta=1e-5)
    nan = reply(dp, 1, release=11)
    nan.content[protocol.ARRAYS]["w"] = Array(np.full(4, np.nan, dtype=np.float32))
    arrays, _ = run_round(dp, 1, [reply(dp, 0, value=2.0, release=10), nan,
                                  reply(dp, 2, step=None), reply(dp, 3, exhausted=True),
                                  reply(dp, 4, error=True)])
    assert arrays["w"].numpy().tolist() == [2.0] * 4  # only client 0's update is used
    assert outcomes(dp) == [(1, 0, "aggregated", True, 1), (1, 1, "rejected", True, 1),
                            (1, 2, "rejected", True, 0), (1, 3, "exhausted", False, 0)]
    records = dp.ledger.records()
    assert records[1].epsilon == pytest.approx(eps(1))  # released: spent all the same
    assert "NaN" in records[1].reason
    assert [r.release for r in records[:2]] == [10, 11]
    assert dp.histories[1] == [(1, 11, *STEP)]  # and sent back to client 1 next time


class LateGrid:
    def __init__(self, replies):
        self.replies = replies

    def late_replies(self):
        out, self.replies = self.replies, []
        return out


def test_a_late_reply_is_recorded_and_counted_before_the_next_sampling(tmp_path):
    dp = strategy(tmp_path, clients=2, delta=1e-5)
    run_round(dp, 1, [reply(dp, 0, release=1)])
    dp._grid = LateGrid([reply(dp, 1, release=2, server_round=1)])
    dp.take_late_replies()
    late = dp.ledger.records()[-1]
    assert (late.round, late.client_id, late.outcome, late.released) == (1, 1, "late", True)
    assert late.epsilon == pytest.approx(eps(1))
    assert dp.histories[1] == [(1, 2, *STEP)]
