"""Where the command line writes: results on stdout (``out``), progress, notes and errors on stderr
(``err``), and tables drawn for a terminal or as Markdown for a log."""

from __future__ import annotations

from typing import Any, Iterable, Sequence

from rich.console import Console
from rich.table import Table
from rich.text import Text

out = Console(soft_wrap=True)  # a result line is never wrapped (grep top-1 log keeps its number)
err = Console(stderr=True)


def say(line: str) -> None:
    """A note on stderr, as written (no highlighting, never wrapped)."""
    err.print(line, highlight=False, soft_wrap=True)


def rows_table(title: str, headers: Sequence[str], rows: Iterable[Sequence[Any]]) -> Table:
    """A table of plain text cells (no markup read in them)."""
    table = Table(title=title)
    for header in headers:
        table.add_column(header)
    for row in rows:
        table.add_row(*(Text(str(cell)) for cell in row))
    return table


def print_table(table: Table) -> None:
    """``table`` on stdout: drawn by rich on a terminal; elsewhere (a log, a pipe) as a Markdown table at its
    natural width, one line per row, never a cell wrapped over lines."""
    if out.is_terminal:
        out.print(table)
        return
    cols = table.columns
    cells = [list(col.cells) for col in cols]
    lines = [str(table.title), ""] if table.title else []
    lines.append("| " + " | ".join(str(c.header) for c in cols) + " |")
    lines.append("|" + "|".join("---:" if c.justify == "right" else "---" for c in cols) + "|")
    lines += ["| " + " | ".join(str(col[i]) for col in cells) + " |" for i in range(table.row_count)]
    out.print("\n".join(lines), markup=False, highlight=False, soft_wrap=True)
