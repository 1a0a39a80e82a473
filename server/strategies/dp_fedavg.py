"""FedAvg with sample-level DP accounting: the server's durable privacy ledger.

Clients train with DP-SGD and report what they did (noise multiplier, sample rate,
steps, and a random id for the release). The server keeps its own history of every
release it has seen from each client and computes the client's cumulative epsilon
from it; it never takes the client's word for it. Every training reply it receives
gets one ledger record (`outcome`):

- ``aggregated``: the update entered the round's sum (the record is on disk before
  the round's result is used or saved);
- ``refused``: by the server's own count the update would take the client past
  `--epsilon-budget`; it is kept out of the sum (but it was released: it counts);
- ``rejected``: bad metrics or payload (counted when its accounting is readable);
- ``late``: it arrived after its round had closed (counted, not used);
- ``exhausted``: the client refused to train (zero steps, nothing released).

Error replies carry no update and get no record. A client that refused (or was
refused) is not sampled again, nor is one that has trained `max_participations`
times; when fewer than `min_clients` remain, the run ends cleanly.
"""

from __future__ import annotations

import json
import logging
import statistics
from collections.abc import Iterable
from functools import cache

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Message, MessageType, MetricRecord
from flwr.serverapp import Grid

from fedsim import protocol
from fedsim.privacy.accounting import (
    STEPS_MAX,
    PrivacyAccountant,
    Step,
    default_delta,
    make_accountant,
)
from fedsim.privacy.ledger import (
    AGGREGATED,
    EXHAUSTED,
    LATE,
    REFUSED,
    REJECTED,
    LedgerRecord,
    PrivacyLedger,
)
from fedsim.server.replies import Verdict
from fedsim.server.strategies.fedavg import FedsimFedAvg

log = logging.getLogger("fedsim.server")

_DP_KEYS = (protocol.DP_NOISE, protocol.DP_SAMPLE_RATE, protocol.DP_STEPS)
Entry = tuple[int, int | None, float, float, int]
"""A release the server has seen: (round, release id, noise, sample rate, steps)."""


def _number(value) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) \
        and bool(np.isfinite(value))


def release_step(metrics) -> Step | None:
    """The DP-SGD a reply says it ran, or None when that is missing or malformed."""
    values = [metrics.get(k) for k in _DP_KEYS]
    if not all(_number(v) and v > 0 for v in values) or values[1] > 1 \
            or values[2] != int(values[2]) or values[2] > STEPS_MAX:
        return None
    return float(values[0]), float(values[1]), int(values[2])


def _release_id(metrics) -> int | None:
    value = metrics.get(protocol.DP_RELEASE)
    return int(value) if isinstance(value, int) and not isinstance(value, bool) else None


def _metrics(msg: Message):
    try:
        return msg.content.metric_records.get(protocol.METRICS) or {}
    except Exception:  # noqa: BLE001 - a malformed reply has no readable metrics
        return {}


