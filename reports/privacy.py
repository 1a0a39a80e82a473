"""Per-client privacy spending, taken verbatim from the DP ledger.

No epsilon is recomputed here: every number in privacy.json is a value the
accountant wrote to `privacy/ledger.jsonl` (or a count or sum of its integers), so
the report cannot drift from the ledger.
"""

from __future__ import annotations

import statistics
from collections import defaultdict
from dataclasses import dataclass
from typing import Any

from fedsim.privacy.ledger import RUN_LEDGER, SITE_LEDGERS, LedgerRecord
from fedsim.reports.load import RunData

SCHEMA_VERSION = 1
ACCOUNTANT_NAMES = {
    "rdp": "Rényi DP (RDP)",
    "prv": "privacy random variable (PRV)",
    "gdp": "Gaussian DP (GDP; approximate, may understate ε)",
}


@dataclass(frozen=True, kw_only=True)
class ClientPrivacy:
    """One client's participations, in round order, and where its budget stands."""

    client_id: int
    records: tuple[LedgerRecord, ...]

    @property
    def last(self) -> LedgerRecord:
        """The client's last spending record: its final epsilon and DP settings.

        A zero-step exhaustion marker carries the same epsilon but no DP settings,
        so it is passed over (unless it is all the ledger has for the client).
        """
        spent = [r for r in self.records if r.spends]
        return spent[-1] if spent else self.records[-1]

    @property
    def participations(self) -> int:
        """Updates the client released (used or not; exhaustion markers excluded)."""
        return sum(1 for r in self.records if r.spends)

    @property
    def exhausted_round(self) -> int | None:
        """First round whose cumulative epsilon reached (or passed) the budget.

        A client that refuses a round because it would pass the budget gets a
        zero-step marker (`steps: 0`, `released: false`, unchanged epsilon), so this
        finds the round a client was refused in as well.
        """
        for record in self.records:
            if record.exhaustion_marker or record.outcome == "refused":
                return record.round
            if record.budget is not None and record.epsilon >= record.budget:
                return record.round
        return None

    @property
    def released_updates(self) -> int:
        """Updates the server used (outcome `aggregated`)."""
        return sum(1 for r in self.records if r.aggregated and r.spends)

    @property
    def unused_releases(self) -> int:
        """Updates released but not used (rejected, refused, late): they count too."""
        return sum(1 for r in self.records if r.spends and not r.aggregated)

    @property
    def remaining(self) -> float | None:
        """Budget left after the last participation (None without a budget)."""
        if self.last.budget is None:
            return None
        return self.last.budget - self.last.epsilon


@dataclass(frozen=True, kw_only=True)
class EpsilonCurve:
    """Cumulative epsilon across the clients that have trained, round by round."""

    rounds: tuple[int, ...]
    median: tuple[float | None, ...]
    max: tuple[float | None, ...]


def by_client(records: tuple[LedgerRecord, ...]) -> list[ClientPrivacy]:
    """Group ledger records per client (stable round order), sorted by client id."""
    groups: dict[int, list[LedgerRecord]] = defaultdict(list)
    for record in records:
        groups[record.client_id].append(record)
    return [ClientPrivacy(client_id=cid,
                          records=tuple(sorted(groups[cid], key=lambda r: r.round)))
            for cid in sorted(groups)]


def last_round(run: RunData) -> int:
    """Return the last round the metrics or the ledger know of (0 if none)."""
    rounds = [row["round"] for row in run.metrics] + [r.round for r in run.ledger]
    return max(rounds, default=0)


def epsilon_curve(clients: list[ClientPrivacy], rounds: int,
                  population: int | None) -> EpsilonCurve:
    """Median and max cumulative epsilon after each round 1..`rounds`.

    The median is over all `population` clients, those that have not trained yet
    counting as 0 (as the server's eps_median metric does); over the clients that
    have trained when the population is unknown.
    """
    medians: list[float | None] = []
    maxima: list[float | None] = []
    arriving: dict[int, list[LedgerRecord]] = defaultdict(list)
    for client in clients:
        for record in client.records:
            arriving[record.round].append(record)
    latest: dict[int, float] = {}
    for r in range(1, rounds + 1):
        latest |= {rec.client_id: rec.epsilon for rec in arriving[r]}
        values = list(latest.values())
        if population is not None and values:
            values += [0.0] * max(0, population - len(values))
        medians.append(statistics.median(values) if values else None)
        maxima.append(max(values) if values else None)
    return EpsilonCurve(rounds=tuple(range(1, rounds + 1)), median=tuple(medians),
                        max=tuple(maxima))


