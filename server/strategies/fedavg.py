"""FedAvg over the fedsim federation: seeded sampling, checked replies, fixed order.

Extends Flower's Message-API FedAvg through its hooks (configure/aggregate); the
round loop stays Flower's `Strategy.start`.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable
from dataclasses import asdict, dataclass

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Message, MessageType, MetricRecord, RecordDict
from flwr.serverapp import Grid
from flwr.serverapp.strategy import FedAvg

from fedsim import protocol
from fedsim.server.aggregate import Accumulator
from fedsim.server.codecs import Codec, PlainCodec, Rejected
from fedsim.server.federation import Federation
from fedsim.server.replies import Verdict, check_metrics

log = logging.getLogger("fedsim.server")


@dataclass
class RoundStats:
    """What happened in one round, filled in as the round goes."""

    round: int
    started: float
    clients_sampled: int = 0
    clients_replied: int = 0
    rejected: int = 0
    failed: int = 0
    bytes_sent: int = 0
    bytes_received: int = 0
    train_loss: float | None = None
    fed_loss: float | None = None
    fed_accuracy: float | None = None
    eval_clients: int = 0

    def to_dict(self) -> dict:
        """Plain values for metrics.jsonl (without the start timestamp)."""
        data = asdict(self)
        data.pop("started")
        return data


def reply_bytes(msg: Message) -> int:
    """Payload bytes of a reply's arrays (0 for an error reply)."""
    if msg.has_error():
        return 0
    return sum(rec.count_bytes() for rec in msg.content.array_records.values())


