"""The storage outbox: every deleted upload's file is recorded by the statement that deletes the
row, --emit-paths reports a run's files, drain-outbox hands them over durably, and a process
killed at any point loses no path and lists none whose row survived."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import psycopg
import pytest

from tests.conftest import Cli
from tests.data import Conn, count, load_sample, slow_down_deletes


def add_uploads(conn: Conn, how_many: int, age: str) -> dict[int, str]:
    rows = conn.execute(
        "insert into temp_uploads (created_at, storage_path, size_bytes) "
        "select now() - %s::interval - n * interval '1 second', 'bucket/' || n || '.csv', n "
        "from generate_series(1, %s) n returning id, storage_path",
        [age, how_many],
    ).fetchall()
    return {row[0]: row[1] for row in rows}


def lines(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def outbox(conn: Conn) -> dict[int, str]:
    rows = conn.execute(
        "select upload_id::bigint, storage_path from maintenance.storage_outbox_files"
    ).fetchall()
    return {row[0]: row[1] for row in rows}


def surviving(conn: Conn) -> dict[int, str]:
    rows = conn.execute("select id, storage_path from temp_uploads").fetchall()
    return {row[0]: row[1] for row in rows}


def test_purge_temp_emits_the_paths_it_deleted_and_keeps_them_in_the_outbox(
    cli: Cli, conn: Conn, tmp_path: Path
) -> None:
    old = add_uploads(conn, 7, "2 days")
    fresh = add_uploads(conn, 2, "1 hour")
    target = tmp_path / "deleted.jsonl"

    result = cli("purge-temp", "--batch-size", "3", "--emit-paths", str(target), "--json")

    assert result.exit_code == 0, result.stderr
    run_id = json.loads(result.stdout)["runId"]
    emitted = lines(target)
    assert {line["uploadId"]: line["path"] for line in emitted} == old
    assert {line["runId"] for line in emitted} == {run_id}
    assert all(line["sizeBytes"] > 0 and line["deletedAt"].endswith("Z") for line in emitted)
    assert outbox(conn) == old
    assert surviving(conn) == fresh


def test_emit_paths_on_stdout_and_not_with_json(cli: Cli, conn: Conn) -> None:
    old = add_uploads(conn, 2, "2 days")

    refused = cli("purge-temp", "--emit-paths", "-", "--json")
    printed = cli("run", "--emit-paths", "-")

    assert refused.exit_code == 2
    assert refused.stderr == (
        "maintctl: error: --emit-paths -: stdout carries the JSON report; name a file instead\n"
    )
    assert printed.exit_code == 0, printed.stderr
    paths = [json.loads(line)["path"] for line in printed.stdout.splitlines() if line[:1] == "{"]
    assert sorted(paths) == sorted(old.values())


def test_a_dry_run_records_nothing(cli: Cli, conn: Conn, tmp_path: Path) -> None:
    add_uploads(conn, 3, "2 days")
    target = tmp_path / "none.jsonl"

    result = cli("purge-temp", "--dry-run", "--emit-paths", str(target), "--json")

    assert json.loads(result.stdout)["tempUploadsPurged"] == 3
    assert target.read_text() == ""
    assert outbox(conn) == {}
    assert count(conn, "select count(*) from temp_uploads") == 3


def test_drain_hands_the_whole_outbox_over_and_clears_exactly_that(
    cli: Cli, conn: Conn, tmp_path: Path
) -> None:
    old = add_uploads(conn, 5, "3 days")
    assert cli("purge-temp", "--batch-size", "2").exit_code == 0
    older = add_uploads(conn, 2, "4 days")
    assert cli("purge-temp").exit_code == 0
    first, second = tmp_path / "first.jsonl", tmp_path / "second.jsonl"

    drained = cli("drain-outbox", str(first), "--json")
    empty = cli("drain-outbox", str(second))

    assert drained.exit_code == 0, drained.stderr
    assert json.loads(drained.stdout) == {"file": str(first), "paths": 7, "sizeBytes": 18}
    assert {line["uploadId"]: line["path"] for line in lines(first)} == {**old, **older}
    assert {line["runId"] for line in lines(first)} == {1, 2}
    assert outbox(conn) == {}
    assert count(conn, "select count(*) from maintenance.storage_outbox") == 0
    assert empty.exit_code == 0, empty.stderr
    assert empty.stdout.startswith("wrote 0 path(s) (0 bytes of files) to ")
    assert second.read_text() == ""
    assert not [name for name in os.listdir(tmp_path) if name.endswith(".tmp")]


def test_drain_never_overwrites_a_file_and_then_clears_nothing(
    cli: Cli, conn: Conn, tmp_path: Path
) -> None:
    old = add_uploads(conn, 2, "2 days")
    assert cli("purge-temp").exit_code == 0
    target = tmp_path / "handover.jsonl"
    target.write_text("not yet taken by the storage cleaner\n")

    result = cli("drain-outbox", str(target))

    assert result.exit_code == 2
    assert result.stderr == (
        f"maintctl: error: {target} already exists: let the storage cleaner take it first "
        "(drain-outbox never overwrites a file it may have handed over)\n"
    )
    assert target.read_text() == "not yet taken by the storage cleaner\n"
    assert outbox(conn) == old


def test_a_drain_that_fails_after_the_file_is_durable_hands_the_paths_over_again(
    cli: Cli, conn: Conn, db_url: str, tmp_path: Path
) -> None:
    import psycopg

    old = add_uploads(conn, 3, "2 days")
    assert cli("purge-temp").exit_code == 0
    first, second = tmp_path / "first.jsonl", tmp_path / "second.jsonl"
    with psycopg.connect(db_url) as other:
        # Clearing the outbox cannot happen now: the drain fails after writing its file.
        other.execute("lock table maintenance.storage_outbox in exclusive mode")

        failed = cli("drain-outbox", str(first), env={"MAINTCTL_LOCK_TIMEOUT": "1s"})

        other.rollback()
    again = cli("drain-outbox", str(second))

    assert failed.exit_code != 0
    assert {line["uploadId"] for line in lines(first)} == set(old)  # handed over...
    assert {line["uploadId"] for line in lines(second)} == set(old)  # ...and again, not lost
    assert again.exit_code == 0
    assert outbox(conn) == {}


def test_the_pg_cron_procedure_records_files_under_its_run(conn: Conn) -> None:
    load_sample(conn)

    row = conn.execute("call maintenance.run_maintenance_cleanup()").fetchone()

    assert row is not None
    recorded = conn.execute(
        "select run_id, count(*) from maintenance.storage_outbox_files group by run_id"
    ).fetchall()
    assert recorded == [(row[0]["runId"], 289)]


def test_a_purge_killed_at_any_moment_loses_no_path_and_lists_no_surviving_row(
    conn: Conn, db_url: str, tmp_path: Path
) -> None:
    original = add_uploads(conn, 400, "2 days")
    slow_down_deletes(conn, 0.01)
    env = {**os.environ, "MAINTCTL_DATABASE_URL": db_url}
    command = [sys.executable, "-m", "maintctl", "purge-temp", "--batch-size", "7"]

    for kill_after in (0.8, 1.2, 1.0):
        process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, cwd=tmp_path)
        time.sleep(kill_after)
        process.send_signal(signal.SIGKILL)
        process.wait()
        _wait_for_maintctl_sessions_to_end(conn)

        listed, left = outbox(conn), surviving(conn)
        assert listed.keys() & left.keys() == set()
        assert {**listed, **left} == original
    assert 0 < len(outbox(conn)) < len(original)


def _wait_for_maintctl_sessions_to_end(conn: Conn) -> None:
    """The server notices a killed client when its statement ends; end that session now."""
    mine = (
        "select pid from pg_stat_activity where datname = current_database() "
        "and application_name = 'maintctl'"
    )
    for (pid,) in conn.execute(mine).fetchall():
        conn.execute("select pg_terminate_backend(%s, 5000)", [pid])
    deadline = time.monotonic() + 10
    while conn.execute(mine).fetchall() and time.monotonic() < deadline:
        time.sleep(0.05)


def test_a_file_that_cannot_be_written_is_refused_before_anything_is_deleted(
    cli: Cli, conn: Conn, tmp_path: Path
) -> None:
    add_uploads(conn, 2, "2 days")
    missing = tmp_path / "no-such-directory" / "paths.jsonl"

    purge = cli("purge-temp", "--emit-paths", str(missing))
    drain = cli("drain-outbox", str(missing))

    assert purge.exit_code == drain.exit_code == 2
    assert purge.stderr == (f"maintctl: error: --emit-paths: {missing.parent} is not a directory\n")
    assert drain.stderr == f"maintctl: error: drain-outbox: {missing.parent} is not a directory\n"
    assert count(conn, "select count(*) from temp_uploads") == 2
    assert count(conn, "select count(*) from maintenance.runs") == 0


def test_drain_to_dash_writes_stdout_and_a_closed_stdout_clears_nothing(
    cli: Cli, conn: Conn, db_url: str, tmp_path: Path
) -> None:
    from tests.test_commands import cron_environment, maintctl_command

    old = add_uploads(conn, 3, "2 days")
    assert cli("purge-temp").exit_code == 0
    reading, writing = os.pipe()
    os.close(reading)  # the storage cleaner died before reading

    refused_json = cli("drain-outbox", "-", "--json")
    broken = subprocess.run(
        [*maintctl_command(), "drain-outbox", "-"],
        env=cron_environment(db_url),
        stdout=writing,
        capture_output=False,
        stderr=subprocess.PIPE,
        text=True,
        check=False,
    )
    os.close(writing)
    kept = outbox(conn)
    drained = cli("drain-outbox", "-")

    assert refused_json.exit_code == 2
    assert refused_json.stderr == (
        "maintctl: error: drain-outbox -: stdout carries the paths; drop --json or name a file\n"
    )
    assert broken.returncode == 2
    assert broken.stderr.startswith("maintctl: error: drain-outbox: cannot write to stdout: ")
    assert broken.stderr.endswith("; nothing was cleared\n")
    assert kept == old
    assert drained.exit_code == 0, drained.stderr
    handed = [json.loads(line) for line in drained.stdout.splitlines()]
    assert {line["uploadId"]: line["path"] for line in handed} == old
    assert drained.stderr == (
        "maintctl: wrote 3 path(s) (6 bytes of files) to stdout and cleared them from the "
        "storage outbox\n"
    )
    assert not (tmp_path / "-").exists()
    assert outbox(conn) == {}


def test_drain_to_a_place_it_cannot_create_files_is_one_line_and_clears_nothing(
    cli: Cli, conn: Conn
) -> None:
    old = add_uploads(conn, 2, "2 days")
    assert cli("purge-temp").exit_code == 0

    result = cli("drain-outbox", "/proc/maintctl-paths.jsonl")

    assert result.exit_code == 2
    assert result.stderr.startswith(
        "maintctl: error: drain-outbox: cannot write /proc/maintctl-paths.jsonl: "
    )
    assert result.stderr.endswith("; nothing was cleared\n")
    assert result.stderr.count("\n") == 1
    assert outbox(conn) == old


def test_emit_paths_never_overwrites_last_nights_file(cli: Cli, conn: Conn, tmp_path: Path) -> None:
    add_uploads(conn, 2, "2 days")
    target = tmp_path / "deleted.jsonl"
    target.write_text("last night's, not yet taken\n")

    result = cli("purge-temp", "--emit-paths", str(target))

    assert result.exit_code == 2
    assert result.stderr == (
        f"maintctl: error: --emit-paths: {target} already exists: name a new file, e.g. with the "
        "date in it (maintctl never overwrites a list of paths that may not have been taken yet)\n"
    )
    assert target.read_text() == "last night's, not yet taken\n"
    assert count(conn, "select count(*) from temp_uploads") == 2, "refused before any work"


def test_a_row_changed_after_the_batchs_snapshot_fails_the_batch_and_records_no_file(
    cli: Cli, conn: Conn, db_url: str
) -> None:
    # The CLI's batches run in one snapshot (REPEATABLE READ), where purge-temp reads the files
    # of its range before the DELETE. A row the application changes after that snapshot must
    # fail the batch, not leave a file recorded for a row that stays.
    old = add_uploads(conn, 5, "2 days")
    changed = min(old)
    with psycopg.connect(db_url) as batch:
        batch.isolation_level = psycopg.IsolationLevel.REPEATABLE_READ
        batch.execute("select 1")  # the batch's snapshot
        conn.execute("update temp_uploads set created_at = now() where id = %s", [changed])
        with pytest.raises(psycopg.errors.SerializationFailure):
            batch.execute(
                "select * from maintenance.rule_step('temp', now() - interval '1 day', "
                "interval '1 day', 100, null, null, null)"
            )
        batch.rollback()

    assert outbox(conn) == {}
    assert set(surviving(conn)) == set(old)
    purged = cli("purge-temp", "--json")
    assert json.loads(purged.stdout)["tempUploadsPurged"] == 4
    assert outbox(conn) == {key: path for key, path in old.items() if key != changed}
    assert set(surviving(conn)) == {changed}


def test_a_batch_whose_snapshot_conflicts_is_done_again_in_read_committed(
    cli: Cli, conn: Conn
) -> None:
    old = add_uploads(conn, 6, "2 days")
    # Every delete in one snapshot fails as if the application had changed the row meanwhile
    # (counted by a sequence, which a rollback does not undo); in READ COMMITTED it goes through.
    conn.execute("create sequence one_snapshot_attempts")
    conn.execute(
        "create function conflict_in_one_snapshot() returns trigger language plpgsql as $$ "
        "begin "
        "  if current_setting('transaction_isolation') = 'repeatable read' then "
        "    perform nextval('one_snapshot_attempts'); "
        "    raise exception 'changed meanwhile' using errcode = 'serialization_failure'; "
        "  end if; "
        "  return old; "
        "end $$"
    )
    conn.execute(
        "create trigger conflict before delete on temp_uploads "
        "for each row execute function conflict_in_one_snapshot()"
    )

    result = cli("purge-temp", "--batch-size", "4", "--json")

    assert result.exit_code == 0, result.stderr
    task = json.loads(result.stdout)["tasks"][0]
    assert (task["status"], task["rows"], task["batches"]) == ("ok", 6, 2)
    assert outbox(conn) == old
    assert surviving(conn) == {}
    assert count(conn, "select last_value from one_snapshot_attempts") == 2
