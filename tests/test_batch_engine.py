"""The batch engine: range walks that only narrow the rule, ties at batch edges, rows the
application inserts or locks meanwhile, the shrink on statement timeout, --max-runtime's count of
what is left, the progress hook, and purge-raw reaching items only through their runs."""

from __future__ import annotations

import itertools
import json
import os
import signal
import threading
import time
from typing import Any

import psycopg
import pytest
from pydantic import SecretStr

from maintctl import db, tasks
from maintctl.settings import ADAPTIVE_BATCH_CEILING, Settings
from maintctl.tasks import (
    AIM_BATCH_SECONDS,
    FIRST_BATCH_SIZE,
    TARGET_BATCH_SECONDS,
    TASKS_BY_NAME,
    TIMED_FLOOR,
    TaskProgress,
    next_batch_size,
    run_task,
    size_after_probe,
)
from tests.conftest import Cli, table_rows
from tests.data import Conn, add_items, add_job, add_run, count, slow_down_deletes


def add_uploads(conn: Conn, how_many: int, age: str, prefix: str = "tmp") -> list[int]:
    """Uploads that all share one created_at (one application transaction's now())."""
    rows = conn.execute(
        "insert into temp_uploads (created_at, storage_path, size_bytes) "
        "select now() - %s::interval, %s || '/' || n || '.csv', n from generate_series(1, %s) n "
        "returning id",
        [age, prefix, how_many],
    ).fetchall()
    return [row[0] for row in rows]


def ids(conn: Conn, query: str) -> set[int]:
    return {row[0] for row in conn.execute(query).fetchall()}


def task_report(cli: Cli, *args: str, env: dict[str, str | None] | None = None) -> dict[str, Any]:
    result = cli(*args, "--json", env=env)
    assert result.exit_code == 0, result.stderr
    task: dict[str, Any] = json.loads(result.stdout)["tasks"][0]
    return task


def test_ties_on_created_at_across_batch_edges_are_each_deleted_once(cli: Cli, conn: Conn) -> None:
    # Twelve uploads of one transaction share created_at; batches of 5 must split the tie by id
    # (5, 5, 2), neither skipping a row at an edge nor taking the tie in one oversized batch.
    tied = add_uploads(conn, 12, "2 days")
    older = add_uploads(conn, 3, "3 days")
    fresh = add_uploads(conn, 4, "1 hour")

    task = task_report(cli, "purge-temp", "--batch-size", "5")

    assert (task["rows"], task["batches"]) == (15, 3)
    assert ids(conn, "select id from temp_uploads") == set(fresh)
    outbox = conn.execute(
        "select upload_id::bigint from maintenance.storage_outbox_files"
    ).fetchall()
    assert sorted(row[0] for row in outbox) == sorted(tied + older)


def test_ties_on_the_compact_key_across_batch_edges(cli: Cli, conn: Conn) -> None:
    conn.execute(
        "insert into import_jobs (status, created_at, finished_at, payload, log) "
        "select 'completed', now() - interval '9 days', now() - interval '8 days', "
        "'{\"a\": 1}', 'log' from generate_series(1, 7)"
    )
    # No finished_at: judged by created_at, equal to the others' finished_at.
    conn.execute(
        "insert into import_jobs (status, created_at, payload) "
        "select 'cancelled', finished_at, '{}' from import_jobs limit 1"
    )
    kept = add_job(conn, "completed", created="9 days", finished="6 days")

    task = task_report(cli, "compact", "--batch-size", "3")

    assert (task["rows"], task["batches"]) == (8, 3)
    assert ids(conn, "select id from import_jobs where compacted_at is null") == {kept}


