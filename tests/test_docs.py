"""The documentation promises: help with an example everywhere, the README's first lines, and
every named query the code uses exists (and none is dead)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from typer.testing import CliRunner

from maintctl.cli import app
from maintctl.sqlfiles import queries

ROOT = Path(__file__).resolve().parent.parent
COMMANDS = [
    "run",
    "stuck",
    "purge-temp",
    "compact",
    "purge-raw",
    "status",
    "migrate",
    "history",
    "pause",
    "resume",
    "doctor",
    "grant",
    "config",
    "purge",
]


@pytest.mark.parametrize("command", COMMANDS)
def test_every_command_has_help_with_an_example(command: str) -> None:
    result = CliRunner().invoke(app, [command, "--help"])

    assert result.exit_code == 0
    assert f"Example: maintctl {command}" in result.stdout
    for option in ("--database-url", "--schema", "--json"):
        assert option in result.stdout


def test_version() -> None:
    from maintctl import __version__

    result = CliRunner().invoke(app, ["--version"])
    assert result.stdout == f"maintctl {__version__}\n"


def test_readme_starts_with_the_two_commands() -> None:
    lines = (ROOT / "README.md").read_text().splitlines()
    fence = lines.index("```")
    assert lines[fence + 1 : fence + 4] == ["make demo", "make test", "```"]
    assert fence <= 4


def names_used_in_code() -> set[str]:
    source = "\n".join(path.read_text() for path in (ROOT / "maintctl").rglob("*.py"))
    calls = re.findall(
        r"\b(?:db\.)?(?:fetch_one|fetch_all|fetch_value|fetch_optional|execute|execute_composed"
        r"|fetch_composed|fetch_composed_values|try_outside_transaction|try_in_transaction)"
        r"\(\s*conn,\s*(?:settings,\s*)?\"(\w+)\"",
        source,
    )
    direct = re.findall(r"query\(\"(\w+)\"\)", source)
    return set(calls) | set(direct)


def test_every_query_the_code_uses_exists_and_every_query_is_used() -> None:
    used = names_used_in_code()

    assert len(used) > 20
    assert used - set(queries()) == set()
    assert set(queries()) - used == set()
