"""Live progress for a run: a rich progress bar fed by the server's round hook."""

from __future__ import annotations

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table


def _fmt(value, digits: int = 4) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


class ProgressListener:
    """Shows round, accuracy, elapsed time and ETA while the run goes."""

    def __init__(self, console: Console, rounds: int) -> None:
        self.console = console
        self.progress = Progress(
            TextColumn("[bold]round"),
            MofNCompleteColumn(),
            BarColumn(),
            TextColumn("{task.fields[status]}"),
            TimeElapsedColumn(),
            TextColumn("eta"),
            TimeRemainingColumn(),
            console=console,
            transient=False,
        )
        self.task = self.progress.add_task("rounds", total=rounds, status="starting Ray")

    def __enter__(self) -> ProgressListener:
        self.progress.start()
        return self

    def __exit__(self, *exc) -> None:
        self.progress.stop()

    def on_start(self, info: dict) -> None:
        """The federation is up."""
        self.progress.update(self.task, status=f"{info.get('clients')} clients connected")

    def on_round(self, record: dict) -> None:
        """Advance the bar and show the latest accuracy."""
        if record.get("initial"):
            return
        acc = record.get("central_accuracy", record.get("fed_accuracy"))
        status = (f"acc {_fmt(acc)}  loss {_fmt(record.get('train_loss'))}  "
                  f"{record.get('clients_replied', 0)}/{record.get('clients_sampled', 0)} "
                  "replied")
        self.progress.update(self.task, completed=record["round"], status=status)

    def on_finish(self, final, info: dict) -> None:
        """Say why the run ended early, if it did."""
        if info.get("stop_reason"):
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
        ("federated val accuracy (final)", _fmt(summary.get("final_federated_accuracy"))),
        ("client updates", str(summary.get("client_updates"))),
        ("client updates / s", _fmt(summary.get("client_updates_per_s"), 2)),
        ("wall time (s)", _fmt(summary.get("rounds_wall_time_s"), 1)),
        ("MB sent / received", f"{summary.get('bytes_sent', 0) / 1e6:.1f} / "
                               f"{summary.get('bytes_received', 0) / 1e6:.1f}"),
    ]
    if summary.get("dp_against_server") is not None:
        rows.append(("DP against the server", "yes" if summary["dp_against_server"] else
                     "NO (--insecure-reproducible-noise)"))
    for name, value in rows:
        table.add_row(name, value)
    return table
