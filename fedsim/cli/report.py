"""Write a run's privacy and results report, or compare several runs."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console
from rich.markup import escape

from fedsim.reports.load import ReportError

if TYPE_CHECKING:
    from fedsim.reports.write import WrittenReport


def _show(written: WrittenReport, console: Console, err_console: Console) -> None:
    """Print each warning as one line, then where the report went."""
    for warning in written.warnings:
        err_console.print(f"[yellow]warning:[/] {escape(warning)}")
    names = [written.html, written.markdown]
    if written.privacy is not None:
        names.append(written.privacy)
    console.print("report: " + escape(", ".join(str(p) for p in names)))


def write_report(run_dir: Path) -> Path:
    """Write report.html, report.md and privacy.json into `run_dir`; return the HTML."""
    from fedsim.reports.write import write_run_report

    written = write_run_report(Path(run_dir))
    _show(written, Console(highlight=False),
          Console(stderr=True, highlight=False, soft_wrap=True))
    return written.html


def report(
    run_dirs: Annotated[list[Path], typer.Argument(
        help="Run folder(s): each gets report.html, report.md and privacy.json.",
        show_default=False)],
    compare: Annotated[bool, typer.Option(
        "--compare", help="Compare the runs (accuracy and ε per round, one plot "
                          "each); write compare.html/compare.md into --out.")] = False,
    out: Annotated[Path | None, typer.Option(
        help="Folder for the report (with --compare: required; otherwise the run "
             "folder itself, and only one run folder may be given).")] = None,
) -> None:
    """Write a privacy-budget and results report of a run folder, or compare runs."""
    from fedsim.reports.write import write_compare_report, write_run_report

    console = Console(highlight=False)
    err_console = Console(stderr=True, highlight=False, soft_wrap=True)
    if compare:
        if out is None:
            raise ReportError("--compare writes compare.html and compare.md: "
                              "give the folder with --out DIR")
        _show(write_compare_report(run_dirs, out), console, err_console)
        return
    if out is not None and len(run_dirs) > 1:
        raise ReportError("--out takes one run folder; without it each run folder "
                          "gets its own report")
    for run_dir in run_dirs:
        _show(write_run_report(run_dir, out), console, err_console)
