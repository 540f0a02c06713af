"""Rows a rule cannot change (DESIGN.md, "Real databases"): a foreign key that restricts a delete,
a trigger that raises, a check. The rest of the batch and of the task proceed, the task names the
blocked rows with the error and fails (exit 1), and the next run goes past them again. A task whose
changes did not happen (a BEFORE trigger that cancels them) never reports ok."""

from __future__ import annotations

import json
from typing import Any

import psycopg
import pytest

from tests.conftest import Cli
from tests.data import Conn, add_items, add_job, add_run, count


def add_old_uploads(conn: Conn, rows: int) -> list[int]:
    """`rows` temp uploads past the TTL, oldest first, each with its own file."""
    found = conn.execute(
        "insert into temp_uploads (created_at, storage_path) "
        "select now() - interval '3 days' + n * interval '1 minute', 'tmp/' || n "
        "from generate_series(1, %s) n returning id",
        [rows],
    ).fetchall()
    return sorted(int(row[0]) for row in found)


def task_of(report: dict[str, Any], name: str) -> dict[str, Any]:
    found: dict[str, Any] = next(t for t in report["tasks"] if t["task"] == name)
    return found


def outbox_paths(conn: Conn) -> list[str]:
    rows = conn.execute(
        "select unnest(storage_paths) from maintenance.storage_outbox order by 1"
    ).fetchall()
    return [str(row[0]) for row in rows]


def referenced_by_the_application(conn: Conn, *uploads: int) -> None:
    """Another table of the application refers to these uploads, ON DELETE RESTRICT."""
    conn.execute(
        "create table upload_refs (upload_id bigint not null "
        "constraint upload_refs_upload_fk references temp_uploads on delete restrict)"
    )
    conn.execute("insert into upload_refs select unnest(%s::bigint[])", [list(uploads)])


@pytest.mark.parametrize("batch_size", ["1", "8", "5000"])
def test_an_upload_a_foreign_key_keeps_is_named_and_every_other_one_goes(
    cli: Cli, conn: Conn, batch_size: str
) -> None:
    uploads = add_old_uploads(conn, 30)
    kept = [uploads[0], uploads[17]]  # the oldest, where each run's walk starts, and one inside
    referenced_by_the_application(conn, *kept)

    doctor = cli("doctor")
    dry = cli("purge-temp", "--dry-run", "--json")
    result = cli("purge-temp", "--json", "--batch-size", batch_size)

    # Doctor warns of it first: the run's exit 1 is no surprise.
    assert doctor.exit_code == 0, doctor.stdout
    assert (
        "warn foreign keys: a row of temp_uploads that upload_refs (upload_refs_upload_fk, "
        "ON DELETE RESTRICT) refers to is not deleted: temp leaves it, names it and fails "
        "(exit 1)"
    ) in " ".join(doctor.stdout.split())

    assert json.loads(dry.stdout)["tempUploadsPurged"] == 30
    assert result.exit_code == 1, result.stderr
    report = json.loads(result.stdout)
    task = task_of(report, "temp")
    assert report["tempUploadsPurged"] == task["rows"] == 28
    assert task["status"] == "failed"
    assert task["remaining"] == 2
    # PostgreSQL 18 says "violates RESTRICT setting of foreign key constraint", 15 "violates
    # foreign key constraint".
    assert task["error"].startswith(
        f"2 row(s) could not be changed and were left as they are (first: key {kept[0]}: "
        'update or delete on table "temp_uploads" violates '
    )
    assert task["error"].endswith(
        'foreign key constraint "upload_refs_upload_fk" on table "upload_refs" '
        "[constraint upload_refs_upload_fk])"
    )
    remaining = conn.execute("select id from temp_uploads order by id").fetchall()
    assert [row[0] for row in remaining] == kept
    # Exactly the deleted uploads' files are in the outbox: none of a row still there.
    assert outbox_paths(conn) == sorted(f"tmp/{n}" for n in range(1, 31) if n not in (1, 18))
    ledger = conn.execute(
        "select status, errors from maintenance.runs where not dry_run"
    ).fetchone()
    assert ledger is not None
    assert ledger[0] == "failed"
    assert ledger[1] == [f"temp: {task['error']}"]