def nearest_budget(clients: list[ClientPrivacy],
                   count: int = 10) -> list[ClientPrivacy]:
    """Pick the `count` clients with least budget left (highest ε without a budget)."""
    with_budget = [c for c in clients if c.remaining is not None]
    if with_budget:
        return sorted(with_budget, key=lambda c: (c.remaining, c.client_id))[:count]
    return sorted(clients, key=lambda c: (-c.last.epsilon, c.client_id))[:count]


def _record_json(record: LedgerRecord) -> dict[str, Any]:
    """One participation as it appears in a client's `epsilon_by_round`."""
    return {"round": record.round, "epsilon": record.epsilon, "steps": record.steps,
            "noise_multiplier": record.noise_multiplier,
            "sample_rate": record.sample_rate, "released": record.released,
            "outcome": record.outcome, "aggregated": record.aggregated}


def site_final_epsilon(run: RunData, client_id: int) -> float | None:
    """The client's final epsilon by its own ledger (simulation), if there is one."""
    records = [r for r in (run.site_ledgers or {}).get(client_id, ()) if r.spends]
    return records[-1].epsilon if records else None


def site_agreement(run: RunData, clients: list[ClientPrivacy]) -> dict[str, Any] | None:
    """Compare the clients' own final epsilons with the server's (None: no site ledgers)."""
    if run.site_ledgers is None:
        return None
    differing = []
    for client in clients:
        site = site_final_epsilon(run, client.client_id)
        server = client.last.epsilon if client.participations else 0.0
        if site is not None and abs(site - server) > 1e-9 * max(1.0, abs(site)):
            differing.append({"client_id": client.client_id, "server_epsilon": server,
                              "site_epsilon": site})
    return {"source": str(SITE_LEDGERS), "clients": len(run.site_ledgers),
            "agree": not differing, "differing": differing}


def client_json(client: ClientPrivacy, run: RunData | None = None) -> dict[str, Any]:
    """Build a client's entry in privacy.json."""
    last = client.last
    return {
        "client_id": client.client_id,
        "epsilon_by_round": [_record_json(r) for r in client.records],
        "final_epsilon": last.epsilon,
        "delta": last.delta,
        "accountant": last.accountant,
        "noise_multiplier": last.noise_multiplier,
        "sample_rate": last.sample_rate,
        "steps": sum(r.steps for r in client.records),
        "participations": client.participations,
        "released_updates": client.released_updates,
        "unused_releases": client.unused_releases,
        "site_final_epsilon": (None if run is None
                               else site_final_epsilon(run, client.client_id)),
        "budget": last.budget,
        "exhausted": client.exhausted_round is not None,
        "exhausted_round": client.exhausted_round,
    }


def _common(values: list[Any]) -> Any:
    """Return the one value all records share, else None."""
    distinct = {repr(v): v for v in values}
    return next(iter(distinct.values())) if len(distinct) == 1 else None


def exhausted_in_metrics(run: RunData) -> int | None:
    """Return the server's last count of budget-exhausted clients, if logged.

    A client that refuses to train because its budget would be exceeded leaves no
    ledger record, so this count can be higher than the ledger shows.
    """
    for row in reversed(run.metrics):
        value = row.get("exhausted_clients")
        if isinstance(value, list):
            return len(value)
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    return None


def _never_trained(run: RunData, clients: list[ClientPrivacy]) -> list[int] | None:
    """Client ids in partitions.json with no ledger record (None without partitions)."""
    listed = (run.partitions or {}).get("clients")
    if not isinstance(listed, dict):
        return None
    seen = {c.client_id for c in clients}
    return sorted(int(k) for k in listed if k.isdigit() and int(k) not in seen)


def privacy_json(run: RunData) -> dict[str, Any]:
    """Build the machine-readable privacy.json document of a run."""
    clients = by_client(run.ledger)
    top = max(clients, key=lambda c: (c.last.epsilon, -c.client_id), default=None)
    return {
        "schema_version": SCHEMA_VERSION,
        "run_dir": str(run.run_dir),
        "source": str(RUN_LEDGER) if run.has_ledger else None,
        "dp": run.dp_on,
        "dp_against_server": (not run.config.get("insecure_reproducible_noise")
                              if run.dp_on else None),
        "finished": run.finished,
        "ledger_records": len(run.ledger),
        "accountant": _common([r.accountant for r in run.ledger]),
        "delta": _common([r.delta for r in run.ledger]),
        "budget": _common([r.budget for r in run.ledger]),
        "clients": {str(c.client_id): client_json(c, run) for c in clients},
        "site_ledgers": site_agreement(run, clients),
        "exhausted_clients": [c.client_id for c in clients
                              if c.exhausted_round is not None],
        "exhausted_count_in_metrics": exhausted_in_metrics(run),
        "clients_without_records": _never_trained(run, clients) if run.dp_on else None,
        "max_final_epsilon": None if top is None else {
            "client_id": top.client_id, "epsilon": top.last.epsilon},
        "warnings": list(run.warnings),
    }
