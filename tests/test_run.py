"""`maintctl run` and the task commands: JSON, tables, dry run, isolation, skips and exit codes."""

from __future__ import annotations

import json

import psycopg
import pytest

from maintctl.sqlfiles import migrations
from tests.conftest import Cli, table_rows
from tests.data import (
    Conn,
    add_temp_upload,
    count,
    hold_run_lease,
    load_sample,
    slow_down_deletes,
    snapshot,
)

RUN_KEYS = [
    "timestamp",
    "runId",
    "dryRun",
    "stuckRunsMarked",
    "tempUploadsPurged",
    "importJobsCompacted",
    "rawItemsPurged",
    "errors",
    "skipped",
    "durationMs",
    "walBytes",
    "throttledMs",
    "peakReplicaLagBytes",
    "peakReplicaLagMs",
    "tasks",
]
TASK_KEYS = [
    "task",
    "status",
    "rows",
    "batches",
    "durationMs",
    "cutoff",
    "error",
    "remaining",
    "batchSize",
    "walBytes",
    "throttledMs",
    "peakReplicaLagBytes",
    "peakReplicaLagMs",
]
SAMPLE_TOTALS = {
    "stuckRunsMarked": 15,
    "tempUploadsPurged": 289,
    "importJobsCompacted": 210,
    "rawItemsPurged": 250,
}


def totals(document: dict[str, object]) -> dict[str, object]:
    return {key: document[key] for key in SAMPLE_TOTALS}


def test_run_json_has_the_contract_keys_and_counts(cli: Cli, conn: Conn) -> None:
    load_sample(conn)

    result = cli("run", "--json")

    assert result.exit_code == 0, result.stderr
    document = json.loads(result.stdout)
    assert list(document) == RUN_KEYS
    assert totals(document) == SAMPLE_TOTALS
    assert document["dryRun"] is False
    assert document["errors"] == []
    assert document["skipped"] is None
    assert document["timestamp"].endswith("Z")
    assert len(document["timestamp"]) == 24
    assert [task["task"] for task in document["tasks"]] == ["stuck", "temp", "compact", "raw"]
    for task in document["tasks"]:
        assert list(task) == TASK_KEYS
        assert task["status"] == "ok"
        assert task["cutoff"].endswith("Z")
    ledger = conn.execute("select id, status from maintenance.runs").fetchall()
    assert ledger == [(document["runId"], "succeeded")]


def test_run_prints_a_table_for_people(cli: Cli, conn: Conn) -> None:
    load_sample(conn)

    result = cli("run")

    assert result.exit_code == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == "Run 1"
    rows = table_rows(result.stdout)
    assert [row[:3] for row in rows] == [
        ["stuck", "ok", "15"],
        ["purge-temp", "ok", "289"],
        ["compact", "ok", "210"],
        ["purge-raw", "ok", "250"],
    ]
    # A probe of 10 rows, then batches sized to the time it took.
    assert all(int(row[3]) >= 2 for row in rows)
    assert lines[-1].startswith("all tasks ok in ")
    # The step lines go to stderr (docs/production.md), never into the table on stdout.
    assert result.stderr.splitlines()[-1].startswith("maintctl: run 1 succeeded in ")
    assert "maintctl:" not in result.stdout


def test_second_run_does_nothing(cli: Cli, conn: Conn) -> None:
    load_sample(conn)
    assert cli("run").exit_code == 0
    before = snapshot(conn)

    document = json.loads(cli("run", "--json").stdout)

    assert totals(document) == dict.fromkeys(SAMPLE_TOTALS, 0)
    assert snapshot(conn) == before


def test_dry_run_reports_what_the_real_run_then_does_and_changes_nothing(
    cli: Cli, conn: Conn
) -> None:
    load_sample(conn)
    before = snapshot(conn)

    dry = json.loads(cli("run", "--dry-run", "--json").stdout)

    assert snapshot(conn) == before
    assert dry["dryRun"] is True
    real = json.loads(cli("run", "--json").stdout)
    assert totals(dry) == totals(real) == SAMPLE_TOTALS
    assert [t["rows"] for t in dry["tasks"]] == [t["rows"] for t in real["tasks"]]


def test_single_task_command_runs_only_its_task(cli: Cli, conn: Conn) -> None:
    load_sample(conn)

    document = json.loads(cli("purge-temp", "--json").stdout)

    assert totals(document) == {**dict.fromkeys(SAMPLE_TOTALS, 0), "tempUploadsPurged": 289}
    assert [task["task"] for task in document["tasks"]] == ["temp"]
    assert count(conn, "select count(*) from import_runs where status = 'processing'") == 21


def test_work_is_done_in_batches_of_the_batch_size(cli: Cli, conn: Conn) -> None:
    for _ in range(7):
        add_temp_upload(conn, "2 days")

    document = json.loads(cli("purge-temp", "--batch-size", "3", "--json").stdout)

    # At most 3 rows a batch; fewer when a batch is slow (a loaded machine makes the first one so:
    # the next is sized to the time budget).
    task = document["tasks"][0]
    assert task["rows"] == 7
    assert task["batches"] >= 3
    assert task["batchSize"] <= 3