def test_rows_inserted_during_the_walk_are_judged_by_the_rule(db_url: str, conn: Conn) -> None:
    add_uploads(conn, 6, "3 days", "first")
    add_uploads(conn, 6, "2 days", "second")
    settings = Settings(database_url=SecretStr(db_url), batch_size=4)
    seen: list[TaskProgress] = []
    inserted: dict[str, list[int]] = {}

    def application_writes(progress: TaskProgress) -> None:
        seen.append(progress)
        if progress.batches == 1:
            # After the first batch: an old row behind the walk, an old row ahead of it, and
            # fresh rows, one of them with a created_at inside the range the walk still covers.
            inserted["behind"] = add_uploads(conn, 1, "4 days", "behind")
            inserted["ahead"] = add_uploads(conn, 1, "36 hours", "ahead")
            inserted["fresh"] = add_uploads(conn, 2, "1 minute", "fresh")

    with db.connect(settings) as maintctl:
        result = run_task(
            maintctl,
            TASKS_BY_NAME["temp"],
            settings,
            dry_run=False,
            run_id=None,
            on_batch=application_writes,
        )

    assert result.status == "ok"
    assert result.rows == 13
    assert [(p.rows, p.batches, p.total) for p in seen] == [
        (4, 1, 12),
        (8, 2, 12),
        (12, 3, 12),
        (13, 4, 12),
    ]
    left = ids(conn, "select id from temp_uploads")
    # The fresh rows are never touched; the old row behind the walk is the next run's.
    assert left == set(inserted["fresh"] + inserted["behind"])
    with db.connect(settings) as maintctl:
        again = run_task(maintctl, TASKS_BY_NAME["temp"], settings, dry_run=False)
    assert again.rows == 1
    assert ids(conn, "select id from temp_uploads") == set(inserted["fresh"])


def test_a_row_the_application_holds_is_skipped_not_waited_for(
    cli: Cli, conn: Conn, db_url: str
) -> None:
    uploads = add_uploads(conn, 20, "2 days")
    held = uploads[7]
    with psycopg.connect(db_url) as application:
        # The application is extending this upload's life right now: it holds the row...
        application.execute("update temp_uploads set created_at = now() where id = %s", [held])

        task = task_report(cli, "purge-temp", "--batch-size", "5")

        # ...and commits: the row is fresh again and must survive.
        application.commit()

    assert task["status"] == "ok"
    assert task["rows"] == 19
    assert task["durationMs"] < 4000  # never waited MAINTCTL_LOCK_TIMEOUT (5s) for the row
    assert ids(conn, "select id from temp_uploads") == {held}
    assert (
        count(
            conn,
            "select count(*) from maintenance.storage_outbox_files where upload_id = %s::text",
            [held],
        )
        == 0
    )
    assert task_report(cli, "purge-temp")["rows"] == 0


def test_a_locked_row_left_old_is_taken_by_the_next_run(cli: Cli, conn: Conn, db_url: str) -> None:
    uploads = add_uploads(conn, 6, "2 days")
    with psycopg.connect(db_url) as application:
        application.execute("select 1 from temp_uploads where id = %s for update", [uploads[2]])

        first = task_report(cli, "purge-temp", "--batch-size", "4")

        application.rollback()

    assert first["rows"] == 5
    assert task_report(cli, "purge-temp")["rows"] == 1
    assert count(conn, "select count(*) from temp_uploads") == 0


def test_a_batch_that_times_out_is_retried_smaller_and_the_run_goes_on(
    cli: Cli, conn: Conn
) -> None:
    add_uploads(conn, 4, "2 days")
    # 0.3 s per row and 1 s per statement: the probe's 10 rows and then 5 time out, 2 rows fit;
    # at 0.3 s a row, the batches after that probe are of one row.
    slow_down_deletes(conn, 0.3)

    task = task_report(
        cli, "purge-temp", "--batch-size", "16", env={"MAINTCTL_STATEMENT_TIMEOUT": "1s"}
    )

    assert task["status"] == "ok"
    assert task["rows"] == 4
    assert task["batchSize"] == 1
    assert task["batches"] == 3
    assert count(conn, "select count(*) from temp_uploads") == 0


def test_a_batch_that_times_out_at_the_smallest_size_fails_the_task(cli: Cli, conn: Conn) -> None:
    add_uploads(conn, 2, "2 days")
    slow_down_deletes(conn, 1.5)

    result = cli(
        "purge-temp", "--batch-size", "1", "--json", env={"MAINTCTL_STATEMENT_TIMEOUT": "1s"}
    )

    assert result.exit_code == 1
    task = json.loads(result.stdout)["tasks"][0]
    assert task["status"] == "failed"
    assert task["error"] == (
        "canceling statement due to statement timeout, even with 1 row(s) per batch"
    )
    assert count(conn, "select count(*) from temp_uploads") == 2