def test_the_next_run_goes_past_the_blocked_rows_again(cli: Cli, conn: Conn) -> None:
    uploads = add_old_uploads(conn, 5)
    referenced_by_the_application(conn, uploads[0])
    assert cli("purge-temp", "--batch-size", "2").exit_code == 1
    newer = add_old_uploads(conn, 7)

    again = cli("purge-temp", "--json", "--batch-size", "2")

    assert again.exit_code == 1
    assert task_of(json.loads(again.stdout), "temp")["rows"] == 7
    assert count(conn, "select count(*) from temp_uploads") == 1
    assert set(newer).isdisjoint(r[0] for r in conn.execute("select id from temp_uploads"))


def test_a_run_a_trigger_refuses_to_mark_is_left_and_the_others_are_marked(
    cli: Cli, conn: Conn
) -> None:
    runs = [add_run(conn, "processing", heartbeat="2 days") for _ in range(6)]
    refused = runs[3]
    conn.execute(
        f"""
        create function refuse_run() returns trigger language plpgsql as $$
        begin raise exception 'run % is audited', old.id; end $$;
        create trigger refuse before update on import_runs for each row
          when (old.id = {refused}) execute function refuse_run();
        """
    )

    result = cli("stuck", "--json", "--batch-size", "4")

    assert result.exit_code == 1
    task = task_of(json.loads(result.stdout), "stuck")
    assert task["rows"] == 5
    assert task["error"].startswith(
        f"1 row(s) could not be changed and were left as they are (first: key {refused}: "
        f"run {refused} is audited)"
    )
    statuses = dict(conn.execute("select id, status from import_runs").fetchall())
    assert statuses == {run: "processing" if run == refused else "failed" for run in runs}


def test_a_job_a_check_refuses_to_compact_is_left_and_the_others_are_compacted(
    cli: Cli, conn: Conn
) -> None:
    jobs = [add_job(conn, "completed", created="9 days", finished="8 days") for _ in range(5)]
    conn.execute(
        "alter table import_jobs add constraint keep_the_log_of_job "
        f"check (id <> {jobs[2]} or log is not null) not valid"
    )

    result = cli("compact", "--json")

    assert result.exit_code == 1
    task = task_of(json.loads(result.stdout), "compact")
    assert task["rows"] == 4
    assert "[constraint keep_the_log_of_job]" in task["error"]
    compacted = dict(conn.execute("select id, compacted_at is not null from import_jobs"))
    assert compacted == {job: job != jobs[2] for job in jobs}


def test_an_item_a_trigger_keeps_is_left_and_the_rest_of_its_run_goes(cli: Cli, conn: Conn) -> None:
    first = add_run(conn, "failed", created="40 days", finished="35 days")
    second = add_run(conn, "failed", created="40 days", finished="35 days")
    add_items(conn, first, 6)
    add_items(conn, second, 6)
    kept = count(conn, "select min(id) + 2 from raw_import_items where run_id = %s", [first])
    conn.execute(
        f"""
        create function keep_item() returns trigger language plpgsql as $$
        begin raise exception 'item % is evidence', old.id; end $$;
        create trigger keep before delete on raw_import_items for each row
          when (old.id = {kept}) execute function keep_item();
        """
    )

    result = cli("purge-raw", "--json", "--batch-size", "4")

    assert result.exit_code == 1
    task = task_of(json.loads(result.stdout), "raw")
    assert task["rows"] == 11
    assert f"(first: key {kept}: item {kept} is evidence)" in task["error"]
    assert [r[0] for r in conn.execute("select id from raw_import_items")] == [kept]


