"""What scale needs beyond the batch loop: --vacuum, the progress bar, whole partitions dropped
at once, and status counts that an index answers."""

from __future__ import annotations

import json
import os
import re
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager

import psycopg
import pytest
from psycopg import sql

from tests.conftest import Cli, table_rows
from tests.data import (
    APPLICATION_GRANTS,
    MAINTENANCE_GRANTS,
    Conn,
    add_job,
    add_run,
    add_temp_upload,
    count,
    grant,
    slow_down_deletes,
)
from tests.test_commands import as_role, login_role, maintctl_command
from tests.test_logs import run_on_terminals

APP_TABLES = ("import_runs", "raw_import_items", "temp_uploads", "import_jobs")


def add_old_temp_uploads(conn: Conn, rows: int, age: str = "2 days") -> None:
    conn.execute(
        "insert into temp_uploads (created_at, storage_path) "
        "select now() - %s::interval, 'tmp/' || n from generate_series(1, %s) as n",
        [age, rows],
    )


def vacuum_counts(conn: Conn) -> dict[str, int]:
    rows = conn.execute(
        "select relname, vacuum_count from pg_stat_user_tables "
        "where schemaname = 'public' and relname = any(%s)",
        [list(APP_TABLES)],
    ).fetchall()
    return {name: int(n) for name, n in rows}


def vacuumed_since(conn: Conn, before: dict[str, int]) -> set[str]:
    """The tables whose vacuum_count moved (the statistics may take a moment to show it)."""
    deadline = time.monotonic() + 1
    while True:
        now = vacuum_counts(conn)
        changed = {table for table in APP_TABLES if now[table] != before[table]}
        if changed or time.monotonic() > deadline:
            return changed
        time.sleep(0.1)


# --- --vacuum ---------------------------------------------------------------------------------


def test_vacuum_after_a_big_purge_vacuums_that_table_and_no_other(cli: Cli, conn: Conn) -> None:
    add_old_temp_uploads(conn, 3000)
    add_old_temp_uploads(conn, 200, age="1 hour")
    run = add_run(conn, "completed", created="2 days", finished="2 days")
    add_job(conn, "completed", created="1 hour", finished="1 hour", run_id=run)
    conn.execute("analyze")
    before = vacuum_counts(conn)

    result = cli("run", "--vacuum", "--json")

    assert result.exit_code == 0, result.stderr
    document = json.loads(result.stdout)
    assert document["tempUploadsPurged"] == 3000
    [vacuumed] = document["vacuum"]
    assert vacuumed["table"] == "temp_uploads"
    assert (vacuumed["rowsChanged"], vacuumed["status"], vacuumed["error"]) == (3000, "ok", None)
    assert vacuumed_since(conn, before) == {"temp_uploads"}


def test_a_small_change_is_not_vacuumed_and_without_the_flag_nothing_is(
    cli: Cli, conn: Conn
) -> None:
    add_old_temp_uploads(conn, 3000)
    add_old_temp_uploads(conn, 200, age="1 hour")
    conn.execute("analyze")
    before = vacuum_counts(conn)

    plain = json.loads(cli("purge-temp", "--json").stdout)
    add_old_temp_uploads(conn, 50)  # 50 of 250: 20%, but under 1,000 rows
    small = json.loads(cli("purge-temp", "--vacuum", "--json").stdout)

    assert "vacuum" not in plain
    assert plain["tempUploadsPurged"] == 3000
    assert small["tempUploadsPurged"] == 50
    assert small["vacuum"] == []
    assert vacuumed_since(conn, before) == set()


def test_a_vacuum_postgresql_refuses_is_reported_and_the_run_still_succeeds(
    db_url: str, conn: Conn
) -> None:
    add_old_temp_uploads(conn, 2000)
    with login_role(conn, db_url) as (role, url):
        grant(conn, role, *MAINTENANCE_GRANTS, *APPLICATION_GRANTS)
        result = as_role(url, "purge-temp", "--vacuum", "--json")

    # The rows are gone and the run succeeded; the VACUUM that PostgreSQL skipped (the role
    # does not own the table) is in the JSON and on stderr.
    assert result.exit_code == 0, result.stderr
    document = json.loads(result.stdout)
    assert document["tempUploadsPurged"] == 2000
    assert document["errors"] == []
    [vacuumed] = document["vacuum"]
    assert vacuumed["status"] == "failed"
    assert "temp_uploads" in vacuumed["error"]
    assert any(
        line.startswith("maintctl: warning: VACUUM temp_uploads: ")
        for line in result.stderr.splitlines()
    )
    assert count(conn, "select count(*) from temp_uploads") == 0


# --- the progress bar -------------------------------------------------------------------------