def test_max_runtime_reports_what_is_left_and_the_next_run_finishes(cli: Cli, conn: Conn) -> None:
    add_uploads(conn, 7, "2 days")
    slow_down_deletes(conn, 0.4)

    stopped = task_report(cli, "purge-temp", "--batch-size", "1", "--max-runtime", "1s")
    table = cli("purge-temp", "--batch-size", "1", "--max-runtime", "1s")
    finished = task_report(cli, "purge-temp")

    assert (stopped["status"], stopped["rows"], stopped["remaining"]) == ("stopped", 3, 4)
    assert "max runtime" in stopped["error"]
    header = next(line for line in table.stdout.splitlines() if "Task" in line)
    assert header.split("┃")[-2].strip() == "Left"
    row = table_rows(table.stdout)[0]  # the status wraps onto more lines
    assert row[1].startswith("stopped")
    assert (row[2], row[-1]) == ("3", "1")
    assert (finished["status"], finished["rows"], finished["remaining"]) == ("ok", 1, None)


def test_purge_raw_reaches_items_only_through_their_runs(conn: Conn, db_url: str) -> None:
    keep = add_run(conn, "completed", created="90 days", finished="90 days")
    add_items(conn, keep, 20000)
    old_failed = add_run(conn, "failed", created="40 days", finished="35 days")
    add_items(conn, old_failed, 250)
    conn.execute("analyze")
    settings = Settings(database_url=SecretStr(db_url), batch_size=100)
    statements_seen: list[str] = []

    with db.connect(settings) as maintctl:
        auto_explain = _load_auto_explain(maintctl)
        maintctl.add_notice_handler(
            lambda notice: statements_seen.append(notice.message_primary or "")
        )
        before = _seq_scans(conn)
        result = run_task(maintctl, TASKS_BY_NAME["raw"], settings, dry_run=False)

    # Statistics are flushed when maintctl's session ends (closed above).
    assert _seq_scans(conn) == before, "\n".join(statements_seen)
    assert result.rows == 250
    assert result.batches >= 3  # batches of at most 100
    assert count(conn, "select count(*) from raw_import_items where run_id = %s", [keep]) == 20000
    if auto_explain:
        plans = "\n".join(statements_seen)
        assert "raw_import_items" in plans
        assert "Seq Scan on raw_import_items" not in plans


def _load_auto_explain(conn: psycopg.Connection[Any]) -> bool:
    """Every plan maintctl's session runs, sent back as a notice (when the server has the
    module): the EXPLAIN of the statements inside the step functions."""
    try:
        conn.execute("load 'auto_explain'")
    except psycopg.Error:
        return False
    for setting, value in (
        ("auto_explain.log_min_duration", "0"),
        ("auto_explain.log_nested_statements", "on"),
        ("auto_explain.log_level", "notice"),
    ):
        conn.execute("select set_config(%s, %s, false)", [setting, value])
    return True


def _seq_scans(conn: Conn) -> int:
    conn.execute("select pg_stat_clear_snapshot()")
    return count(
        conn, "select seq_scan from pg_stat_user_tables where relname = 'raw_import_items'"
    )


def test_the_progress_hook_is_called_after_each_committed_batch(db_url: str, conn: Conn) -> None:
    add_uploads(conn, 7, "2 days")
    settings = Settings(database_url=SecretStr(db_url), batch_size=3)
    committed: list[int] = []

    def check(progress: TaskProgress) -> None:
        # Another session already sees the batch the hook reports.
        committed.append(7 - count(conn, "select count(*) from temp_uploads"))
        assert progress.rows == committed[-1]
        assert progress.batch_size == 3

    with db.connect(settings) as maintctl:
        result = run_task(maintctl, TASKS_BY_NAME["temp"], settings, dry_run=False, on_batch=check)

    assert result.rows == 7
    assert committed == [3, 6, 7]


def test_the_application_writes_while_a_purge_runs(cli: Cli, conn: Conn, db_url: str) -> None:
    # Application sessions insert fresh uploads while maintctl walks the old ones: nothing fresh
    # is deleted, every old row goes, and no writer errs.
    add_uploads(conn, 3000, "2 days")
    stop = threading.Event()
    errors: list[BaseException] = []
    written: list[int] = []

    def writer() -> None:
        try:
            with psycopg.connect(db_url, autocommit=True) as session:
                while not stop.is_set():
                    row = session.execute(
                        "insert into temp_uploads (storage_path) values ('live.csv') returning id"
                    ).fetchone()
                    assert row is not None
                    written.append(row[0])
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=writer) for _ in range(2)]
    for thread in threads:
        thread.start()
    try:
        task = task_report(cli, "purge-temp", "--batch-size", "100")
    finally:
        stop.set()
        for thread in threads:
            thread.join()

    assert errors == []
    assert task["rows"] == 3000
    assert ids(conn, "select id from temp_uploads") == set(written)