@pytest.mark.parametrize("batch_size", ["2", "5000"])
def test_a_trigger_that_cancels_the_delete_makes_the_task_fail_with_the_count(
    cli: Cli, conn: Conn, batch_size: str
) -> None:
    uploads = add_old_uploads(conn, 10)
    conn.execute(
        """
        create function keep_pinned() returns trigger language plpgsql as $$
        begin return null; end $$;
        create trigger pinned before delete on temp_uploads for each row
          when (old.storage_path in ('tmp/3', 'tmp/4', 'tmp/9')) execute function keep_pinned();
        """
    )

    result = cli("purge-temp", "--json", "--batch-size", batch_size)

    assert result.exit_code == 1
    task = task_of(json.loads(result.stdout), "temp")
    assert task["status"] == "failed"
    assert task["rows"] == 7
    assert task["remaining"] == 3
    assert task["error"] == (
        "3 row(s) the rule selects were left unchanged without an error "
        "(a trigger that cancels the change?)"
    )
    assert count(conn, "select count(*) from temp_uploads") == 3
    assert len(uploads) == 10


def test_rows_the_application_holds_are_left_to_it_and_the_task_is_ok(
    cli: Cli, conn: Conn, db_url: str
) -> None:
    uploads = add_old_uploads(conn, 4)
    with psycopg.connect(db_url) as application:
        application.execute("select from temp_uploads where id = %s for update", [uploads[1]])

        result = cli("purge-temp", "--json", env={"MAINTCTL_LOCK_TIMEOUT": "1s"})

    assert result.exit_code == 0, result.stdout
    assert task_of(json.loads(result.stdout), "temp")["status"] == "ok"
    assert [r[0] for r in conn.execute("select id from temp_uploads")] == [uploads[1]]


def test_the_pg_cron_procedure_goes_past_a_blocked_row_and_fails_naming_it(
    conn: Conn,
) -> None:
    uploads = add_old_uploads(conn, 9)
    referenced_by_the_application(conn, uploads[4])

    with pytest.raises(psycopg.errors.RaiseException) as raised:
        conn.execute("call maintenance.run_maintenance_cleanup(batch_size => 4)")

    assert "temp: 1 row(s) could not be changed and were left as they are" in str(raised.value)
    assert [r[0] for r in conn.execute("select id from temp_uploads")] == [uploads[4]]
    ledger = conn.execute("select status, tasks from maintenance.runs").fetchone()
    assert ledger is not None
    assert ledger[0] == "failed"
    temp = next(t for t in ledger[1] if t["task"] == "temp")
    assert (temp["status"], temp["rows"]) == ("failed", 8)


def test_with_an_archive_only_the_deleted_rows_are_archived(
    cli: Cli, conn: Conn, tmp_path: Any
) -> None:
    uploads = add_old_uploads(conn, 12)
    referenced_by_the_application(conn, uploads[5])
    archive = tmp_path / "archive"

    result = cli("purge-temp", "--json", "--batch-size", "4", "--archive", str(archive))

    assert result.exit_code == 1
    (manifest_file,) = archive.glob("run-*/manifest.json")
    manifest = json.loads(manifest_file.read_text())
    assert sum(f["rows"] for f in manifest["files"]) == 11
    assert cli("archive", "verify", str(archive)).exit_code == 0


def test_the_pg_cron_procedure_checks_what_its_walk_left_as_the_cli_does(
    cli: Cli, conn: Conn
) -> None:
    add_old_uploads(conn, 6)
    conn.execute(
        """
        create function keep_all() returns trigger language plpgsql as $$
        begin return null; end $$;
        create trigger pinned before delete on temp_uploads for each row
          when (old.storage_path = 'tmp/2') execute function keep_all();
        """
    )
    said = cli("purge-temp", "--json")
    assert said.exit_code == 1
    error = task_of(json.loads(said.stdout), "temp")["error"]

    with pytest.raises(psycopg.errors.RaiseException) as raised:
        conn.execute("call maintenance.run_maintenance_cleanup()")

    assert f"temp: {error}" in str(raised.value)
    assert count(conn, "select count(*) from temp_uploads") == 1