class FedsimFedAvg(FedAvg):
    """FedAvg that samples by client id with a seeded RNG and rejects bad replies."""

    def __init__(self, *, federation: Federation, fraction: float,
                 fraction_evaluate: float, codec: Codec | None = None) -> None:
        super().__init__(
            fraction_train=fraction,
            fraction_evaluate=fraction_evaluate,
            min_train_nodes=1,
            min_evaluate_nodes=1,
            min_available_nodes=1,
            weighted_by_key=protocol.NUM_EXAMPLES,
            arrayrecord_key=protocol.ARRAYS,
            configrecord_key=protocol.CONFIG,
        )
        self.federation = federation
        self.codec: Codec = codec or PlainCodec()
        self.stop_reason: str | None = None
        self.stats = RoundStats(round=0, started=time.monotonic())
        self._global: ArrayRecord | None = None

    # -- hooks subclasses and wrappers extend ---------------------------------
    def eligible_clients(self, server_round: int) -> list[int] | None:
        """Clients that may be sampled this round (None: all)."""
        return None

    def round_extras(self) -> dict:
        """Extra per-round metrics a subclass adds to metrics.jsonl."""
        return {}

    def _messages(self, record: RecordDict, client_ids: list[int], kind: str) -> list[Message]:
        nodes = [self.federation.nodes[c] for c in client_ids]
        return list(self._construct_messages(record, nodes, kind))

    def _note(self, verdict: Verdict, msg: Message, stage: str) -> None:
        who = verdict.client_id if verdict.client_id is not None else (
            f"node {msg.metadata.src_node_id}")
        if verdict.kind == "failed":
            self.stats.failed += 1
            log.warning("round %d %s: client %s failed: %s",
                        self.stats.round, stage, who, verdict.reason)
        else:
            self.stats.rejected += 1
            log.warning("round %d %s: rejected reply from client %s: %s",
                        self.stats.round, stage, who, verdict.reason)

    # -- training -------------------------------------------------------------
    def configure_train(self, server_round: int, arrays: ArrayRecord,
                        config: ConfigRecord, grid: Grid) -> Iterable[Message]:
        """Sample clients (seeded, by client id) and send them the global model."""
        self.stats = RoundStats(round=server_round, started=time.monotonic())
        self._global = arrays
        if self.stop_reason is not None:
            return []
        ids = self.federation.sample(
            server_round, self.fraction_train, stream=0,
            eligible=self.eligible_clients(server_round),
        )
        config[protocol.ROUND] = server_round
        record = RecordDict({protocol.ARRAYS: arrays, protocol.CONFIG: config})
        self.stats.clients_sampled = len(ids)
        self.stats.bytes_sent += arrays.count_bytes() * len(ids)
        return self._messages(record, ids, MessageType.TRAIN)

    def accept_train_replies(self, replies: Iterable[Message]) -> list[tuple[int, Message]]:
        """Check every reply's metrics; return the usable ones sorted by client id."""
        accepted: list[tuple[int, Message]] = []
        for msg in replies:
            self.stats.bytes_received += reply_bytes(msg)
            verdict = check_metrics(msg)
            if not verdict.ok:
                self._note(verdict, msg, "train")
                continue
            accepted.append((verdict.client_id, msg))
        accepted.sort(key=lambda item: item[0])
        return accepted

    def before_aggregation(self, server_round: int,
                           accepted: list[tuple[int, Message]]) -> list[tuple[int, Message]]:
        """Hook run on the checked replies before any enters the sum."""
        return accepted

    def aggregate_train(self, server_round: int, replies: Iterable[Message]
                        ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """Sum the accepted contributions in client-id order, then let the codec finish."""
        accepted = self.before_aggregation(server_round, self.accept_train_replies(replies))
        acc, loss_sum = Accumulator(), 0.0
        for cid, msg in accepted:
            metrics = msg.content[protocol.METRICS]
            weight = float(metrics[protocol.NUM_EXAMPLES])
            try:
                contribution = self.codec.contribution(msg, self._global, weight)
            except Rejected as err:
                self._note(Verdict(ok=False, kind="rejected", reason=str(err),
                                   client_id=cid), msg, "train")
                continue
            acc.add(contribution, weight)
            loss_sum += float(metrics.get(protocol.TRAIN_LOSS, 0.0)) * weight
        self.stats.clients_replied = acc.count
        if acc.count == 0:
            if self.stop_reason is None:
                log.warning("round %d: no usable update; the global model is unchanged",
                            server_round)
            return None, None
        self.stats.train_loss = loss_sum / acc.weight
        new = self.codec.finish(acc, self._global)
        return new, MetricRecord({protocol.TRAIN_LOSS: self.stats.train_loss})

    # -- federated evaluation -------------------------------------------------
    def configure_evaluate(self, server_round: int, arrays: ArrayRecord,
                           config: ConfigRecord, grid: Grid) -> Iterable[Message]:
        """Sample clients (an independent seeded stream) to evaluate the model."""
        if self.stop_reason is not None:
            return []
        ids = self.federation.sample(server_round, self.fraction_evaluate, stream=1)
        config[protocol.ROUND] = server_round
        record = RecordDict({protocol.ARRAYS: arrays, protocol.CONFIG: config})
        self.stats.bytes_sent += arrays.count_bytes() * len(ids)
        return self._messages(record, ids, MessageType.EVALUATE)

    def aggregate_evaluate(self, server_round: int, replies: Iterable[Message]
                           ) -> MetricRecord | None:
        """Example-weighted validation loss and accuracy over the replies."""
        total = loss = correct = 0.0
        for msg in replies:
            verdict = check_metrics(msg)
            if verdict.ok:
                metrics = msg.content[protocol.METRICS]
                values = [metrics.get(protocol.EVAL_LOSS), metrics.get(protocol.EVAL_ACC)]
                if not all(isinstance(v, int | float) and np.isfinite(v) for v in values):
                    verdict = Verdict(ok=False, kind="rejected", client_id=verdict.client_id,
                                      reason="evaluation reply lacks finite loss/accuracy")
            if not verdict.ok:
                self._note(verdict, msg, "evaluate")
                continue
            n = float(metrics[protocol.NUM_EXAMPLES])
            total += n
            loss += float(values[0]) * n
            correct += float(values[1]) * n
            self.stats.eval_clients += 1
        if total == 0:
            return None
        self.stats.fed_loss, self.stats.fed_accuracy = loss / total, correct / total
        return MetricRecord({protocol.EVAL_LOSS: self.stats.fed_loss,
                             protocol.EVAL_ACC: self.stats.fed_accuracy})
