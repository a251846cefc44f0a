"""Calling the CLI in-process from tests, and checking its one-line errors."""

import pytest

from leoclr_cli.cli import main


def run(argv, capsys):
    """(exit code, stdout, stderr) of ``leoclr ARGV``."""
    with pytest.raises(SystemExit) as exc:
        main(argv)
    cap = capsys.readouterr()
    return exc.value.code, cap.out, cap.err


def error_line(code, err):
    """The single ``error: ...`` line of a failed call, after checking exit status 2."""
    assert code == 2, err
    lines = [ln for ln in err.strip().splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    return lines[0]