def test_a_run_a_trigger_keeps_from_being_marked_is_not_archived_as_marked(
    cli: Cli, conn: Conn, tmp_path: Any
) -> None:
    runs = [add_run(conn, "processing", heartbeat="2 days") for _ in range(6)]
    conn.execute(
        f"""
        create function keep_running() returns trigger language plpgsql as $$
        begin return null; end $$;
        create trigger keep before update on import_runs for each row
          when (old.id = {runs[2]}) execute function keep_running();
        """
    )
    archive = tmp_path / "archive"

    result = cli("stuck", "--json", "--archive", str(archive))

    assert result.exit_code == 1
    task = task_of(json.loads(result.stdout), "stuck")
    assert task["rows"] == 5
    assert task["error"].startswith("1 row(s) the rule selects were left unchanged")
    (manifest_file,) = archive.glob("run-*/manifest.json")
    assert [f["rows"] for f in json.loads(manifest_file.read_text())["files"]] == [5]


def test_a_row_another_session_holds_is_skipped_and_not_counted_as_unchanged(
    conn: Conn, db_url: str
) -> None:
    uploads = add_old_uploads(conn, 5)
    with psycopg.connect(db_url) as application:
        # Inserting a child row under a foreign key takes this lock on the parent.
        application.execute("select from temp_uploads where id = %s for key share", [uploads[3]])
        step = conn.execute(
            "select rows, next_position, blocked, unchanged from maintenance.rule_step("
            "'temp', now() - interval '1 day', interval '1 day', 100, null, null, null)"
        ).fetchone()

    assert step == (4, None, None, 0)
    assert [r[0] for r in conn.execute("select id from temp_uploads")] == [uploads[3]]


def test_a_deferrable_foreign_key_is_checked_at_each_piece_not_at_commit(
    cli: Cli, conn: Conn
) -> None:
    uploads = add_old_uploads(conn, 9)
    conn.execute(
        "create table upload_refs (upload_id bigint constraint upload_refs_upload_fk "
        "references temp_uploads deferrable initially deferred)"
    )
    conn.execute("insert into upload_refs values (%s)", [uploads[4]])

    result = cli("purge-temp", "--json", "--batch-size", "4")

    assert result.exit_code == 1
    task = task_of(json.loads(result.stdout), "temp")
    assert task["rows"] == 8
    assert "[constraint upload_refs_upload_fk]" in task["error"]
    assert [r[0] for r in conn.execute("select id from temp_uploads")] == [uploads[4]]


def test_a_task_stopped_by_max_rows_still_names_the_rows_it_left(cli: Cli, conn: Conn) -> None:
    uploads = add_old_uploads(conn, 8)
    referenced_by_the_application(conn, uploads[0])

    result = cli("purge-temp", "--json", "--batch-size", "2", "--max-rows", "4")

    assert result.exit_code == 1
    task = task_of(json.loads(result.stdout), "temp")
    assert task["status"] == "failed"
    assert task["rows"] == 4
    assert task["error"].startswith(
        "max rows reached (MAINTCTL_MAX_ROWS); the next run carries on; 1 row(s) could not be "
        f"changed and were left as they are (first: key {uploads[0]}: "
    )


def test_doctor_warns_that_a_cascading_key_makes_a_run_change_another_table(
    cli: Cli, conn: Conn
) -> None:
    uploads = add_old_uploads(conn, 3)
    conn.execute(
        "create table upload_views (upload_id bigint constraint upload_views_upload_fk "
        "references temp_uploads on delete cascade)"
    )
    conn.execute("insert into upload_views values (%s)", [uploads[0]])

    doctor = cli("doctor")
    result = cli("purge-temp", "--json")

    assert doctor.exit_code == 0, doctor.stdout
    assert (
        "deleting a row of temp_uploads also changes the rows of upload_views "
        "(upload_views_upload_fk, ON DELETE CASCADE) that refer to it: temp changes them too, "
        "and an archive keeps none of them"
    ) in " ".join(doctor.stdout.split())
    # What doctor warned of: the run deleted the referring row too.
    assert result.exit_code == 0
    assert count(conn, "select count(*) from upload_views") == 0