def test_a_failing_task_is_recorded_and_the_others_still_run(cli: Cli, conn: Conn) -> None:
    load_sample(conn)
    conn.execute("drop table temp_uploads")

    result = cli("run", "--json")

    assert result.exit_code == 1
    document = json.loads(result.stdout)
    statuses = {task["task"]: task["status"] for task in document["tasks"]}
    assert statuses == {"stuck": "ok", "temp": "failed", "compact": "ok", "raw": "ok"}
    assert document["stuckRunsMarked"] == 15
    assert document["rawItemsPurged"] == 250
    assert len(document["errors"]) == 1
    assert "temp_uploads" in document["errors"][0]
    row = conn.execute("select status, errors from maintenance.runs").fetchone()
    assert row is not None
    assert row[0] == "failed"
    assert row[1] == document["errors"]


def test_exit_78_before_migrate(bare_cli: Cli) -> None:
    result = bare_cli("run")

    assert result.exit_code == 78
    assert result.stderr == (
        "maintctl: error: the maintenance schema is not installed; run: maintctl migrate\n"
    )


def test_exit_78_when_migrations_are_out_of_date(cli: Cli, conn: Conn) -> None:
    conn.execute("delete from maintenance.schema_migrations where version = 4")

    result = cli("status")

    assert result.exit_code == 78
    known = len(migrations())
    expected = f"out of date ({known - 1} of {known} migrations applied); run: maintctl migrate"
    assert expected in result.stderr


def test_exit_2_for_a_bad_option(cli: Cli, conn: Conn) -> None:
    add_temp_upload(conn, "2 days")

    unknown = cli("run", "--frobnicate")
    bad_number = cli("run", "--batch-size", "many")
    bad_duration = cli("purge-temp", "--older-than", "soon")
    zero = cli("purge-temp", "--batch-size", "0")

    for result in (unknown, bad_number, bad_duration, zero):
        assert result.exit_code == 2
    assert unknown.stderr.startswith("maintctl: error: No such option: --frobnicate")
    assert bad_duration.stderr == (
        "maintctl: error: --older-than: 'soon' is not a duration "
        "(use e.g. 90s, 15m, 24h, 7d, 2w or 1d12h)\n"
    )
    assert "--batch-size" in zero.stderr
    assert count(conn, "select count(*) from temp_uploads") == 1
    assert count(conn, "select count(*) from maintenance.runs") == 0


def test_threshold_under_an_hour_needs_force(cli: Cli, conn: Conn) -> None:
    upload = add_temp_upload(conn, "40 minutes")

    refused = cli("purge-temp", "--older-than", "30m")

    assert refused.exit_code == 2
    assert refused.stderr == (
        "maintctl: error: --older-than: 30m is under the 1h floor "
        "(add --force if you really mean it)\n"
    )
    assert count(conn, "select count(*) from temp_uploads where id = %s", [upload]) == 1
    forced = cli("purge-temp", "--older-than", "30m", "--force", "--json")
    assert forced.exit_code == 0
    assert json.loads(forced.stdout)["tempUploadsPurged"] == 1


def test_exit_75_when_disabled(cli: Cli, conn: Conn) -> None:
    add_temp_upload(conn, "2 days")

    result = cli("run", "--json", env={"MAINTCTL_ENABLED": "false"})

    assert result.exit_code == 75
    assert (
        json.loads(result.stdout)["skipped"] == "maintenance is disabled (MAINTCTL_ENABLED=false)"
    )
    assert "disabled" in result.stderr
    assert count(conn, "select count(*) from temp_uploads") == 1


def test_exit_75_when_paused_in_the_database_and_0_after_resume(cli: Cli, conn: Conn) -> None:
    add_temp_upload(conn, "2 days")
    assert cli("pause", "--reason", "restoring a backup").exit_code == 0

    paused = cli("purge-temp", "--json")

    assert paused.exit_code == 75
    skipped = json.loads(paused.stdout)["skipped"]
    assert "paused" in skipped
    assert "restoring a backup" in skipped
    assert count(conn, "select count(*) from temp_uploads") == 1
    assert cli("resume").exit_code == 0
    resumed = cli("purge-temp", "--json")
    assert resumed.exit_code == 0
    assert json.loads(resumed.stdout)["tempUploadsPurged"] == 1


def test_a_dry_run_while_paused_counts_and_notes_the_pause(cli: Cli, conn: Conn) -> None:
    add_temp_upload(conn, "2 days")
    assert cli("pause", "--reason", "restoring a backup").exit_code == 0

    dry = cli("run", "--dry-run", "--json")
    real = cli("run", "--json")

    assert dry.exit_code == 0, dry.stderr
    document = json.loads(dry.stdout)
    assert document["skipped"] is None
    assert document["tempUploadsPurged"] == 1
    assert "maintctl: warning: maintenance is paused since " in dry.stderr
    assert dry.stderr.count("maintctl: warning:") == 1
    assert "restoring a backup (maintctl resume); a dry run changes nothing, so it goes on" in (
        dry.stderr
    )
    assert real.exit_code == 75
    assert count(conn, "select count(*) from temp_uploads") == 1


