"""Right rows whatever the clocks say: a cron host whose clock is days off, and sessions in other
time zones (one across a daylight-saving change), change exactly the rows the true clock does.

Each comparison runs on identical copies of one database (CREATE DATABASE ... TEMPLATE), so the
rows, timestamps included, are the same before each run.
"""

from __future__ import annotations

import calendar
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from datetime import UTC, date, datetime, timedelta
from typing import Any

import psycopg
import pytest
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo
from typer.testing import CliRunner

from maintctl.cli import app
from tests.conftest import unique_name, url_for
from tests.data import Conn, add_items, add_job, add_run, add_temp_upload, load_sample, snapshot

FAKETIME = shutil.which("faketime")
SAMPLE_TOTALS = {
    "stuckRunsMarked": 15,
    "tempUploadsPurged": 289,
    "importJobsCompacted": 210,
    "rawItemsPurged": 250,
}
# The real console entry point, in a process that first says what its clock reads: proof that
# faketime reached the very process that ran maintctl.
MAINTCTL_WITH_CLOCK = (
    "import sys, time; print(f'clock={time.time()}', file=sys.stderr, flush=True); "
    "sys.argv[0] = 'maintctl'; from maintctl.cli import main; main()"
)

Clone = Callable[[], str]


@pytest.fixture
def clone(server_url: str, db_url: str) -> Iterator[Clone]:
    """Copies of the test's database, as it is when copied (no session may be open on it)."""
    source = str(conninfo_to_dict(db_url)["dbname"])
    made: list[str] = []

    def copy() -> str:
        name = unique_name("clone")
        with psycopg.connect(server_url, autocommit=True) as admin:
            admin.execute(
                sql.SQL("create database {} template {}").format(
                    sql.Identifier(name), sql.Identifier(source)
                )
            )
        made.append(name)
        return url_for(server_url, name)

    yield copy
    with psycopg.connect(server_url, autocommit=True) as admin:
        for name in made:
            admin.execute(
                sql.SQL("drop database if exists {} with (force)").format(sql.Identifier(name))
            )


def add_rows_around_every_cutoff(conn: Conn) -> None:
    """Rows 30 minutes either side of each default cutoff, in hours (absolute time): an hour of
    daylight saving, or a cutoff taken from a wrong clock, would move some of them across."""
    for side, hours in (("past", 30), ("inside", -30)):
        margin = f"{hours} minutes"
        add_run(conn, "processing", created="3 days", heartbeat=f"24 hours {margin}")
        add_temp_upload(conn, f"24 hours {margin}")
        add_job(conn, "completed", created="8 days", finished=f"168 hours {margin}")
        failed = add_run(conn, "failed", created="31 days", finished=f"720 hours {margin}")
        add_items(conn, failed, 2 if side == "past" else 3)


def comparable(rows: dict[str, list[tuple[Any, ...]]]) -> dict[str, list[tuple[Any, ...]]]:
    """A snapshot without the moments maintctl itself stamps (a stuck run's finished_at, a job's
    compacted_at), which differ between two runs by the seconds between them."""
    runs = [
        (*row[:5], "stamped" if (row[6] or "").startswith("Timed out") else row[5], row[6])
        for row in rows["import_runs"]
    ]
    jobs = [(*row[:8], row[8] is not None) for row in rows["import_jobs"]]
    return {**rows, "import_runs": runs, "import_jobs": jobs}


def state(url: str) -> dict[str, list[tuple[Any, ...]]]:
    # Read in UTC: Python finds an aware datetime in a repeated hour (fold=1) unequal to the same
    # instant in another zone.
    with psycopg.connect(make_conninfo(url, options="-c TimeZone=UTC")) as conn:
        return comparable(snapshot(conn))


def prepared(db_url: str) -> None:
    with psycopg.connect(db_url, autocommit=True) as conn:
        load_sample(conn)
        add_rows_around_every_cutoff(conn)


def run_process(url: str, skew: str | None) -> tuple[float, float, dict[str, Any]]:
    """`maintctl run --json` as its own process, under faketime with a skew; what its clock read,
    the true time, and its JSON."""
    assert FAKETIME is not None
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "MAINTCTL_DATABASE_URL": url,
        # libfaketime's monotonic clock confuses the interpreter's waits; the wall clock is what
        # a wrong cron host gets wrong.
        "FAKETIME_DONT_FAKE_MONOTONIC": "1",
    }
    command = [sys.executable, "-c", MAINTCTL_WITH_CLOCK, "run", "--json", "--quiet"]
    if skew is not None:
        command = [FAKETIME, "-f", skew, *command]
    completed = subprocess.run(
        command, env=env, capture_output=True, text=True, timeout=120, check=False
    )
    assert completed.returncode == 0, completed.stderr
    clock_line, *rest = completed.stderr.splitlines()
    assert rest == [], completed.stderr
    return float(clock_line.removeprefix("clock=")), time.time(), json.loads(completed.stdout)