def test_compaction_makes_import_jobs_smaller_after_vacuum(cli: Cli, conn: Conn) -> None:
    conn.execute(
        "insert into import_jobs (status, created_at, finished_at, payload, result, log) "
        "select 'completed', now() - interval '30 days', now() - interval '30 days', "
        "jsonb_build_object('rows', (select jsonb_agg(md5(n::text || g::text)) "
        "                           from generate_series(1, 200) g)), "
        "'{\"rowsImported\": 200}', repeat(md5(n::text), 300) "
        "from generate_series(1, 300) n"
    )
    size = "select pg_total_relation_size('import_jobs')"
    before = count(conn, size)

    task = task_report(cli, "compact", "--batch-size", "100")
    conn.execute("vacuum import_jobs")

    assert task["rows"] == 300
    assert task["batches"] >= 3  # batches of at most 100
    assert count(conn, size) < before / 4


def test_batches_that_take_too_long_are_halved_to_keep_transactions_short(
    cli: Cli, conn: Conn
) -> None:
    add_uploads(conn, 1000, "2 days")
    # At least 1 ms a row: 400 rows would take 0.4 s, far over TARGET_BATCH_SECONDS (50 ms). The
    # probe's 10 rows take 10 ms or more, so the next batch is at most 50 rows, and a batch of
    # 25 rows or more never doubles.
    slow_down_deletes(conn, 0.001)

    task = task_report(cli, "purge-temp", "--batch-size", "400")

    assert task["rows"] == 1000
    assert task["batchSize"] <= 50
    assert task["batches"] >= 20


def test_thenext_batch_size_follows_the_time_the_last_one_took() -> None:
    fast, on_target, slow = TARGET_BATCH_SECONDS / 4, TARGET_BATCH_SECONDS, 3 * TARGET_BATCH_SECONDS

    assert next_batch_size(5000, 5000, slow) == 2500
    assert next_batch_size(15, 5000, slow) == TIMED_FLOOR
    assert next_batch_size(5, 5000, slow) == 5  # a batch at the floor is left alone
    assert next_batch_size(2500, 5000, on_target) == 2500
    # Over the budget: back to the aim (35 ms), in proportion: 2500 * 35 / 62.5.
    assert next_batch_size(2500, 5000, 1.25 * TARGET_BATCH_SECONDS) == 1400
    assert next_batch_size(2500, 5000, fast) == 5000
    assert next_batch_size(5000, 5000, fast) == 5000


def test_batches_grow_towards_the_aim_not_up_to_the_budget() -> None:
    # Between the aim and the budget a batch keeps its size; under the aim it grows to what fits
    # the aim at its pace, at most doubling: a batch of 20 ms does not double into 40 ms.
    assert next_batch_size(2500, 100_000, 0.8 * TARGET_BATCH_SECONDS) == 2500
    assert next_batch_size(2500, 100_000, AIM_BATCH_SECONDS) == 2500
    assert next_batch_size(1000, 100_000, 0.02) == int(1000 * AIM_BATCH_SECONDS / 0.02)
    assert next_batch_size(1000, 100_000, 0.001) == 2000
    assert next_batch_size(80_000, 100_000, 0.001) == 100_000  # never over the ceiling


def test_the_second_batch_fits_the_target_at_the_probes_pace() -> None:
    assert size_after_probe(FIRST_BATCH_SIZE, 5000, 0.001) == 350  # 35 ms at 0.1 ms a row
    assert size_after_probe(FIRST_BATCH_SIZE, 5000, 0.0) == 5000  # never over the ceiling
    assert size_after_probe(FIRST_BATCH_SIZE, 300, 0.0001) == 300
    assert size_after_probe(FIRST_BATCH_SIZE, 5000, 0.05) == 7
    assert size_after_probe(FIRST_BATCH_SIZE, 5000, 2.0) == 1  # at least one row