class DPFedAvg(FedsimFedAvg):
    """FedsimFedAvg plus the privacy ledger, budgets, the participation cap, epsilons."""

    def __init__(self, *, ledger: PrivacyLedger, accountant: str, delta: float | None,
                 budget: float | None, max_participations: int | None = None,
                 min_clients: int = 1, run_id: str | None = None,
                 replay_identical: bool = False, **kwargs) -> None:
        super().__init__(**kwargs)
        self.ledger = ledger
        self.accountant = accountant
        self.delta = delta
        self.budget = budget
        self.run_id = run_id
        self.max_participations = max_participations
        """The cap K: no client is sampled for training more often (None: no cap)."""
        self.sent: dict[int, int] = {}  # client id -> train messages sent to it
        self.min_clients = min_clients
        self.histories: dict[int, list[Entry]] = {}  # what each client is sent back
        self.accountants: dict[int, PrivacyAccountant] = {}  # what each has spent
        self.epsilons: dict[int, float] = {}
        self.exhausted: dict[int, int] = {}  # client id -> round it ran out
        self._pending: dict[int, LedgerRecord] = {}  # screened, not yet summed
        # A resumed run re-runs the rounds after its checkpoint. Their releases before
        # the crash happened: they count. Only with --insecure-reproducible-noise is
        # a re-run an exact repeat (same noise, same update), not a second release.
        self.replayed: dict[tuple[int, int], LedgerRecord] = {}
        for record in ledger.records():
            if replay_identical and record.round > self.round_offset:
                self.replayed[(record.round, record.client_id)] = record
            else:
                self._remember(record)

    # -- what the server knows of each client --------------------------------
    def _remember(self, record: LedgerRecord) -> None:
        cid = record.client_id
        if record.exhaustion_marker or record.outcome == REFUSED:
            self.exhausted.setdefault(cid, record.round)
        if record.spends:
            self.histories.setdefault(cid, []).append(
                (record.round, record.release, record.noise_multiplier,
                 record.sample_rate, record.steps))
            self._accountant(cid).step(noise_multiplier=record.noise_multiplier,
                                       sample_rate=record.sample_rate, steps=record.steps)
            self.sent[cid] = max(self.sent.get(cid, 0), len(self.histories[cid]))
        if record.spends or cid not in self.epsilons:
            self.epsilons[cid] = record.epsilon

    def _delta(self, metrics) -> float:
        n = metrics.get(protocol.NUM_EXAMPLES)
        if self.delta is not None:
            return self.delta
        if _number(n) and n > 0:
            return default_delta(int(n))
        reported = metrics.get(protocol.DP_DELTA)
        return float(reported) if _number(reported) and 0 < reported < 1 else 1e-5

    def _accountant(self, cid: int) -> PrivacyAccountant:
        if cid not in self.accountants:
            self.accountants[cid] = make_accountant(self.accountant)
        return self.accountants[cid]

    def _record(self, server_round: int, cid: int, metrics, *, outcome: str,
                step: Step | None, reason: str | None = None
                ) -> LedgerRecord:
        """The ledger record of one reply; its epsilon counts `step` if released."""
        delta = self._delta(metrics)
        if step:
            noise, rate, steps = step
            eps = self._accountant(cid).extended(
                noise_multiplier=noise, sample_rate=rate, steps=steps).epsilon(delta)
        else:
            eps = self.epsilons.get(cid, 0.0)
        site = metrics.get(protocol.DP_EPSILON)
        noise, rate, steps = step or (0.0, 0.0, 0)
        return LedgerRecord(
            round=server_round, client_id=cid, noise_multiplier=noise, sample_rate=rate,
            steps=steps, delta=delta, accountant=self.accountant, epsilon=eps,
            budget=self.budget, released=step is not None or outcome != EXHAUSTED,
            run=self.run_id, release=_release_id(metrics), outcome=outcome,
            site_epsilon=float(site) if _number(site) else None, reason=reason)

    def _write(self, record: LedgerRecord) -> None:
        """Append (fsync) unless a resumed run replays an identical, already durable one."""
        previous = self.replayed.pop((record.round, record.client_id), None)
        if previous is not None and _same_release(previous, record):
            self._remember(previous)
            return
        if previous is not None:
            log.warning("client %d re-ran round %d after a resume with a different "
                        "update; both releases are recorded", record.client_id,
                        record.round)
            self._remember(previous)
        self.ledger.append(record)
        self._remember(record)
        self._check_client_view(record)

    def _check_client_view(self, record: LedgerRecord) -> None:
        claimed = record.site_epsilon
        if claimed is None or not record.spends or np.isclose(
                claimed, record.epsilon, rtol=1e-6, atol=1e-9):
            return
        more = claimed > record.epsilon
        log.warning("client %d's own ledger gives epsilon %.6f, the server's %.6f (%s); "
                    "the server records its own value and the client's beside it",
                    record.client_id, claimed, record.epsilon,
                    "a release the server never received, e.g. a lost reply" if more
                    else "its history lacks releases the server has seen")

    # -- sampling -------------------------------------------------------------
    def eligible_clients(self, server_round: int) -> list[int] | None:
        """Every client with budget left and fewer than K participations.

        The cap is what `--target-epsilon` calibrates the noise for: counted in train
        messages sent (a client may train and release even if its reply is lost).
        """
        cap = self.max_participations
        return [c for c in self.federation.client_ids() if c not in self.exhausted
                and (cap is None or self.sent.get(c, 0) < cap)]

    def eligible_evaluators(self, server_round: int) -> list[int] | None:
        """Clients out of budget release nothing more, evaluation metrics included."""
        return [c for c in self.federation.client_ids() if c not in self.exhausted]

    def configure_train(self, server_round: int, arrays: ArrayRecord,
                        config: ConfigRecord, grid: Grid) -> Iterable[Message]:
        """Count late releases, then stop cleanly when too few clients can train."""
        self._grid = grid
        self.take_late_replies()
        actual = self.run_round(server_round)
        remaining = len(self.eligible_clients(actual))
        if remaining < self.min_clients:
            self._stop(f"only {remaining} client(s) with privacy budget and "
                       f"participations left (--min-clients {self.min_clients}); the "
                       f"run ended after round {actual - 1}")
        return super().configure_train(server_round, arrays, config, grid)

    def train_config_for(self, client_id: int, config: ConfigRecord) -> ConfigRecord:
        """Send each client the server's history of it (the client merges, never lowers)."""
        self.sent[client_id] = self.sent.get(client_id, 0) + 1
        history = self.histories.get(client_id, [])
        if not history:
            return config
        own = ConfigRecord(dict(config))
        own[protocol.DP_HISTORY] = json.dumps([list(e) for e in history])
        return own

    # -- one record per reply -------------------------------------------------
    def screen(self, server_round: int, client_id: int, msg: Message) -> bool:
        """Exhaustion markers, missing accounting and the server's budget check."""
        metrics = msg.content[protocol.METRICS]
        if metrics.get(protocol.DP_EXHAUSTED) == 1:
            self._write(self._record(server_round, client_id, metrics, outcome=EXHAUSTED,
                                     step=None))
            log.info("client %d has exhausted its privacy budget", client_id)
            return False
        step = release_step(metrics)
        if step is None:
            reason = ("DP run but the reply lacks its DP accounting "
                      "(noise multiplier, sample rate, steps)")
            self._note(Verdict(ok=False, kind="rejected", reason=reason,
                               client_id=client_id), msg, "train")
            self._write(self._record(server_round, client_id, metrics, outcome=REJECTED,
                                     step=None, reason=reason))
            return False
        record = self._record(server_round, client_id, metrics, outcome=AGGREGATED,
                              step=step)
        if self.budget is not None and record.epsilon > self.budget:
            reason = (f"epsilon {record.epsilon:.4g} by the server's own history would "
                      f"pass --epsilon-budget {self.budget:g}")
            self._note(Verdict(ok=False, kind="rejected", reason=f"refused: {reason}",
                               client_id=client_id), msg, "train")
            self._write(self._record(server_round, client_id, metrics, outcome=REFUSED,
                                     step=step, reason=reason))
            return False
        self._pending[client_id] = record
        return True

    def admit(self, server_round: int, client_id: int, msg: Message) -> None:
        """The update is in the sum: its record goes to disk now, before the round ends."""
        self._write(self._pending.pop(client_id))

    def not_used(self, server_round: int, msg: Message, reason: str) -> None:
        """A rejected reply: recorded, and counted when it was a readable release."""
        if msg.has_error():
            return  # an error reply carries no update
        metrics = _metrics(msg)
        cid = self._sender(msg, metrics)
        if cid is None:
            log.warning("round %d: a reply from an unknown node was rejected; it cannot "
                        "be recorded against a client", server_round)
            return
        pending = self._pending.pop(cid, None)
        step = release_step(metrics) if pending is None else pending.step
        self._write(self._record(server_round, cid, metrics, outcome=REJECTED, step=step,
                                 reason=reason))

    def on_late(self, msg: Message) -> None:
        """A training reply after its round closed: not used, but released all the same."""
        if msg.metadata.message_type != MessageType.TRAIN or msg.has_error():
            return
        metrics = _metrics(msg)
        cid = self._sender(msg, metrics)
        if cid is None:
            return
        claimed = metrics.get(protocol.DP_ROUND)
        server_round = int(claimed) if isinstance(claimed, int) else self.stats.round
        if metrics.get(protocol.DP_EXHAUSTED) == 1:
            self._write(self._record(server_round, cid, metrics, outcome=EXHAUSTED,
                                     step=None))
            return
        step = release_step(metrics)
        log.warning("late reply from client %d for round %d: recorded in the privacy "
                    "ledger (released, not used)", cid, server_round)
        self._write(self._record(server_round, cid, metrics, outcome=LATE, step=step,
                                 reason="arrived after its round closed"))

    def _sender(self, msg: Message, metrics) -> int | None:
        """The reply's client: the node the server sent to, else what it says."""
        node = msg.metadata.src_node_id
        for cid, known in self.federation.nodes.items():
            if known == node:
                return cid
        claimed = metrics.get(protocol.CLIENT_ID)
        return claimed if isinstance(claimed, int) and not isinstance(claimed, bool) \
            else None

    # -- evaluation and metrics ---------------------------------------------
    def aggregate_evaluate(self, server_round: int, replies: Iterable[Message]
                           ) -> MetricRecord | None:
        """A client that ran out of budget answers without metrics: skip it quietly."""
        return super().aggregate_evaluate(
            server_round, (m for m in replies if _metrics(m).get(protocol.DP_EXHAUSTED) != 1
                           or m.has_error()))

    def round_extras(self) -> dict:
        """Per-round privacy metrics over all clients (0 for clients never trained)."""
        values = [self.epsilons.get(c, 0.0) for c in self.federation.client_ids()]
        return {
            "eps_max": max(values) if values else 0.0,
            "eps_median": statistics.median(values) if values else 0.0,
            "exhausted_clients": len(self.exhausted),
        }


@cache
def with_dp(strategy: type[FedsimFedAvg]) -> type[FedsimFedAvg]:
    """`strategy` (a FedsimFedAvg subclass) with DPFedAvg's server side mixed in.

    DPFedAvg works only through FedsimFedAvg's hooks (sampling, per-reply screening,
    admission, late replies, round metrics), never through the aggregation itself,
    so its ledger means the same whatever a strategy does with the admitted updates:
    the clients' DP-SGD makes every update private, and aggregating, averaging or
    selecting among them is post-processing.
    """
    if issubclass(strategy, DPFedAvg):
        return strategy
    if strategy is FedsimFedAvg:
        return DPFedAvg
    return type(f"DP{strategy.__name__}", (DPFedAvg, strategy),
                {"__doc__": f"{strategy.__name__} with DPFedAvg's privacy ledger."})


def _same_release(a: LedgerRecord, b: LedgerRecord) -> bool:
    """The same update, whatever release id each copy was given (reproducible noise)."""
    keys = ("round", "client_id", "noise_multiplier", "sample_rate", "steps", "delta",
            "accountant", "outcome")
    return all(getattr(a, k) == getattr(b, k) for k in keys)
