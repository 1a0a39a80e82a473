"""Per-round series taken from a loaded run (metrics rows and the DP ledger)."""

from __future__ import annotations

from fedsim.reports.load import RunData, finite
from fedsim.reports.plots import Series
from fedsim.reports.privacy import (
    ClientPrivacy,
    EpsilonCurve,
    epsilon_curve,
    last_round,
)


def metric_series(run: RunData, key: str, label: str, scale: float = 1.0) -> Series:
    """One metrics.jsonl column by round (None where absent, null or not finite)."""
    values = []
    for row in run.metrics:
        value = finite(row.get(key))
        values.append(None if value is None else value * scale)
    rounds = tuple(r["round"] for r in run.metrics)
    return Series(label=label, x=rounds, y=tuple(values))


def has_values(series: Series) -> bool:
    """Tell whether at least one point is known."""
    return any(v is not None for v in series.y)


def metrics_epsilon_curve(run: RunData) -> EpsilonCurve | None:
    """Use the eps_median/eps_max the run logged (when the ledger is absent)."""
    maxima = metric_series(run, "eps_max", "max")
    if not has_values(maxima):
        return None
    medians = metric_series(run, "eps_median", "median")
    return EpsilonCurve(rounds=maxima.x, median=medians.y, max=maxima.y)


def run_epsilon_curve(run: RunData, clients: list[ClientPrivacy]
                      ) -> tuple[EpsilonCurve | None, str]:
    """Return the cumulative-ε curve and its source (ledger, else metrics)."""
    if clients:
        curve = epsilon_curve(clients, last_round(run), run.client_count)
        return curve, "privacy/ledger.jsonl"
    return metrics_epsilon_curve(run), "metrics.jsonl (eps_max, eps_median)"


def _metric_count(value: object) -> int:
    """Read a count logged either as a number or as a list of client ids."""
    if isinstance(value, list):
        return len(value)
    number = finite(value)
    return 0 if number is None else int(number)


def exhausted_counts(run: RunData, clients: list[ClientPrivacy]) -> list[int]:
    """Clients out of budget by each metrics round (cumulative).

    The server's own `exhausted_clients` metric when logged (it also counts clients
    that refused to train, which leave no ledger record), else the ledger's view.
    """
    if any("exhausted_clients" in row for row in run.metrics):
        return [_metric_count(row.get("exhausted_clients")) for row in run.metrics]
    spent = [c.exhausted_round for c in clients if c.exhausted_round is not None]
    return [sum(1 for r in spent if r <= row["round"]) for row in run.metrics]


def accuracy_for_compare(run: RunData) -> Series:
    """Central test accuracy, or federated accuracy when the server had none."""
    central = metric_series(run, "central_accuracy", "central")
    if has_values(central):
        return central
    return metric_series(run, "fed_accuracy", "federated")
