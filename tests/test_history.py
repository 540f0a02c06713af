"""`maintctl history --since`: a duration on the database's clock, or an ISO date."""

from __future__ import annotations

import json

import pytest

from tests.conftest import Cli
from tests.data import Conn, count


def add_runs(conn: Conn) -> None:
    conn.execute(
        "insert into maintenance.runs (command, status, started_at, finished_at) values "
        "('run', 'succeeded', now() - interval '10 days', now() - interval '10 days'), "
        "('run', 'failed', now() - interval '3 days', now() - interval '3 days'), "
        "('purge-temp', 'succeeded', now() - interval '2 hours', now() - interval '2 hours'), "
        "('run', 'succeeded', '2026-01-01 03:00+00', '2026-01-01 03:01+00')"
    )


def commands(stdout: str) -> list[tuple[str, str]]:
    return [(run["command"], run["status"]) for run in json.loads(stdout)]


def test_since_a_duration(cli: Cli, conn: Conn) -> None:
    add_runs(conn)

    week = cli("history", "--since", "7d", "--json")
    day = cli("history", "--since", "1d", "--json")
    limited = cli("history", "--since", "7d", "--limit", "1", "--json")

    assert week.exit_code == 0
    assert commands(week.stdout) == [("purge-temp", "succeeded"), ("run", "failed")]
    assert commands(day.stdout) == [("purge-temp", "succeeded")]
    assert commands(limited.stdout) == [("purge-temp", "succeeded")]


def test_since_an_iso_date_or_time(cli: Cli, conn: Conn) -> None:
    add_runs(conn)

    date = cli("history", "--since", "2026-01-01", "--json")
    after = cli("history", "--since", "2026-01-01T03:00:01Z", "--json")
    zoned = cli("history", "--since", "2026-01-01T04:00+02:00", "--json")

    assert ("run", "succeeded") in commands(date.stdout)
    starts = [run["startedAt"] for run in json.loads(date.stdout)]
    assert "2026-01-01T03:00:00.000Z" in starts
    assert "2026-01-01T03:00:00.000Z" not in [r["startedAt"] for r in json.loads(after.stdout)]
    assert "2026-01-01T03:00:00.000Z" in [r["startedAt"] for r in json.loads(zoned.stdout)]


def test_nothing_since_says_so(cli: Cli, conn: Conn) -> None:
    add_runs(conn)

    result = cli("history", "--since", "2099-01-01")

    assert result.exit_code == 0
    assert result.stdout == "No runs since 2099-01-01.\n"


@pytest.mark.parametrize("value", ["yesterday", "0d", "-3d", "2026-13-01"])
def test_a_bad_since_exits_2_with_one_line(cli: Cli, conn: Conn, value: str) -> None:
    result = cli("history", "--since", value)

    assert result.exit_code == 2
    assert result.stdout == ""
    assert result.stderr.startswith(f"maintctl: error: --since: {value!r} is neither a duration")
    assert result.stderr.count("\n") == 1
    assert count(conn, "select count(*) from maintenance.runs") == 0


def test_status_says_why_the_last_run_did_not_succeed(cli: Cli, conn: Conn) -> None:
    cli("pause", "--reason", "restoring a backup")
    assert cli("run").exit_code == 75

    lines = cli("status").stdout.splitlines()

    assert lines[-4].startswith("Paused: maintenance is paused since ")
    assert lines[-3].startswith("Last run: #1 run skipped, started ")
    assert lines[-2].startswith("  maintenance is paused since ")
    assert lines[-2].endswith("restoring a backup (maintctl resume)")
    assert lines[-1] == "Last successful full run finished: never"