@pytest.mark.parametrize(
    ("given", "ceiling"),
    [(None, ADAPTIVE_BATCH_CEILING), (5000, 5000), (300, 300)],
)
def test_a_fast_table_grows_past_the_default_batch_size_but_never_past_a_given_one(
    db_url: str, conn: Conn, monkeypatch: pytest.MonkeyPatch, given: int | None, ceiling: int
) -> None:
    # Left at its default, MAINTCTL_BATCH_SIZE (5,000) is no ceiling: batches of a fast table
    # grow up to ADAPTIVE_BATCH_CEILING while they fit the time budget. Set, it is the ceiling.
    # The sizing functions are replaced by ones that see the ceiling and always grow (no clock).
    add_uploads(conn, 30_000, "2 days")
    url = SecretStr(db_url)
    settings = (
        Settings(database_url=url)
        if given is None
        else Settings(database_url=url, batch_size=given)
    )
    ceilings: set[int] = set()

    def grow(size: int, at_most: int, seconds: float) -> int:
        ceilings.add(at_most)
        return min(at_most, size * 10)

    monkeypatch.setattr(tasks, "size_after_probe", grow)
    monkeypatch.setattr(tasks, "next_batch_size", grow)
    seen: list[TaskProgress] = []

    with db.connect(settings) as maintctl:
        result = run_task(
            maintctl, TASKS_BY_NAME["temp"], settings, dry_run=False, on_batch=seen.append
        )

    assert result.rows == 30_000
    assert ceilings == {ceiling}
    assert max(progress.batch_size for progress in seen) == ceiling
    assert settings.batch_ceiling == ceiling


def test_a_batch_size_set_in_the_environment_is_a_ceiling(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MAINTCTL_BATCH_SIZE", raising=False)
    assert Settings().batch_ceiling == ADAPTIVE_BATCH_CEILING

    monkeypatch.setenv("MAINTCTL_BATCH_SIZE", "5000")
    assert Settings().batch_ceiling == 5000


def test_heavy_rows_are_never_taken_a_thousand_at_a_time(db_url: str, conn: Conn) -> None:
    # Compacting a job takes 5 ms or more (as one with a 1 MB log does): a first batch of 1,000
    # rows would hold its transaction 5 s; the probe's 10 rows take 50 ms, and so does each
    # batch after it.
    for _ in range(60):
        add_job(conn, "completed", created="30 days", finished="30 days")
    conn.execute(
        "create function slow_update() returns trigger language plpgsql as "
        "$$ begin perform pg_sleep(0.005); return new; end $$"
    )
    conn.execute(
        "create trigger slow before update on import_jobs "
        "for each row execute function slow_update()"
    )
    settings = Settings(database_url=SecretStr(db_url))  # batch size 5000
    seen: list[TaskProgress] = []

    with db.connect(settings) as maintctl:
        result = run_task(
            maintctl, TASKS_BY_NAME["compact"], settings, dry_run=False, on_batch=seen.append
        )

    sizes = [seen[0].rows] + [b.rows - a.rows for a, b in itertools.pairwise(seen)]
    assert result.rows == 60
    assert sizes[0] == FIRST_BATCH_SIZE
    assert max(sizes) <= FIRST_BATCH_SIZE


def test_a_task_starts_with_a_small_batch_until_it_knows_how_long_one_takes(
    db_url: str, conn: Conn
) -> None:
    add_uploads(conn, 2500, "2 days")
    settings = Settings(database_url=SecretStr(db_url))  # batch size 5000
    seen: list[TaskProgress] = []

    with db.connect(settings) as maintctl:
        result = run_task(
            maintctl, TASKS_BY_NAME["temp"], settings, dry_run=False, on_batch=seen.append
        )

    assert result.rows == 2500
    assert seen[0].rows == FIRST_BATCH_SIZE
    assert len(seen) >= 2


def test_an_interrupt_waits_until_the_commit_is_counted() -> None:
    progress: list[str] = []

    def commit_and_count() -> None:
        with db.interrupts_held():
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(0.05)
            progress.append("counted")  # not cut short: the batch's rows get counted

    with pytest.raises(KeyboardInterrupt):
        commit_and_count()

    assert progress == ["counted"]
