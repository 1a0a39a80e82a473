"""Rich tables the commands share."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from rich.table import Table


def label_table(title: str, rows: Iterable[tuple[str, Any]]) -> Table:
    """Build a two-column rich table of labelled values (each shown as `str`)."""
    table = Table(title=title, show_header=False, title_justify="left")
    table.add_column(style="bold")
    table.add_column(overflow="fold")
    for label, value in rows:
        table.add_row(label, str(value))
    return table
