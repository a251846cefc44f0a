"""Every command's --help ends with real examples (from the README, parseable, unbroken at 80 columns),
and tables printed to a non-terminal are Markdown at their natural width."""

import io
import re
import shlex
from pathlib import Path

import pytest
import typer.main
from rich.console import Console
from rich.table import Table

from cliutil import run
from leoclr_cli import cli, console

README = (Path(__file__).resolve().parents[1] / "README.md").read_text()
COMMANDS = typer.main.get_command(cli.app).commands


def examples_of(command) -> list[str]:
    lines = (command.epilog or "").splitlines()
    assert lines and lines[0] == "Examples:", f"{command.name} --help has no examples"
    return [line.strip() for line in lines[1:]]


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_help_ends_with_readme_examples_that_parse(name, capsys, monkeypatch):
    command = COMMANDS[name]
    found = examples_of(command)
    assert 1 <= len(found) <= 3
    monkeypatch.setenv("COLUMNS", "80")
    code, out, _ = run([name, "--help"], capsys)
    assert code in (0, None)
    shown = [line.strip() for line in out.splitlines()]
    for example in found:
        assert example in shown, f"{example!r} is not one unbroken line of `leoclr {name} --help`:\n{out}"
        assert re.search(rf"^{re.escape(example)}(\s|$)", README, re.M), f"{example!r} is not a README line"
        words = shlex.split(example)
        assert words[:2] == ["leoclr", name]
        command.make_context(name, words[2:])  # the flags exist and the values convert


def test_a_table_off_a_terminal_is_markdown_with_unwrapped_cells(capsys):
    table = Table(title="A title")
    table.add_column("what")
    table.add_column("a long numeric header, wider than any cell", justify="right")
    long_cell = "end to end through the real loader, " * 4
    table.add_row(long_cell.strip(), "1.25")
    table.add_row("short", "3.50")
    console.print_table(table)
    lines = capsys.readouterr().out.splitlines()
    assert lines == ["A title", "", "| what | a long numeric header, wider than any cell |", "|---|---:|",
                     f"| {long_cell.strip()} | 1.25 |", "| short | 3.50 |"]


def test_a_table_on_a_terminal_is_drawn_by_rich(monkeypatch):
    buf = io.StringIO()
    monkeypatch.setattr(console, "out", Console(file=buf, force_terminal=True, width=60))
    table = Table(title="T")
    table.add_column("x")
    table.add_row("1")
    console.print_table(table)
    assert "┃" in buf.getvalue() or "│" in buf.getvalue()
    assert "|---|" not in buf.getvalue()
