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
                 budget: float | None, min_clients: int = 1, **kwargs) -> None:
        super().__init__(**kwargs)
        self.ledger = ledger
        self.accountant = accountant
        self.delta = delta
        self.budget = budget
        self.min_clients = min_clients
        self.histories: dict[int, list[tuple[float, float, int]]] = {}
        self.epsilons: dict[int, float] = {}
        self.exhausted: dict[int, int] = {}  # client id -> round it ran out
        for record in ledger.records():
            self._remember(record)

    def _remember(self, record: LedgerRecord) -> None:
        if record.steps == 0 and not record.released:  # an exhaustion marker
            self.exhausted.setdefault(record.client_id, record.round)
            return
        self.histories.setdefault(record.client_id, []).append(
            (record.noise_multiplier, record.sample_rate, record.steps))
        self.epsilons[record.client_id] = record.epsilon

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
        """Every client that has not run out of budget."""
        return [c for c in self.federation.client_ids() if c not in self.exhausted]

    def configure_train(self, server_round: int, arrays: ArrayRecord,
                        config: ConfigRecord, grid: Grid) -> Iterable[Message]:
        """Stop cleanly when too few clients with budget remain."""
        remaining = len(self.eligible_clients(server_round))
        if remaining < self.min_clients and self.stop_reason is None:
            self.stop_reason = (
                f"only {remaining} client(s) with privacy budget left "
                f"(--min-clients {self.min_clients}); the run ended after round "
                f"{server_round - 1}")
            log.warning(self.stop_reason)
        return super().configure_train(server_round, arrays, config, grid)

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

    def before_aggregation(self, server_round: int,
                           accepted: list[tuple[int, Message]]) -> list[tuple[int, Message]]:
        """Ledger first (durable), then aggregation; exhausted clients leave the pool."""
        keep, records = [], []
        for cid, msg in accepted:
            metrics = msg.content[protocol.METRICS]
            if metrics.get(protocol.DP_EXHAUSTED) == 1:
                records.append(self._exhaustion_marker(server_round, cid, metrics))
                log.info("client %d has exhausted its privacy budget", cid)
                continue
            try:
                record = self._ledger_record(server_round, cid, metrics)
            except ValueError as err:
                self._note(Verdict(ok=False, kind="rejected", reason=str(err),
                                   client_id=cid), msg, "train")
                continue
            self._check_client_view(record, metrics)
            records.append(record)
            keep.append((cid, msg))
        self.ledger.extend(records)
        for record in records:
            self._remember(record)
        return keep

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
