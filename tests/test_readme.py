"""The README's two set-up commands: CI runs command 2 verbatim, and command 1 runs the quickstart."""

import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def readme_commands() -> dict[str, str]:
    text = (ROOT / "README.md").read_text()
    block = text.split("```bash\n", 1)[1].split("```", 1)[0].splitlines()
    commands, label = {}, None
    for line in block:
        if line.startswith("# "):
            label = line[2:].split(".", 1)[0]
        elif line.strip() and label:
            commands[label] = line.strip()
            label = None
    return commands


def test_ci_runs_readme_command_2_verbatim():
    commands = readme_commands()
    assert set(commands) == {"1", "2"}
    ci_lines = [ln.strip() for ln in (ROOT / ".ci" / "run").read_text().splitlines()]
    assert commands["2"] in ci_lines
    assert "pytest" in commands["2"] and ".venv" in commands["2"]


def test_readme_command_1_runs_the_quickstart_in_the_repo_venv():
    cmd = readme_commands()["1"]
    assert cmd.startswith("python3 -m venv .venv") and cmd.endswith(".venv/bin/leoclr quickstart")


def test_the_suite_removes_what_passing_tests_wrote_and_stops_a_hung_test():
    """A full run writes about 17 GB of checkpoints; only failed tests' temp dirs may stay on disk."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    ini = project["tool"]["pytest"]["ini_options"]
    assert ini["tmp_path_retention_policy"] == "failed"
    assert ini["tmp_path_retention_count"] == 1
    assert 0 < ini["timeout"] <= 1800
    extras = project["project"]["optional-dependencies"]["test"]
    assert any(dep.startswith("pytest-timeout") for dep in extras)
