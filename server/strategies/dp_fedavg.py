"""FedAvg with sample-level DP accounting: the server's durable privacy ledger.

Clients train with DP-SGD and report what they did (noise multiplier, sample rate,
steps). Before any update enters the sum, this strategy computes the client's
cumulative epsilon from the full history it has recorded and appends a ledger
record made durable on disk (fsync). Clients whose budget would be exceeded refuse
to train; the ledger gets a zero-step marker (`steps: 0`, `released: false`, the
unchanged epsilon) and they are not sampled again. When fewer than `min_clients` clients with
budget remain, the run ends cleanly.
"""

from __future__ import annotations

import json
import logging
import statistics
from collections.abc import Iterable

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Message
from flwr.serverapp import Grid

from fedsim import protocol
from fedsim.privacy.accounting import default_delta, epsilon
from fedsim.privacy.ledger import LedgerRecord, PrivacyLedger
from fedsim.server.replies import Verdict
from fedsim.server.strategies.fedavg import FedsimFedAvg

log = logging.getLogger("fedsim.server")

_DP_KEYS = (protocol.DP_NOISE, protocol.DP_SAMPLE_RATE, protocol.DP_STEPS)


class DPFedAvg(FedsimFedAvg):
    """FedsimFedAvg plus the privacy ledger, budget enforcement and epsilon metrics."""

    def __init__(self, *, ledger: PrivacyLedger, accountant: str, delta: float | None,
                 budget: float | None, max_participations: int | None = None,
                 min_clients: int = 1, **kwargs) -> None:
        super().__init__(**kwargs)
        self.ledger = ledger
        self.accountant = accountant
        self.delta = delta
        self.budget = budget
        self.max_participations = max_participations
        """The cap K: no client is sampled for training more often (None: no cap)."""
        self.sent: dict[int, int] = {}  # client id -> train messages sent to it
        self.min_clients = min_clients
        self.histories: dict[int, list[tuple[float, float, int]]] = {}
        self.epsilons: dict[int, float] = {}
        self.exhausted: dict[int, int] = {}  # client id -> round it ran out
        # On a resume, records past the checkpoint are replays of releases that already
        # happened; re-running those rounds reproduces them exactly and must not count
        # them twice.
        self.replayed: dict[tuple[int, int], LedgerRecord] = {}
        for record in ledger.records():
            if record.round <= self.round_offset:
                self._remember(record)
            else:
                self.replayed[(record.round, record.client_id)] = record

    def _remember(self, record: LedgerRecord) -> None:
        if record.steps == 0 and not record.released:  # an exhaustion marker
            self.exhausted.setdefault(record.client_id, record.round)
            return
        self.histories.setdefault(record.client_id, []).append(
            (record.noise_multiplier, record.sample_rate, record.steps))
        self.epsilons[record.client_id] = record.epsilon
        self.sent[record.client_id] = max(self.sent.get(record.client_id, 0),
                                          len(self.histories[record.client_id]))

    def _exhaustion_marker(self, server_round: int, cid: int, metrics) -> LedgerRecord:
        """A zero-step record: the client refused this round, nothing was spent."""
        n = int(metrics[protocol.NUM_EXAMPLES])
        delta = self.delta if self.delta is not None else default_delta(n)
        return LedgerRecord(round=server_round, client_id=cid, noise_multiplier=0.0,
                            sample_rate=0.0, steps=0, delta=delta,
                            accountant=self.accountant,
                            epsilon=self.epsilons.get(cid, 0.0), budget=self.budget,
                            released=False)

    def eligible_clients(self, server_round: int) -> list[int] | None:
        """Every client with budget left and fewer than K participations.

        The cap is what `--target-epsilon` calibrates the noise for: counted in train
        messages sent (a client may train and release even if its reply is lost).
        """
        cap = self.max_participations
        return [c for c in self.federation.client_ids() if c not in self.exhausted
                and (cap is None or self.sent.get(c, 0) < cap)]

    def configure_train(self, server_round: int, arrays: ArrayRecord,
                        config: ConfigRecord, grid: Grid) -> Iterable[Message]:
        """Stop cleanly when too few clients with budget remain."""
        actual = server_round + self.round_offset
        remaining = len(self.eligible_clients(actual))
        if remaining < self.min_clients:
            self._stop(f"only {remaining} client(s) with privacy budget and "
                       f"participations left (--min-clients {self.min_clients}); the "
                       f"run ended after round {actual - 1}")
        return super().configure_train(server_round, arrays, config, grid)

    def train_config_for(self, client_id: int, config: ConfigRecord) -> ConfigRecord:
        """Send each client its recorded history, so a restarted client keeps counting."""
        self.sent[client_id] = self.sent.get(client_id, 0) + 1
        history = self.histories.get(client_id, [])
        if not history:
            return config
        own = ConfigRecord(dict(config))
        own[protocol.DP_HISTORY] = json.dumps(history)
        return own

    def _ledger_record(self, server_round: int, cid: int, metrics) -> LedgerRecord:
        values = [metrics.get(k) for k in _DP_KEYS]
        if not all(isinstance(v, int | float) and np.isfinite(v) and v > 0 for v in values):
            raise ValueError("DP run but the reply lacks its DP accounting "
                             "(noise multiplier, sample rate, steps)")
        step = (float(values[0]), float(values[1]), int(values[2]))
        n = int(metrics[protocol.NUM_EXAMPLES])
        delta = self.delta if self.delta is not None else default_delta(n)
        eps = epsilon([*self.histories.get(cid, []), step], delta=delta,
                      accountant=self.accountant)
        return LedgerRecord(round=server_round, client_id=cid, noise_multiplier=step[0],
                            sample_rate=step[1], steps=step[2], delta=delta,
                            accountant=self.accountant, epsilon=eps, budget=self.budget,
                            released=True)

    def admit(self, server_round: int, client_id: int, msg: Message) -> bool:
        """Ledger first (durable), then aggregation; exhausted clients leave the pool."""
        metrics = msg.content[protocol.METRICS]
        if metrics.get(protocol.DP_EXHAUSTED) == 1:
            self._write(self._exhaustion_marker(server_round, client_id, metrics))
            log.info("client %d has exhausted its privacy budget", client_id)
            return False
        try:
            record = self._ledger_record(server_round, client_id, metrics)
        except ValueError as err:
            self._note(Verdict(ok=False, kind="rejected", reason=str(err),
                               client_id=client_id), msg, "train")
            return False
        self._check_client_view(record, metrics)
        self._write(record)
        return True

    def _write(self, record: LedgerRecord) -> None:
        """Append (fsync) unless a resumed run replays an identical, already durable one."""
        key = (record.round, record.client_id)
        previous = self.replayed.pop(key, None)
        if previous is not None and previous == record:
            self._remember(record)
            return
        if previous is not None:
            log.warning("client %d re-ran round %d after a resume with a different "
                        "update; both releases are recorded", record.client_id,
                        record.round)
        self.ledger.append(record)
        self._remember(record)

    def _check_client_view(self, record: LedgerRecord, metrics) -> None:
        claimed = metrics.get(protocol.DP_EPSILON)
        if isinstance(claimed, int | float) and not np.isclose(claimed, record.epsilon,
                                                               rtol=1e-6, atol=1e-9):
            log.warning("client %d reports epsilon %.6f, the ledger computes %.6f "
                        "(its local history differs); the ledger's value is recorded",
                        record.client_id, claimed, record.epsilon)

    def round_extras(self) -> dict:
        """Per-round privacy metrics over all clients (0 for clients never trained)."""
        values = [self.epsilons.get(c, 0.0) for c in self.federation.client_ids()]
        return {
            "eps_max": max(values) if values else 0.0,
            "eps_median": statistics.median(values) if values else 0.0,
            "exhausted_clients": len(self.exhausted),
        }
