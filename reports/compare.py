"""Several runs side by side: accuracy and privacy spent per round (the trade-off)."""

from __future__ import annotations

from collections import Counter

from fedsim.reports import plots
from fedsim.reports.content import fmt
from fedsim.reports.load import RunData
from fedsim.reports.plots import Series
from fedsim.reports.privacy import by_client
from fedsim.reports.render import Block, Document, Image, Paragraph, Section, Table
from fedsim.reports.series import accuracy_for_compare, has_values, run_epsilon_curve


def run_labels(runs: list[RunData]) -> list[str]:
    """Short names for the runs: folder names, full paths where two names clash."""
    names = Counter(run.run_dir.name for run in runs)
    return [run.run_dir.name if names[run.run_dir.name] == 1 else str(run.run_dir)
            for run in runs]


def epsilon_max_series(run: RunData, label: str) -> Series | None:
    """Return the max cumulative ε per round (None for a run without DP data)."""
    curve, _ = run_epsilon_curve(run, by_client(run.ledger))
    if curve is None:
        return None
    return Series(label=label, x=curve.rounds, y=curve.max)


def _last_known(series: Series | None) -> float | None:
    if series is None:
        return None
    values = [v for v in series.y if v is not None]
    return values[-1] if values else None


def ledger_setting(run: RunData, name: str) -> str:
    """A DP setting as the ledger recorded it: one value, or the range across clients.

    The config may hold no value (noise calibrated per client from --target-epsilon,
    delta derived from each client's size); the ledger has what was used. Without
    ledger records the config's value is shown.
    """
    values = sorted({getattr(r, name) for r in run.ledger if r.steps > 0})
    if not values:
        return fmt(run.config.get(name))
    if len(values) == 1:
        return fmt(values[0])
    return f"{fmt(values[0])} to {fmt(values[-1])} (per client)"


def _runs_table(runs: list[RunData], labels: list[str]) -> Table:
    """One row per run: its privacy settings and where it ended."""
    rows = []
    for run, label in zip(runs, labels, strict=True):
        config = run.config
        accuracy = accuracy_for_compare(run)
        rows.append((label, fmt(run.dp_on), ledger_setting(run, "noise_multiplier"),
                     fmt(_last_known(epsilon_max_series(run, label))),
                     ledger_setting(run, "delta"), fmt(config.get("secure_agg", "none")),
                     fmt(len(run.metrics)), fmt(_last_known(accuracy)),
                     accuracy.label, fmt(run.finished)))
    return Table(headers=("run", "DP", "noise multiplier", "final max ε", "δ",
                          "secure aggregation", "rounds", "final accuracy",
                          "accuracy kind", "finished"),
                 rows=tuple(rows), numeric=(2, 3, 4, 6, 7))


def accuracy_lines(runs: list[RunData], labels: list[str]) -> list[Series]:
    """One accuracy line per run (marked when it is federated, not central)."""
    lines = []
    for run, label in zip(runs, labels, strict=True):
        series = accuracy_for_compare(run)
        suffix = "" if series.label == "central" else f" ({series.label})"
        lines.append(Series(label=label + suffix, x=series.x, y=series.y))
    return lines


def accuracy_section(runs: list[RunData], labels: list[str]) -> Section:
    """Every run's accuracy per round on one plot."""
    fig = plots.compare_figure(accuracy_lines(runs, labels), ylabel="accuracy",
                               title="Accuracy per round")
    return Section(title="Accuracy per round", blocks=(
        Paragraph(text="Central test accuracy; federated validation accuracy for runs "
                       "whose server could not evaluate the model (HE)."),
        Image(name="compare_accuracy", png=plots.png_bytes(fig),
              caption="Accuracy per round, one line per run")))


def epsilon_lines(runs: list[RunData], labels: list[str]
                  ) -> tuple[list[Series], list[str], list[str]]:
    """Max-epsilon lines of the DP runs, the runs without DP, the DP runs without ε."""
    lines: list[Series] = []
    off: list[str] = []
    unknown: list[str] = []
    for run, label in zip(runs, labels, strict=True):
        series = epsilon_max_series(run, label)
        if series is not None and has_values(series):
            lines.append(series)
        else:
            (unknown if run.dp_on else off).append(label)
    return lines, off, unknown


def epsilon_section(runs: list[RunData], labels: list[str]) -> Section:
    """Every DP run's max cumulative epsilon per round on one plot."""
    title = "Privacy spent per round (max ε over clients)"
    lines, off, unknown = epsilon_lines(runs, labels)
    blocks: list[Block] = []
    if off:
        blocks.append(Paragraph(text="DP was off in: " + ", ".join(off) + "."))
    if unknown:
        blocks.append(Paragraph(text="DP was on but no ε was recorded (no ledger, no "
                                     "ε metrics) in: " + ", ".join(unknown) + "."))
    if lines:
        fig = plots.compare_figure(lines, ylabel="max cumulative ε", title=title)
        blocks.append(Image(name="compare_epsilon", png=plots.png_bytes(fig),
                            caption="Max cumulative ε per round, one line per DP run"))
    return Section(title=title, blocks=tuple(blocks))


def compare_document(runs: list[RunData]) -> Document:
    """Build the comparison report of several runs."""
    labels = run_labels(runs)
    warnings = tuple(f"{label}: {w}" for run, label in zip(runs, labels, strict=True)
                     for w in run.warnings)
    return Document(
        title=f"Privacy/utility comparison of {len(runs)} runs",
        subtitle="Runs: " + "; ".join(str(r.run_dir) for r in runs),
        warnings=warnings,
        sections=(Section(title="Runs", blocks=(_runs_table(runs, labels),)),
                  accuracy_section(runs, labels), epsilon_section(runs, labels)),
    )