def env_for(db_url: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MAINTCTL_")}
    return {**env, "MAINTCTL_DATABASE_URL": db_url, "TERM": "xterm", "COLUMNS": "100"}


@contextmanager
def slow_purge_of(conn: Conn, rows: int) -> Iterator[None]:
    add_old_temp_uploads(conn, rows)
    slow_down_deletes(conn, 0.0002)  # a few seconds in all: the bar refreshes
    yield


PROGRESS = re.compile(r"purge-temp\s.*\b\d+/1000\b")


def test_a_terminal_shows_a_progress_bar(db_url: str, conn: Conn) -> None:
    with slow_purge_of(conn, 1000):
        code, out, err = run_on_terminals(["purge-temp", "--batch-size", "100"], env_for(db_url))

    output = err.decode(errors="replace")
    assert code == 0, output
    assert PROGRESS.search(output), output
    assert "━" in output
    assert "\x1b[?25l" in output  # the live display hides the cursor while it draws
    assert b"all tasks ok" in out, "the table still reaches stdout"
    assert "━" not in out.decode().split("Run 1")[0], "no bar on stdout"


def test_no_progress_bar_in_a_pipe_or_with_json(db_url: str, conn: Conn) -> None:
    # A bar that should not be there would show even on a quick purge: Rich draws it once more
    # when it stops.
    add_old_temp_uploads(conn, 1000)
    piped = subprocess.run(
        [*maintctl_command(), "purge-temp", "--batch-size", "100"],
        env=env_for(db_url),
        capture_output=True,
        text=True,
        check=False,
    )
    add_old_temp_uploads(conn, 1000)
    code, out, err = run_on_terminals(
        ["purge-temp", "--batch-size", "100", "--json"], env_for(db_url)
    )
    as_json = out.decode()

    assert piped.returncode == 0, piped.stderr
    assert not PROGRESS.search(piped.stdout)
    assert "\x1b[" not in piped.stdout
    assert code == 0, as_json
    assert not PROGRESS.search(as_json + err.decode(errors="replace"))
    assert "\x1b[" not in as_json
    assert json.loads(as_json)["tempUploadsPurged"] == 1000


# --- partitions ---------------------------------------------------------------------------------


def partition_temp_uploads(conn: Conn, *, with_default: bool) -> list[str]:
    """temp_uploads as pg_partman would set it up: range-partitioned by created_at, a partition
    a day from 5 days ago to tomorrow (and a DEFAULT partition). Returns the partitions' names,
    oldest first."""
    conn.execute("drop table temp_uploads")
    conn.execute(
        "create table temp_uploads ("
        " id bigint generated always as identity,"
        " created_at timestamptz not null default now(),"
        " storage_path text not null,"
        " size_bytes bigint,"
        " primary key (id, created_at)"
        ") partition by range (created_at)"
    )
    names = []
    for day in range(-5, 2):
        name = f"temp_uploads_day{day + 5}"
        conn.execute(
            sql.SQL(
                "create table {} partition of temp_uploads for values "
                "from (date_trunc('day', now()) + {}::interval) "
                "to (date_trunc('day', now()) + {}::interval)"
            ).format(
                sql.Identifier(name), sql.Literal(f"{day} days"), sql.Literal(f"{day + 1} days")
            )
        )
        names.append(name)
    if with_default:
        conn.execute("create table temp_uploads_default partition of temp_uploads default")
    conn.execute("create index on temp_uploads (created_at)")
    return names


def partitions(conn: Conn) -> set[str]:
    return {
        str(row[0])
        for row in conn.execute(
            "select inhrelid::regclass::text from pg_inherits "
            "where inhparent = 'temp_uploads'::regclass"
        ).fetchall()
    }


@pytest.mark.parametrize("with_default", [False, True], ids=["concurrently", "default-partition"])
def test_whole_partitions_past_the_ttl_are_dropped_and_the_straddling_one_is_trimmed(
    cli: Cli, conn: Conn, with_default: bool
) -> None:
    names = partition_temp_uploads(conn, with_default=with_default)
    # One upload every hour (on the half hour) over the last 4 days and a half: no row sits
    # within half an hour of the 24h cutoff.
    for hours in range(108):
        add_temp_upload(conn, f"{hours} hours 30 minutes")
    if with_default:
        add_temp_upload(conn, "30 days")  # outside every daily range: in the DEFAULT partition
        add_temp_upload(conn, "-10 days")
    expected = count(
        conn, "select count(*) from temp_uploads where created_at < now() - '1d'::interval"
    )
    old_paths = {
        path
        for (path,) in conn.execute(
            "select storage_path from temp_uploads where created_at < now() - '1d'::interval"
        )
    }
    # Expired: every day that ended before the cutoff (and only those).
    expired = {
        name
        for day, name in enumerate(names, start=-5)
        if count(
            conn,
            "select (date_trunc('day', now()) + %s * interval '1 day' "
            "<= now() - interval '1 day')::integer",
            [day + 1],
        )
    }
    assert {"temp_uploads_day0", "temp_uploads_day1", "temp_uploads_day2"} <= expired
    assert "temp_uploads_day5" not in expired

    result = cli("purge-temp", "--json")

    assert result.exit_code == 0, result.stderr
    document = json.loads(result.stdout)
    assert document["tempUploadsPurged"] == expected
    remaining = partitions(conn)
    assert remaining.isdisjoint(expired)  # dropped, not emptied
    assert set(names) - expired <= remaining
    assert ("temp_uploads_default" in remaining) is with_default
    # Dropped or deleted, every file went to the storage outbox, once, under this run.
    outbox = conn.execute(
        "select storage_path, run_id from maintenance.storage_outbox_files"
    ).fetchall()
    assert sorted(path for path, _ in outbox) == sorted(old_paths)
    assert {run_id for _, run_id in outbox} == {document["runId"]}
    assert (
        count(conn, "select count(*) from temp_uploads where created_at < now() - '1d'::interval")
        == 0
    )
    assert count(
        conn, "select count(*) from temp_uploads where created_at >= now() - '1d'::interval"
    ) == (24 + (1 if with_default else 0))
    assert json.loads(cli("purge-temp", "--json").stdout)["tempUploadsPurged"] == 0


def test_a_dry_run_drops_no_partition(cli: Cli, conn: Conn) -> None:
    names = partition_temp_uploads(conn, with_default=False)
    for hours in range(108):
        add_temp_upload(conn, f"{hours} hours 30 minutes")

    result = cli("purge-temp", "--dry-run", "--json")

    assert result.exit_code == 0, result.stderr
    assert json.loads(result.stdout)["tempUploadsPurged"] == 84
    assert partitions(conn) == set(names)


# --- status is answered by indexes ------------------------------------------------------------

SEQ_SCAN = re.compile(r"Seq Scan on (?:\w+\.)?(\w+)")


def status_plans(conn: Conn) -> str:
    """The plans of every statement status runs inside maintenance.pending_counts, as the server
    executes them (auto_explain logs nested statements to this session)."""
    plans: list[str] = []
    conn.add_notice_handler(lambda diag: plans.append(diag.message_primary or ""))
    conn.execute("load 'auto_explain'")
    conn.execute("set auto_explain.log_min_duration = 0")
    conn.execute("set auto_explain.log_nested_statements = on")
    conn.execute("set client_min_messages = log")
    # As `status` calls it (each count stopping at a limit), and as `status --exact` and the
    # maintenance_status view do. A limit far under the table's size is the case where the
    # planner likes a sequential scan that it hopes to stop early (with nothing eligible it reads
    # the whole table): at 2,000,000 rows `status`'s own limit is such a case.
    for limit in (100000, 10):
        conn.execute(
            "select * from maintenance.pending_counts("
            "'24 hours', '24 hours', '7 days', '30 days', %s)",
            [limit],
        ).fetchall()
    conn.execute(
        "select * from maintenance.pending_counts('24 hours', '24 hours', '7 days', '30 days')"
    ).fetchall()
    conn.execute("set client_min_messages = notice")
    return "\n".join(plans)


def fill_with_nothing_eligible(conn: Conn) -> None:
    """Tables large enough that a sequential scan is the wrong plan, with nothing to clean: what
    status sees every day after the daily run. Failed runs from long ago whose items are gone
    (the case a join would answer by reading every item)."""
    conn.execute(
        "insert into import_runs (status, created_at, started_at, finished_at) "
        "select case when n % 5 = 0 then 'failed' else 'completed' end, "
        "now() - (n % 60) * interval '1 day', now() - (n % 60) * interval '1 day', "
        "now() - (n % 60) * interval '1 day' + interval '1 hour' "
        "from generate_series(1, 4000) as n"
    )
    conn.execute(
        "insert into raw_import_items (run_id, data) "
        "select r.id, jsonb_build_object('line', g) from import_runs r, generate_series(1, 10) g "
        "where not (r.status = 'failed' and r.finished_at < now() - interval '30 days')"
    )
    add_old_temp_uploads(conn, 40000, age="2 hours")
    conn.execute(
        "insert into import_jobs (status, created_at, finished_at, payload, result, log) "
        "select 'completed', now() - interval '1 day', now() - interval '1 day', "
        "'{}'::jsonb, '{}'::jsonb, 'log' from generate_series(1, 20000)"
    )
    conn.execute(
        "insert into import_jobs (status, created_at, finished_at, compacted_at) "
        "select 'completed', now() - interval '20 days', now() - interval '20 days', now() "
        "from generate_series(1, 20000)"
    )
    conn.execute("vacuum analyze")


def test_status_counts_scan_no_large_table(conn: Conn) -> None:
    fill_with_nothing_eligible(conn)

    plans = status_plans(conn)

    assert "Aggregate" in plans  # auto_explain did show the counts' plans
    for table in APP_TABLES:
        assert table in plans
    assert "Limit" in plans
    assert SEQ_SCAN.findall(plans) == [], plans
    row = conn.execute("select * from maintenance.maintenance_status").fetchone()
    assert row == (0, 0, 0, 0)


def test_status_counts_scan_no_large_table_right_after_a_compaction(conn: Conn) -> None:
    # The statistics still describe the backlog the run just compacted (autovacuum has not
    # analyzed the table again yet): a planner that trusts them reads the whole table.
    fill_with_nothing_eligible(conn)
    conn.execute("update import_jobs set compacted_at = null where compacted_at is not null")
    conn.execute("analyze import_jobs")
    conn.execute(
        "update import_jobs set compacted_at = now() where created_at < now() - '10 days'::interval"
    )
    conn.execute("vacuum import_jobs")

    plans = status_plans(conn)

    assert "import_jobs" in plans
    assert SEQ_SCAN.findall(plans) == [], plans


def test_status_counts_stop_at_the_limit_unless_exact(
    cli: Cli, conn: Conn, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("maintctl.status.STATUS_COUNT_LIMIT", 50)
    add_old_temp_uploads(conn, 80)
    add_old_temp_uploads(conn, 20, age="1 hour")

    limited = json.loads(cli("status", "--json").stdout)
    exact = json.loads(cli("status", "--json", "--exact").stdout)
    people = cli("status").stdout

    assert (limited["oldTempUploads"], limited["countLimit"]) == (50, 50)
    assert (limited["stuckRuns"], limited["oldImportJobs"]) == (0, 0)
    assert (exact["oldTempUploads"], exact["countLimit"]) == (80, None)
    assert ["Old temp uploads", "1d", "50+"] in table_rows(people)


def test_a_detach_that_waits_too_long_leaves_the_rows_to_the_batches(
    cli: Cli, conn: Conn, db_url: str
) -> None:
    partition_temp_uploads(conn, with_default=True)
    for hours in range(108):
        add_temp_upload(conn, f"{hours} hours 30 minutes")
    expected = count(
        conn, "select count(*) from temp_uploads where created_at < now() - '1d'::interval"
    )
    before = partitions(conn)

    # The application is mid-transaction on the table: a plain DETACH (there is a DEFAULT
    # partition) needs a lock that waits for it, and gives up after MAINTCTL_LOCK_TIMEOUT.
    with psycopg.connect(db_url) as application:
        application.execute("insert into temp_uploads (storage_path) values ('in flight')")
        result = cli("purge-temp", "--json", env={"MAINTCTL_LOCK_TIMEOUT": "1s"})
        application.rollback()

    assert result.exit_code == 0, result.stderr
    assert json.loads(result.stdout)["tempUploadsPurged"] == expected
    assert partitions(conn) == before  # nothing detached: the batch loop deleted the rows
    assert (
        count(conn, "select count(*) from temp_uploads where created_at < now() - '1d'::interval")
        == 0
    )


def test_an_interrupted_concurrent_detach_is_finished_by_the_next_run(
    cli: Cli, conn: Conn, db_url: str
) -> None:
    names = partition_temp_uploads(conn, with_default=False)
    for hours in range(108):
        add_temp_upload(conn, f"{hours} hours 30 minutes")
    expected = count(
        conn, "select count(*) from temp_uploads where created_at < now() - '1d'::interval"
    )

    # An older transaction that read the table: DETACH ... CONCURRENTLY detaches, then waits for
    # it, gives up after MAINTCTL_LOCK_TIMEOUT and leaves the partition "detach pending".
    with psycopg.connect(db_url) as reader:
        reader.execute("select count(*) from temp_uploads").fetchone()
        first = cli("purge-temp", "--json", env={"MAINTCTL_LOCK_TIMEOUT": "1s"})
        pending = count(conn, "select count(*) from pg_inherits where inhdetachpending")
        reader.rollback()
    second = cli("purge-temp", "--json")

    assert first.exit_code == 0, first.stderr
    assert pending == 1
    assert second.exit_code == 0, second.stderr
    purged = json.loads(first.stdout)["tempUploadsPurged"]
    purged += json.loads(second.stdout)["tempUploadsPurged"]
    assert purged == expected
    assert count(conn, "select count(*) from pg_inherits where inhdetachpending") == 0
    assert names[0] not in partitions(conn)
    assert count(conn, "select count(*) from pg_class where relname = %s", [names[0]]) == 0