@pytest.mark.skipif(
    FAKETIME is None, reason="Debian's faketime is not installed (apt install faketime)"
)
@pytest.mark.parametrize(("skew", "days"), [("+2d", 2), ("-2d", -2)])
def test_a_cron_host_two_days_off_changes_exactly_the_rows_the_true_clock_does(
    db_url: str, clone: Clone, skew: str, days: int
) -> None:
    prepared(db_url)
    true_db, skewed_db = clone(), clone()

    true_clock, now, true_run = run_process(true_db, None)
    skewed_clock, later, skewed_run = run_process(skewed_db, skew)

    assert abs(true_clock - now) < 60
    assert abs(skewed_clock - later - days * 86400) < 3600, "the process saw the skewed clock"
    # The run's timestamp comes from the database, not from the host.
    stamped = datetime.fromisoformat(skewed_run["timestamp"].replace("Z", "+00:00"))
    assert abs(stamped.timestamp() - later) < 60
    expected = {key: SAMPLE_TOTALS[key] + 1 for key in SAMPLE_TOTALS}
    expected["rawItemsPurged"] = SAMPLE_TOTALS["rawItemsPurged"] + 2
    assert {key: true_run[key] for key in SAMPLE_TOTALS} == expected
    assert {key: skewed_run[key] for key in SAMPLE_TOTALS} == expected
    assert state(skewed_db) == state(true_db)


def dst_began_days_ago(days: int) -> str:
    """A POSIX time zone whose daylight-saving time began `days` ago (Julian day rules), so that
    the 7-day and 30-day windows both cross the change."""
    today = datetime.now(UTC).date()

    def julian(day: date) -> int:  # POSIX Jn: 1..365, February 29 never counted
        return day.timetuple().tm_yday - (calendar.isleap(day.year) and day.month > 2)

    start, end = today - timedelta(days=days), today + timedelta(days=100)
    return f"AAA0BBB,J{julian(start)}/0,J{julian(end)}/0"


ZONES = ("Asia/Kolkata", "America/New_York", "dst-3-days-ago")


def zone_name(zone: str) -> str:
    return dst_began_days_ago(3) if zone == "dst-3-days-ago" else zone


@pytest.mark.parametrize("how", ["PGTZ", "options", "alter database"])
def test_sessions_in_other_time_zones_change_exactly_the_rows_utc_does(
    db_url: str, clone: Clone, how: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    prepared(db_url)
    utc_db = clone()
    copies = {zone: clone() for zone in ZONES}

    def run(url: str) -> tuple[dict[str, Any], str]:
        """maintctl's run, and the time zone a session like maintctl's gets."""
        result = CliRunner().invoke(app, ["run", "--json"], env={"MAINTCTL_DATABASE_URL": url})
        assert result.exit_code == 0, result.stderr
        with psycopg.connect(url) as session:
            zone = session.execute("show timezone").fetchone()
        assert zone is not None
        return json.loads(result.stdout), str(zone[0])

    utc_run, _ = run(make_conninfo(utc_db, options="-c TimeZone=UTC"))
    seen = {}
    for zone, copy in copies.items():
        name, url = zone_name(zone), copy
        if how == "PGTZ":  # libpq sends it at connect time
            monkeypatch.setenv("PGTZ", name)
        elif how == "options":
            url = make_conninfo(url, options=f"-c TimeZone={name}")
        else:
            with psycopg.connect(url, autocommit=True) as admin:
                admin.execute(
                    sql.SQL("alter database {} set timezone = {}").format(
                        sql.Identifier(str(conninfo_to_dict(url)["dbname"])), sql.Literal(name)
                    )
                )
        zoned_run, seen[zone] = run(url)
        monkeypatch.delenv("PGTZ", raising=False)

        assert {key: zoned_run[key] for key in SAMPLE_TOTALS} == {
            key: utc_run[key] for key in SAMPLE_TOTALS
        }, zone
        assert state(url) == state(utc_db), zone

    assert seen == {zone: zone_name(zone) for zone in ZONES}, "each session had its zone"
