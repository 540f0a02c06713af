"""Faults, with real processes and sessions: a server restarted mid-run, a server that is not up
yet, the application holding locks, and a worker finishing a run while maintctl looks at it."""

from __future__ import annotations

import json
import time

import psycopg

from tests.conftest import Cli
from tests.data import Conn, add_run, count, load_sample, slow_down_deletes
from tests.pooler import free_port
from tests.private_server import PrivateServer
from tests.test_commands import run_like_cron
from tests.test_guard import launch


def wait_for(conn: Conn, sql: str, what: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not count(conn, sql):
        assert time.monotonic() < deadline, what
        time.sleep(0.05)


def test_a_server_restart_mid_run_exits_69_in_one_line_and_the_next_run_finishes(
    private_server: PrivateServer,
) -> None:
    private_server.start()
    url = private_server.migrated_database()
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(
            "insert into temp_uploads (created_at, storage_path) "
            "select now() - interval '2 days', 'f' || n from generate_series(1, 40) n"
        )
        slow_down_deletes(conn, 0.2)
    process = launch(url, "purge-temp", "--batch-size", "2", "--quiet")  # errors only, as cron
    deadline = time.monotonic() + 30
    while True:
        with psycopg.connect(url) as probe:
            if count(probe, "select count(*) from temp_uploads") <= 36:
                break
        assert time.monotonic() < deadline, "the purge never got going"
        time.sleep(0.05)

    private_server.restart()
    _, stderr = process.communicate(timeout=60)

    assert process.returncode == 69, stderr
    assert stderr.startswith("maintctl: error: lost the connection to the database: ")
    assert stderr.count("\n") == 1
    assert "Traceback" not in stderr
    with psycopg.connect(url, autocommit=True) as conn:
        remaining = count(conn, "select count(*) from temp_uploads")
        assert remaining % 2 == 0, "only whole batches were committed"
        ledger = conn.execute("select status, errors from maintenance.runs").fetchone()
        assert ledger is not None
        assert ledger[0] == "failed"
        assert "lost the connection" in ledger[1][0]
        conn.execute("drop trigger slow on temp_uploads")
        finished = run_like_cron(url, "purge-temp", "--json", timeout=60)
        assert finished.returncode == 0, finished.stderr
        assert json.loads(finished.stdout)["tempUploadsPurged"] == remaining
        assert count(conn, "select count(*) from temp_uploads") == 0


def test_failing_to_connect_is_retried_for_about_10_seconds_then_exits_69() -> None:
    url = f"postgresql://postgres@127.0.0.1:{free_port()}/imports"  # nothing listens there
    started = time.monotonic()
    completed = run_like_cron(url, "run", timeout=60)
    elapsed = time.monotonic() - started

    assert completed.returncode == 69
    assert completed.stderr.startswith("maintctl: error: cannot connect to postgres@127.0.0.1:")
    assert completed.stderr.count("\n") == 1
    assert 7 < elapsed < 15, f"retried with backoff for about 10 s, not {elapsed:.1f} s"


def test_a_server_that_comes_up_during_the_connect_retries_is_reached(
    private_server: PrivateServer,
) -> None:
    private_server.start()
    url = private_server.migrated_database()
    private_server.stop()

    started = time.monotonic()
    process = launch(url, "run", "--json")
    time.sleep(3)
    private_server.start()
    stdout, stderr = process.communicate(timeout=60)
    elapsed = time.monotonic() - started

    assert process.returncode == 0, stderr
    assert json.loads(stdout)["errors"] == []
    assert elapsed > 3, "it waited for the server"


def test_application_locks_cost_maintctl_at_most_lock_timeout_and_never_block_its_writes(
    db_url: str, conn: Conn, cli: Cli
) -> None:
    load_sample(conn)
    # What maintctl's own session has set while it works, seen by a trigger that runs in it.
    conn.execute(
        "create table seen (application text, lock_timeout text, statement_timeout text, "
        "idle_timeout text)"
    )
    conn.execute(
        "create function note_settings() returns trigger language plpgsql as $$ begin "
        "insert into public.seen values (current_setting('application_name'), "
        "current_setting('lock_timeout'), current_setting('statement_timeout'), "
        "current_setting('idle_in_transaction_session_timeout')); return new; end $$"
    )
    conn.execute(
        "create trigger note before update on import_runs for each row "
        "when (new.status = 'failed') execute function note_settings()"
    )
    stuck = conn.execute(
        "select id from import_runs where status = 'processing' "
        "and coalesce(heartbeat_at, started_at, created_at) < now() - interval '24 hours' "
        "order by id limit 1"
    ).fetchone()
    assert stuck is not None
    with psycopg.connect(db_url) as application:
        # The application holds a row maintctl would change and a table it needs.
        application.execute("select 1 from import_runs where id = %s for update", [stuck[0]])
        application.execute("lock table temp_uploads in exclusive mode")
        process = launch(db_url, "run", "--json", env={"MAINTCTL_LOCK_TIMEOUT": "2s"})
        wait_for(
            conn,
            "select count(*) from pg_stat_activity where datname = current_database() "
            "and application_name = 'maintctl' and wait_event_type = 'Lock'",
            "maintctl never waited for the application's table lock",
        )
        # Meanwhile another session of the application writes to every table but the one it
        # locked itself: maintctl's waiting never holds those writes up.
        slowest = 0.0
        with psycopg.connect(db_url, autocommit=True) as writer:
            writer.execute("set lock_timeout = '1s'")
            for statement in (
                "insert into import_runs (status) values ('processing')",
                "update import_runs set heartbeat_at = now() where status = 'pending'",
                "insert into raw_import_items (run_id) select min(id) from import_runs",
                "insert into import_jobs (status) values ('queued')",
            ):
                began = time.monotonic()
                writer.execute(statement)
                slowest = max(slowest, time.monotonic() - began)
        stdout, stderr = process.communicate(timeout=60)
        application.rollback()

    assert process.returncode == 1, stderr
    document = json.loads(stdout)
    tasks = {task["task"]: task for task in document["tasks"]}
    assert {name: task["status"] for name, task in tasks.items()} == {
        "stuck": "ok",
        "temp": "failed",
        "compact": "ok",
        "raw": "ok",
    }
    assert tasks["stuck"]["rows"] == 14, "the row the application holds is skipped, not awaited"
    assert tasks["temp"]["error"] == "canceling statement due to lock timeout"
    assert 1500 <= tasks["temp"]["durationMs"] < 5000, "waited the lock timeout, no longer"
    assert (tasks["compact"]["rows"], tasks["raw"]["rows"]) == (210, 250)
    assert slowest < 0.5, f"an application write waited {slowest:.2f} s"
    assert set(conn.execute("select * from seen").fetchall()) == {
        ("maintctl", "2s", "1min", "1min")
    }
    again = json.loads(cli("run", "--json").stdout)
    assert (again["stuckRunsMarked"], again["tempUploadsPurged"]) == (1, 289)


def test_a_run_its_worker_completes_while_maintctl_waits_for_it_stays_completed(
    db_url: str, conn: Conn
) -> None:
    run_id = add_run(conn, "processing", created="3 days", started="3 days", heartbeat="2 days")
    with psycopg.connect(db_url) as worker:
        # The worker is finishing this run right now: it holds the row...
        worker.execute("select 1 from import_runs where id = %s for update", [run_id])
        process = launch(db_url, "stuck", "--json", env={"MAINTCTL_LOCK_TIMEOUT": "30s"})
        # ...while maintctl looks at it (it skips the row; were it to wait, it would wait here)...
        time.sleep(1.5)
        # ...and commits it as completed.
        worker.execute(
            "update import_runs set status = 'completed', finished_at = now() where id = %s",
            [run_id],
        )
        worker.commit()
        stdout, stderr = process.communicate(timeout=60)

    assert process.returncode == 0, stderr
    assert json.loads(stdout)["stuckRunsMarked"] == 0
    row = conn.execute("select status, error_message from import_runs where id = %s", [run_id])
    assert row.fetchone() == ("completed", None)
