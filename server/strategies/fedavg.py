"""FedAvg over the fedsim federation: seeded sampling, checked replies, streaming sums.

Extends Flower's Message-API FedAvg through its hooks (configure/aggregate); the
round loop stays Flower's `Strategy.start`. Replies are consumed one at a time as
they arrive (see `server.streaming`) and added to a running sum whose result does
not depend on arrival order, so memory stays flat and runs are reproducible.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Iterable
from dataclasses import asdict, dataclass

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Message, MessageType, MetricRecord, RecordDict
from flwr.serverapp import Grid
from flwr.serverapp.strategy import FedAvg

from fedsim import protocol
from fedsim.privacy.ledger import LedgerError
from fedsim.server.aggregate import FixedPointOverflow
from fedsim.server.codecs import Codec, PlainCodec, Rejected
from fedsim.server.federation import Federation
from fedsim.server.replies import Verdict, check_metrics
from fedsim.server.strategies.registry import StrategyInfo
from fedsim.settings import ClientSettings

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
    timed_out: int = 0
    policy_refused: int = 0
    bytes_sent: int = 0
    bytes_received: int = 0
    train_loss: float | None = None
    fed_loss: float | None = None
    fed_accuracy: float | None = None
    eval_clients: int = 0
    fed_examples: int = 0  # validation examples behind fed_accuracy

    def to_dict(self) -> dict:
        """Plain values for metrics.jsonl (without the start timestamp)."""
        data = asdict(self)
        data.pop("started")
        return data


def short_reason(reason: str, limit: int = 300) -> str:
    """One line for the log: the last meaningful line of a (traceback) reason."""
    lines = [ln.strip(" '<>\"") for ln in reason.splitlines()]
    lines = [ln for ln in lines if ln and not ln.startswith("^")]
    text = lines[-1] if lines else reason
    return " ".join(text.split())[:limit]


def reply_bytes(msg: Message) -> int:
    """Payload bytes of a reply's arrays (0 for an error reply)."""
    if msg.has_error():
        return 0
    return sum(rec.count_bytes() for rec in msg.content.array_records.values())


