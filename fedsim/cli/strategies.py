"""`fedsim strategies`: the aggregation strategies `--strategy` can name, and their options."""

from __future__ import annotations

from rich.console import Console
from rich.table import Table

from fedsim.options import SIMULATION
from fedsim.server.strategies.registry import strategies as registered


def _options_text(info) -> str:
    if not info.options:
        return "-"
    return "\n".join(f"--{o.flag}: {o.help_text(SIMULATION)}" for o in info.options)


def strategies() -> None:
    """List the aggregation strategies, their options and whether they work under HE."""
    table = Table(title="Strategies (fedsim run --strategy NAME)", show_lines=True)
    for column in ("name", "description", "options", "--secure-agg he"):
        table.add_column(column, no_wrap=column == "name", overflow="fold")
    for name, info in registered().items():
        he = f"refused: {info.refuses_he}" if info.refuses_he else "works"
        table.add_row(name, info.help, _options_text(info), he)
    Console().print(table)
