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


def all_commands(group=None, prefix=()):
    """(words, command) of every command and subcommand (``protocols show``)."""
    group = group or typer.main.get_command(cli.app)
    for name, command in sorted(group.commands.items()):
        yield prefix + (name,), command
        if hasattr(command, "commands"):
            yield from all_commands(command, prefix + (name,))


def test_every_option_and_argument_of_every_command_has_help_text():
    missing = [f"{' '.join(words)} {p.name}" for words, command in all_commands() for p in command.params
               if not (getattr(p, "help", None) or "").strip()]
    assert not missing, missing
    assert len(list(all_commands())) >= 18


HELP_PROBE = """
import sys
from leoclr_cli.cli import main
def helps(argv):
    try:
        main(argv)
    except SystemExit as e:
        assert e.code in (0, None), (argv, e.code)
helps(["--help"])
print("top", sorted(m for m in ("torch", "torchvision", "pydantic", "numpy") if m in sys.modules))
for words in {commands!r}:
    helps([*words, "--help"])
print("all", sorted(m for m in ("torch", "torchvision") if m in sys.modules))
"""


def test_no_help_imports_torch(tmp_path):
    """`leoclr --help` and every `leoclr CMD --help`, in a fresh interpreter: torch and torchvision stay out (the
    runners are imported through leoclr_cli.lazy when a command runs); the top-level help needs no pydantic."""
    import subprocess
    import sys

    commands = [list(words) for words, _ in all_commands()]
    probe = HELP_PROBE.format(commands=commands)
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, cwd=tmp_path,
                          env={"COLUMNS": "80", "PATH": "/usr/bin:/bin"})
    assert done.returncode == 0, done.stderr
    lines = [line for line in done.stdout.splitlines() if line.startswith(("top ", "all "))]
    assert lines == ["top []", "all []"], done.stdout[-2000:]
    assert done.stdout.count("Usage: ") == len(commands) + 1  # every help was printed


def test_the_lazy_table_names_what_exists_and_covers_every_use():
    """Every name of leoclr_cli.lazy resolves, and every ``lazy.NAME`` in cli.py and options.py is one of them."""
    import ast
    from leoclr_cli import lazy

    table = lazy.table()
    for name in table:
        assert getattr(lazy, name) is not None, name
    used = set()
    for module in ("cli.py", "options.py"):
        tree = ast.parse((Path(cli.__file__).parent / module).read_text())
        used |= {n.attr for n in ast.walk(tree) if isinstance(n, ast.Attribute) and isinstance(n.value, ast.Name)
                 and n.value.id == "lazy"}
    assert used <= set(table), used - set(table)
    assert {"run_pretrain", "load_protocol", "RunDir", "ckpt"} <= used
    assert lazy.ckpt.__name__ == "leoclr_cli.core.checkpoint" and lazy.RunDir.__name__ == "RunDir"
