"""Live progress for a run: a rich progress bar fed by the server's round hook."""

from __future__ import annotations

import math

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    TextColumn,
    TimeRemainingColumn,
)
from rich.table import Column, Table
from rich.text import Text

from fedsim.simulations.rundir import RunClock

# Federated accuracy is measured on the validation rows of the clients sampled for
# evaluation. For an accuracy p measured on n examples the 95% interval is
# +-1.96 * sqrt(p(1-p)/n), at most +-0.98/sqrt(n): below 100 examples that is wider
# than +-0.1, too wide to tell rounds apart, so the figure is flagged as noisy.
NOISY_EVAL_EXAMPLES = 100


def _fmt(value, digits: int = 4) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def accuracy_margin(examples: int) -> float:
    """The widest 95% interval half-width of an accuracy over `examples` examples."""
    return 1.96 * 0.5 / math.sqrt(examples)


def federated_accuracy(acc: float | None, examples: int | None) -> str:
    """'0.9091 (11 examples, +-0.30: noisy)', or the bare figure when n is unknown."""
    if acc is None:
        return "-"
    if not examples:
        return _fmt(acc)
    margin = accuracy_margin(int(examples))
    noisy = ": noisy" if examples < NOISY_EVAL_EXAMPLES else ""
    return f"{acc:.4f} ({int(examples)} examples, ±{margin:.2f}{noisy})"


def epsilon_text(record: dict) -> str | None:
    """'ε max 1.23 med 0.98' when the record carries DP figures."""
    if record.get("eps_max") is None:
        return None
    return f"ε max {record['eps_max']:.2f} med {record.get('eps_median') or 0.0:.2f}"


class WallTimeColumn(ProgressColumn):
    """The run's wall time (RunClock: earlier sessions of a resumed run included)."""

    def __init__(self, clock: RunClock) -> None:
        super().__init__(table_column=Column(no_wrap=True))
        self.clock = clock
        self.frozen: float | None = None

    def render(self, task) -> Text:
        """H:MM:SS of the run's wall time, frozen once the rounds end."""
        seconds = int(self.frozen if self.frozen is not None else self.clock.elapsed())
        return Text(f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}",
                    style="progress.elapsed")


class ProgressListener:
    """Shows round, accuracy, epsilon (DP), the run's wall time and ETA."""

    def __init__(self, console: Console, rounds: int, *, clock: RunClock | None = None) -> None:
        self.console = console
        self.wall = WallTimeColumn(clock or RunClock())
        def fixed() -> Column:
            return Column(no_wrap=True)

        self.progress = Progress(
            TextColumn("[bold]round", table_column=fixed()),
            MofNCompleteColumn(table_column=fixed()),
            BarColumn(bar_width=12, table_column=fixed()),
            # the status gives way first on a narrow terminal; round and times stay
            TextColumn("{task.fields[status]}",
                       table_column=Column(ratio=1, no_wrap=True, overflow="ellipsis")),
            self.wall,
            TextColumn("eta", table_column=fixed()),
            TimeRemainingColumn(table_column=fixed()),
            console=console,
            transient=False,
            expand=True,
        )
        self.task = self.progress.add_task("rounds", total=rounds, status="starting Ray")

    def __enter__(self) -> ProgressListener:
        self.progress.start()
        return self

    def __exit__(self, *exc) -> None:
        if self.wall.frozen is None:
            self.wall.frozen = self.wall.clock.elapsed()
        self.progress.stop()

    def on_start(self, info: dict) -> None:
        """The federation is up."""
        self.progress.update(self.task, status=f"{info.get('clients')} clients connected")

    def on_round(self, record: dict) -> None:
        """Advance the bar and show the latest accuracy (and epsilon, under DP)."""
        if record.get("initial"):
            return
        acc = record.get("central_accuracy", record.get("fed_accuracy"))
        parts = [f"acc {_fmt(acc)}", epsilon_text(record),  # on narrow terminals, these
                 f"loss {_fmt(record.get('train_loss'))}",   # stay longest
                 f"{record.get('clients_replied', 0)}/{record.get('clients_sampled', 0)} "
                 "replied"]
        parts = [p for p in parts if p]
        self.progress.update(self.task, completed=record["round"], status="  ".join(parts))

    def on_finish(self, final, info: dict) -> None:
        """Freeze the wall time; say why the run ended early, if it did."""
        self.wall.frozen = self.wall.clock.elapsed()
        if info.get("interrupted"):
            self.progress.update(self.task, status="[yellow]stopped by a signal")
        elif info.get("stop_reason"):
            self.progress.update(self.task, status=f"[yellow]{info['stop_reason']}")


def summary_table(summary: dict, run_dir: str) -> Table:
    """The end-of-run table."""
    table = Table(title=f"fedsim run -> {run_dir}", show_header=True)
    table.add_column("metric")
    table.add_column("value", justify="right")
    rows = [
        ("rounds completed", str(summary.get("rounds_completed"))),
        ("clients", str(summary.get("clients"))),
        ("model parameters", f"{summary.get('num_parameters', 0):,}"),
        ("central test accuracy (final)", _fmt(summary.get("final_central_accuracy"))),
        ("central test accuracy (best)", _fmt(summary.get("best_central_accuracy"))),
        ("federated val accuracy (final)",
         federated_accuracy(summary.get("final_federated_accuracy"),
                            summary.get("final_federated_examples"))),
    ]
    if summary.get("final_eps_max") is not None:
        rows.append(("epsilon max / median (final)",
                     f"{summary['final_eps_max']:.2f} / "
                     f"{summary.get('final_eps_median') or 0.0:.2f}"))
    rows += [
        ("client updates", str(summary.get("client_updates"))),
        ("client updates / s", _fmt(summary.get("client_updates_per_s"), 2)),
        ("wall time (s)", _fmt(summary.get("wall_time_s"), 1)),
        ("MB sent / received", f"{summary.get('bytes_sent', 0) / 1e6:.1f} / "
                               f"{summary.get('bytes_received', 0) / 1e6:.1f}"),
    ]
    if summary.get("dp_against_server") is not None:
        rows.append(("DP against the server", "yes" if summary["dp_against_server"] else
                     "NO (--insecure-reproducible-noise)"))
    for name, value in rows:
        table.add_row(name, value)
    table.caption = ("wall time: from the command's start (data, Ray, handshake) to the "
                     "last completed round, all sessions of a resumed run")
    return table