def test_a_run_is_skipped_with_exit_0_while_another_holds_the_lock(
    cli: Cli, conn: Conn, db_url: str
) -> None:
    add_temp_upload(conn, "2 days")
    with psycopg.connect(db_url, autocommit=True) as other:
        hold_run_lease(other, "cron-host-a")

        result = cli("run", "--json")
        dry = cli("run", "--dry-run", "--json")

    assert result.exit_code == 0
    skipped = json.loads(result.stdout)["skipped"]
    assert skipped.startswith("another maintenance run is in progress (host cron-host-a, started ")
    assert count(conn, "select count(*) from temp_uploads") == 1
    # A dry run changes nothing, so it needs no lock.
    assert json.loads(dry.stdout)["tempUploadsPurged"] == 1


def test_max_runtime_stops_between_batches_and_the_next_run_carries_on(
    cli: Cli, conn: Conn
) -> None:
    for _ in range(5):
        add_temp_upload(conn, "2 days")
    # Each deleted row takes 1.2 s, so with one row per batch the 2 s budget is spent after the
    # second batch.
    slow_down_deletes(conn, 1.2)

    first = json.loads(
        cli("purge-temp", "--batch-size", "1", "--max-runtime", "2s", "--json").stdout
    )

    task = first["tasks"][0]
    assert (task["status"], task["rows"], task["batches"]) == ("stopped", 2, 2)
    assert "max runtime" in task["error"]
    assert first["errors"] == []
    assert count(conn, "select count(*) from temp_uploads") == 3
    conn.execute("drop trigger slow on temp_uploads")
    second = json.loads(cli("purge-temp", "--json").stdout)
    assert second["tempUploadsPurged"] == 3


def test_unreachable_database_exits_69_without_a_traceback(cli: Cli) -> None:
    result = cli(
        "status",
        env={
            "MAINTCTL_DATABASE_URL": "postgresql://maintctl@127.0.0.1:1/nowhere",
            "MAINTCTL_CONNECT_TIMEOUT": "1s",
        },
    )

    assert result.exit_code == 69
    assert result.stderr.startswith(
        "maintctl: error: cannot connect to maintctl@127.0.0.1:1/nowhere"
    )
    assert result.stderr.count("\n") == 1
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize("command", ["run", "stuck", "purge-temp", "compact", "purge-raw"])
def test_every_task_command_exits_75_when_disabled(cli: Cli, conn: Conn, command: str) -> None:
    load_sample(conn)
    before = snapshot(conn)

    result = cli(command, env={"MAINTCTL_ENABLED": "false"})

    assert result.exit_code == 75
    assert result.stdout == ""
    assert result.stderr == "maintctl: error: maintenance is disabled (MAINTCTL_ENABLED=false)\n"
    assert snapshot(conn) == before


@pytest.mark.parametrize(
    ("command", "task", "rows"),
    [
        ("stuck", "stuck", 15),
        ("purge-temp", "purge-temp", 289),
        ("compact", "compact", 210),
        ("purge-raw", "purge-raw", 250),
    ],
)
def test_single_task_commands_print_a_table(
    cli: Cli, conn: Conn, command: str, task: str, rows: int
) -> None:
    load_sample(conn)

    result = cli(command)

    assert result.exit_code == 0, result.stderr
    cells = table_rows(result.stdout)
    assert len(cells) == 1
    assert cells[0][:3] == [task, "ok", f"{rows:,}"]
    assert int(cells[0][3]) >= 2  # a probe of 10 rows first
    assert result.stdout.splitlines()[-1].startswith("all tasks ok in ")


def test_a_table_the_application_has_locked_fails_that_task_after_the_lock_timeout(
    cli: Cli, conn: Conn, db_url: str
) -> None:
    load_sample(conn)
    with psycopg.connect(db_url) as application:
        application.execute("lock table temp_uploads in exclusive mode")

        result = cli("run", "--json", env={"MAINTCTL_LOCK_TIMEOUT": "1s"})

        application.rollback()

    assert result.exit_code == 1
    document = json.loads(result.stdout)
    statuses = {task["task"]: task["status"] for task in document["tasks"]}
    assert statuses == {"stuck": "ok", "temp": "failed", "compact": "ok", "raw": "ok"}
    assert document["errors"] == ["temp: canceling statement due to lock timeout"]
    assert document["tasks"][1]["durationMs"] < 4000
    assert count(conn, "select count(*) from temp_uploads") == 433


def test_in_a_pipe_the_table_keeps_a_long_error_whole(cli: Cli, conn: Conn) -> None:
    conn.execute("alter table temp_uploads rename column created_at to created")
    document = json.loads(cli("purge-temp", "--json").stdout)
    error = document["tasks"][0]["error"]
    assert len(error) > 30, "longer than what 80 columns leave for its cell"

    result = cli("purge-temp", env={"COLUMNS": "80"})

    assert result.exit_code == 1
    [row] = [row for row in table_rows(result.stdout) if row[0] == "purge-temp"]
    assert row[1] == f"failed: {error}", "one line, not wrapped or cut at 80 columns"
