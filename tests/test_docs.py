"""The documentation promises: help with an example everywhere, the README's first lines, and
every named query the code uses exists (and none is dead)."""

from __future__ import annotations

import inspect
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
    "restore",
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


@pytest.mark.parametrize("command", ["verify", "prune"])
def test_every_archive_command_has_help_with_an_example(command: str) -> None:
    result = CliRunner().invoke(app, ["archive", command, "--help"])

    assert result.exit_code == 0
    assert f"Example: maintctl archive {command}" in result.stdout
    assert "--json" in result.stdout


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


def test_the_readme_says_which_commands_take_json() -> None:
    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    without = []
    for info in app.registered_commands:
        callback = info.callback
        assert callback is not None
        if "json_output" not in inspect.signature(callback).parameters:
            without.append(info.name)

    assert without == ["cron", "serve"]
    assert (
        "(`cron` writes files for a scheduler and takes only `--config` and `--debug` of these; "
        "`serve` is a server whose answers are JSON already, so it takes all of them but `--json`)"
        in " ".join(readme.split())
    )


def test_the_top_level_help_shows_each_summary_whole() -> None:
    shown = CliRunner().invoke(app, ["--help"], env={"COLUMNS": "100"}).stdout
    listed = "".join(shown.split("Commands:")[1].split())  # the wrapping breaks lines anywhere

    assert "..." not in shown.split("Commands:")[1]
    for info in app.registered_commands:
        assert info.callback is not None
        first = " ".join((info.callback.__doc__ or "").split("\n\n")[0].split()).split(". ")[0]
        assert "".join(first.split()) in listed, info.name


def test_durations_show_as_duration_and_log_format_its_choices() -> None:
    shown = CliRunner().invoke(app, ["run", "--help"], env={"COLUMNS": "200"}).stdout
    purge = CliRunner().invoke(app, ["purge-temp", "--help"], env={"COLUMNS": "200"}).stdout
    status = CliRunner().invoke(app, ["status", "--help"], env={"COLUMNS": "200"}).stdout

    assert "--max-runtime DURATION" in shown
    assert "--log-format [text|json]" in shown
    assert "--older-than DURATION" in purge
    assert "--max-age DURATION" in status


def task_records(document: object) -> list[dict[str, object]]:
    """Every task result inside a JSON document: an object with a task and its cutoff."""
    if isinstance(document, list):
        return [record for item in document for record in task_records(item)]
    if isinstance(document, dict):
        found = [document] if {"task", "cutoff"} <= set(document) else []
        return found + [record for value in document.values() for record in task_records(value)]
    return []


def test_the_json_transcripts_show_every_key_of_a_task_result() -> None:
    import json
    from datetime import UTC, datetime

    from maintctl.tasks import TaskResult

    keys = set(TaskResult("stuck", "ok", 0, 0, 0, datetime.now(UTC)).as_record())
    root = Path(__file__).resolve().parent.parent
    checked = 0
    for page in [root / "README.md", *sorted((root / "docs").glob("*.md"))]:
        command = ""
        for line in page.read_text().splitlines():
            if line.startswith("$ "):
                command = line
                continue
            if line.startswith("```json"):
                command = "$ maintctl"  # the README's JSON examples are maintctl's output
            if not line.startswith(("{", "[")) or not command.startswith(
                ("$ maintctl", "$ cat run.log")
            ):
                continue
            try:
                document = json.loads(line)
            except json.JSONDecodeError:
                continue  # "[Unit]" of a unit file, say
            for record in task_records(document):
                assert keys <= set(record), f"{page.name}: {sorted(keys - set(record))}"
                checked += 1
    assert checked >= 12
