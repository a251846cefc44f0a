"""Where the command line writes: results on stdout (``out``), progress, notes and errors on stderr
(``err``), and tables drawn for a terminal or as Markdown for a log."""

from __future__ import annotations

from rich.console import Console
from rich.table import Table

out = Console()
err = Console(stderr=True)


def say(line: str) -> None:
    """A note on stderr, as written (no highlighting, never wrapped)."""
    err.print(line, highlight=False, soft_wrap=True)


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