class FedsimFedAvg(FedAvg):
    """FedAvg that samples by client id with a seeded RNG and rejects bad replies."""

    def __init__(self, *, federation: Federation, fraction: float,
                 fraction_evaluate: float, codec: Codec | None = None,
                 min_clients: int = 1, round_offset: int = 0) -> None:
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
        self.min_clients = min_clients
        self.round_offset = round_offset  # rounds already done before a resume
        self.stop_reason: str | None = None
        self.stats = RoundStats(round=0, started=time.monotonic())
        self._global: ArrayRecord | None = None
        self._grid: Grid | None = None
        self.global_refused: dict[str, int] = {}  # this round's refusals, by stage
        self._replied: set[int] = set()

    def run_round(self, flower_round: int) -> int:
        """The run's number of Flower's round `flower_round`.

        Flower's loop counts from 1 in every session; a resumed run's first round is
        the one after its checkpoint. Every entry point from the loop translates here.
        """
        return flower_round + self.round_offset

    # -- hooks subclasses extend ------------------------------------------------
    def eligible_clients(self, server_round: int) -> list[int] | None:
        """Clients that may be sampled this round (None: all)."""
        return None

    def round_extras(self) -> dict:
        """Extra per-round metrics a subclass adds to metrics.jsonl."""
        return {}

    def train_config_for(self, client_id: int, config: ConfigRecord) -> ConfigRecord:
        """The config one client receives (a subclass may add per-client entries)."""
        return config

    def screen(self, server_round: int, client_id: int, msg: Message) -> bool:
        """Whether a reply with valid metrics may go on to the payload check and sum.

        DP refuses here (budget, missing accounting) and records what it refused.
        """
        return True

    def admit(self, server_round: int, client_id: int, msg: Message) -> None:
        """A reply entered this round's sum (DP makes its ledger record durable)."""

    def not_used(self, server_round: int, msg: Message, reason: str) -> None:
        """A training reply was rejected (bad metrics or payload): DP records it."""

    def on_late(self, msg: Message) -> None:
        """A reply to an earlier round's message arrived after that round closed."""
        log.info("late reply from client %s (after its round closed); not used",
                 self._client_of(msg))

    def settings_for_clients(self, settings: ClientSettings) -> ClientSettings:
        """The training settings every client receives (a strategy may set its own)."""
        return settings

    def eligible_evaluators(self, server_round: int) -> list[int] | None:
        """Clients that may be sampled to evaluate (None: all)."""
        return None

    def take_late_replies(self) -> None:
        """Hand every late reply the grid has pulled since to `on_late`."""
        late = getattr(self._grid, "late_replies", None)
        for msg in late() if late is not None else []:
            self.on_late(msg)

    # -- helpers ------------------------------------------------------------------
    def _messages(self, record: RecordDict, client_ids: list[int], kind: str) -> list[Message]:
        # one message per node, the same payload (Flower's private
        # `_construct_messages` does the same; fedsim does not rely on it)
        return [Message(content=record, message_type=kind,
                        dst_node_id=self.federation.nodes[c]) for c in client_ids]

    def _note(self, verdict: Verdict, msg: Message, stage: str) -> None:
        who = verdict.client_id if verdict.client_id is not None else self._client_of(msg)
        reason = short_reason(verdict.reason)
        if verdict.kind == "failed":
            self.stats.failed += 1
            if msg.has_error() and msg.error.code == protocol.POLICY_REFUSED:
                self.stats.policy_refused += 1
            if msg.has_error() and msg.error.code == protocol.GLOBAL_REFUSED:
                self.global_refused[stage] = self.global_refused.get(stage, 0) + 1
            log.warning("round %d %s: client %s failed: %s",
                        self.stats.round, stage, who, reason)
        else:
            self.stats.rejected += 1
            log.warning("round %d %s: rejected reply from client %s: %s",
                        self.stats.round, stage, who, reason)

    def _client_of(self, msg: Message) -> str:
        node = msg.metadata.src_node_id
        for cid, known in self.federation.nodes.items():
            if known == node:
                return str(cid)
        return f"node {node}"

    def _count_timeouts(self, stage: str) -> None:
        # fedsim's StreamingGrid counts the round's timeouts; Flower's own Grid does not
        missing = list(getattr(self._grid, "last_timeouts", []))
        if missing:
            self.stats.timed_out += len(missing)
            names = {n: c for c, n in self.federation.nodes.items()}
            log.warning("round %d %s: no reply within the round timeout from client(s) %s",
                        self.stats.round, stage, ", ".join(str(names.get(n, n)) for n in missing))

    def _stop(self, reason: str) -> None:
        if self.stop_reason is None:
            self.stop_reason = reason
            log.warning(reason)

    # -- training -------------------------------------------------------------
    def configure_train(self, server_round: int, arrays: ArrayRecord,
                        config: ConfigRecord, grid: Grid) -> Iterable[Message]:
        """Sample clients (seeded, by client id) and send them the global model."""
        server_round = self.run_round(server_round)
        self.stats = RoundStats(round=server_round, started=time.monotonic())
        self.global_refused = {}
        self._global, self._grid = arrays, grid
        self.take_late_replies()  # before sampling: DP counts late releases first
        if self.stop_reason is not None:
            return []
        ids = self.federation.sample(server_round, self.fraction_train, stream=0,
                                     eligible=self.eligible_clients(server_round))
        config[protocol.ROUND] = server_round
        self.codec.start_round(server_round, arrays)
        self.stats.clients_sampled = len(ids)
        self.stats.bytes_sent += arrays.count_bytes() * len(ids)
        messages = []
        for cid in ids:
            record = RecordDict({protocol.ARRAYS: arrays,
                                 protocol.CONFIG: self.train_config_for(cid, config)})
            messages.extend(self._messages(record, [cid], MessageType.TRAIN))
        return messages

    def _contribution(self, msg: Message, acc, weight: float, client_id: int) -> bool:
        """Add one reply to the sum; any failure rejects that reply only, with a reason.

        Decoding, checking and adding run on bytes a client chose: whatever they
        raise (TenSEAL, SEAL, numpy, a codec's own checks) ends this reply, never the
        round. The accumulator only changes once an addition has fully succeeded.
        A rejected reply goes to `not_used` (DP records it: it was released).
        """
        try:
            acc.add(self.codec.contribution(msg, self._global, weight), weight)
        except (Rejected, FixedPointOverflow) as err:
            reason = str(err)
        except Exception as err:  # noqa: BLE001 - one bad reply never ends the run
            reason = f"cannot be added ({type(err).__name__}: {err})"
        else:
            return True
        self._note(Verdict(ok=False, kind="rejected", reason=reason, client_id=client_id),
                   msg, "train")
        self.not_used(self.stats.round, msg, reason)
        return False

    def _check_sender(self, verdict: Verdict, msg: Message) -> Verdict:
        """The claimed client id must be the sending node's, admitted once per round."""
        node = self.federation.nodes.get(verdict.client_id)
        sender = msg.metadata.src_node_id
        if node != sender:
            return Verdict(ok=False, kind="rejected", client_id=verdict.client_id,
                           reason=f"claims client {verdict.client_id} but comes from node "
                                  f"{sender}")
        if verdict.client_id in self._replied:
            return Verdict(ok=False, kind="rejected", client_id=verdict.client_id,
                           reason="this client's update of this round was admitted already")
        return verdict

    def _take(self, server_round: int, msg: Message, acc, losses: list[float]) -> int | None:
        """Check one reply and add it to the sum, or count why it was left out.

        Returns the client id of a reply that entered the sum (for `admit`), else None.
        """
        verdict = check_metrics(msg)
        if verdict.ok:
            verdict = self._check_sender(verdict, msg)
        if not verdict.ok:
            self._note(verdict, msg, "train")
            self.not_used(server_round, msg, verdict.reason)
            return None
        if not self.screen(server_round, verdict.client_id, msg):
            return None
        metrics = msg.content[protocol.METRICS]
        weight = float(metrics[protocol.NUM_EXAMPLES])
        if not self._contribution(msg, acc, weight, verdict.client_id):
            return None
        self._replied.add(verdict.client_id)
        if protocol.TRAIN_LOSS in metrics:  # not sent under DP
            loss = metrics[protocol.TRAIN_LOSS]
            finite = isinstance(loss, int | float) and math.isfinite(loss)
            losses.append((float(loss) if finite else 0.0) * weight)
        return verdict.client_id

    def aggregate_train(self, server_round: int, replies: Iterable[Message]
                        ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """Add each checked reply to the running sum as it arrives; then finish.

        A reply that breaks the checks is rejected alone; the server's own
        bookkeeping (the DP ledger's durable writes in `screen`, `admit`,
        `not_used`) is not a reply's fault: its failure ends the run.
        """
        server_round = self.run_round(server_round)
        acc, losses = self.codec.accumulator(), []
        self._replied: set[int] = set()
        for msg in replies:
            try:
                self.stats.bytes_received += reply_bytes(msg)
                admitted = self._take(server_round, msg, acc, losses)
            except (LedgerError, OSError):
                raise
            except Exception as err:  # noqa: BLE001 - one bad reply never ends the run
                reason = f"malformed reply ({type(err).__name__}: {err})"
                self._note(Verdict(ok=False, kind="rejected", reason=reason), msg, "train")
                self.not_used(server_round, msg, reason)
                continue
            if admitted is not None:  # in the sum: DP's record is on disk before use
                self.admit(server_round, admitted, msg)
        self._count_timeouts("train")
        self.stats.clients_replied = acc.count
        return self._finish_round(server_round, acc, losses)

    def _finish_round(self, server_round: int, acc, losses: list[float]
                      ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        if self.stop_reason is not None or self.stats.clients_sampled == 0:
            return None, None
        refused = self.global_refused.get("train", 0)
        if acc.count < self.min_clients and refused:
            self._stop(f"round {server_round}: {refused} client(s) refused the global of "
                       f"round {server_round - 1} (it failed their verification: a forged "
                       "or corrupted sum, e.g. one bad reply the server could not read); "
                       f"only {acc.count} usable update(s), fewer than --min-clients "
                       f"{self.min_clients}; the run stops (sites fail closed after a "
                       "refused global; their logs say why)")
            return None, None
        if acc.count < self.min_clients:
            self._stop(f"round {server_round}: only {acc.count} usable update(s), fewer "
                       f"than --min-clients {self.min_clients}; the run stops with the "
                       f"model of round {server_round - 1}")
            return None, None
        new = self.codec.finish(acc, self._global)
        if not losses:  # DP clients send no training loss
            return new, None
        self.stats.train_loss = math.fsum(losses) / acc.weight
        return new, MetricRecord({protocol.TRAIN_LOSS: self.stats.train_loss})

    # -- federated evaluation -------------------------------------------------
    def configure_evaluate(self, server_round: int, arrays: ArrayRecord,
                           config: ConfigRecord, grid: Grid) -> Iterable[Message]:
        """Sample clients (an independent seeded stream) to evaluate the model."""
        server_round = self.run_round(server_round)
        self._grid = grid
        if self.stop_reason is not None:
            return []
        ids = self.federation.sample(server_round, self.fraction_evaluate, stream=1,
                                     eligible=self.eligible_evaluators(server_round))
        config[protocol.ROUND] = server_round
        record = RecordDict({protocol.ARRAYS: arrays, protocol.CONFIG: config})
        self.stats.bytes_sent += arrays.count_bytes() * len(ids)
        return self._messages(record, ids, MessageType.EVALUATE)

    def _eval_values(self, msg: Message) -> tuple[Verdict, tuple[float, float, float]]:
        verdict = check_metrics(msg)
        if not verdict.ok:
            return verdict, (0.0, 0.0, 0.0)
        metrics = msg.content[protocol.METRICS]
        values = [metrics.get(protocol.EVAL_LOSS), metrics.get(protocol.EVAL_ACC)]
        if not all(isinstance(v, int | float) and np.isfinite(v) for v in values):
            return Verdict(ok=False, kind="rejected", client_id=verdict.client_id,
                           reason="evaluation reply lacks finite loss/accuracy"), (0, 0, 0)
        return verdict, (float(metrics[protocol.NUM_EXAMPLES]), float(values[0]),
                         float(values[1]))

    def aggregate_evaluate(self, server_round: int, replies: Iterable[Message]
                           ) -> MetricRecord | None:
        """Example-weighted validation loss and accuracy over the replies."""
        counts, losses, hits = [], [], []
        for msg in replies:
            verdict, (n, loss, acc) = self._eval_values(msg)
            if not verdict.ok:
                self._note(verdict, msg, "evaluate")
                continue
            counts.append(n)
            losses.append(loss * n)
            hits.append(acc * n)
        self._count_timeouts("evaluate")
        total = math.fsum(counts)
        if total == 0:
            return None
        self.stats.eval_clients = len(counts)
        self.stats.fed_examples = int(total)
        self.stats.fed_loss = math.fsum(losses) / total
        self.stats.fed_accuracy = math.fsum(hits) / total
        return MetricRecord({protocol.EVAL_LOSS: self.stats.fed_loss,
                             protocol.EVAL_ACC: self.stats.fed_accuracy})


STRATEGY = StrategyInfo(
    name="fedavg",
    help="Federated averaging (McMahan et al. 2017): the example-weighted mean of the "
         "updates; works under --secure-agg he (it needs only their sum).",
    build=FedsimFedAvg,
)
