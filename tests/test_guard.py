"""One run at a time, across processes and hosts, directly and through PgBouncer in transaction
mode; a SIGKILLed run blocks the next one no longer than its lease."""

from __future__ import annotations

import json
import signal
import subprocess
import time
from dataclasses import dataclass
from datetime import UTC, timedelta
from typing import Any

import psycopg

from maintctl.errors import LeaseLost
from tests.conftest import Cli, make_cli
from tests.data import Conn, add_temp_upload, count, hold_run_lease, load_sample, slow_down_deletes
from tests.pooler import StartPooler
from tests.test_commands import cron_environment, maintctl_command
from tests.test_run import SAMPLE_TOTALS, totals


@dataclass(frozen=True)
class Finished:
    code: int
    document: dict[str, Any]
    stderr: str
    exited_at: float  # time.time(), comparable with the server's clock on this machine


def launch(url: str, *args: str, env: dict[str, str] | None = None) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [*maintctl_command(), *args],
        env={**cron_environment(url), **(env or {})},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def wait_all(processes: list[subprocess.Popen[str]], timeout: float = 120) -> list[Finished]:
    """Waits for every process, noting when each one exited."""
    exited: dict[int, float] = {}
    deadline = time.monotonic() + timeout
    while len(exited) < len(processes):
        assert time.monotonic() < deadline, "a run never finished"
        for index, process in enumerate(processes):
            if index not in exited and process.poll() is not None:
                exited[index] = time.time()
        time.sleep(0.02)
    finished = []
    for index, process in enumerate(processes):
        stdout, stderr = process.communicate()
        document = json.loads(stdout) if stdout else {}
        finished.append(Finished(process.returncode, document, stderr, exited[index]))
    return finished


def in_progress_sentence(conn: Conn, run_id: int) -> str:
    row = conn.execute("select host, started_at from maintenance.runs where id = %s", [run_id])
    host, started = row.fetchone() or (None, None)
    assert started is not None
    return (
        f"another maintenance run is in progress (host {host}, "
        f"started {started.astimezone(UTC):%Y-%m-%d %H:%M:%S} UTC)"
    )


def check_one_worker(conn: Conn, finished: list[Finished]) -> None:
    """Exactly one run did the work; the others said who did and exited 0 without waiting for it:
    within 2 s of reaching the database (their durationMs; starting Python itself takes a second
    or two when five start at once on a small machine), and before the worker finished."""
    assert [f.code for f in finished] == [0] * len(finished), [f.stderr for f in finished]
    workers = [f for f in finished if f.document["skipped"] is None]
    assert len(workers) == 1, [f.document for f in finished]
    (worker,) = workers
    assert totals(worker.document) == SAMPLE_TOTALS
    run_id = worker.document["runId"]
    sentence = in_progress_sentence(conn, run_id)
    for loser in finished:
        if loser is worker:
            continue
        assert loser.document["skipped"] == sentence
        assert totals(loser.document) == dict.fromkeys(SAMPLE_TOTALS, 0)
        assert loser.document["durationMs"] < 2000, "a competitor waited for the holder"
        assert loser.exited_at < worker.exited_at - 1
    assert conn.execute(
        "select status, count(*) from maintenance.runs group by 1 order by 1"
    ).fetchall() == [("skipped", len(finished) - 1), ("succeeded", 1)]
    assert conn.execute("select * from maintenance.maintenance_status").fetchone() == (0, 0, 0, 0)


def test_five_runs_started_together_one_works_the_others_exit_0_naming_it(
    db_url: str, conn: Conn
) -> None:
    load_sample(conn)
    # 289 uploads at 20 ms each, in batches of 50: the worker holds the lease for about 6 s.
    slow_down_deletes(conn, 0.02)

    processes = [launch(db_url, "run", "--json", "--batch-size", "50") for _ in range(5)]
    # While it works: the lease is the default 60 s from its last sign of life, and renewed.
    deadline = time.monotonic() + 30
    lease = "select run_id, renewed_at, expires_at - renewed_at from maintenance.run_lease"
    while (first := conn.execute(lease).fetchone()) is None or first[0] is None:
        assert time.monotonic() < deadline, "no run took the lease"
        time.sleep(0.05)
    time.sleep(1.5)
    later = conn.execute(lease).fetchone()
    finished = wait_all(processes)

    check_one_worker(conn, finished)
    assert later is not None
    assert later[0] == first[0]
    assert later[1] > first[1], "the lease is renewed as the batches commit"
    assert first[2] == later[2] == timedelta(seconds=60)


def test_a_sigkilled_run_blocks_the_next_one_only_until_its_lease_lapses(
    db_url: str, conn: Conn, cli: Cli
) -> None:
    rows = 40
    conn.execute(
        "insert into temp_uploads (created_at, storage_path) "
        "select now() - interval '2 days', 'f' || n from generate_series(1, %s) n",
        [rows],
    )
    slow_down_deletes(conn, 0.3)
    lease = {"MAINTCTL_RUN_LEASE": "3s"}
    process = launch(db_url, "run", "--batch-size", "2", env=lease)
    deadline = time.monotonic() + 30
    while count(conn, "select count(*) from temp_uploads") > rows - 4:
        assert time.monotonic() < deadline, "the purge never got going"
        time.sleep(0.05)

    process.send_signal(signal.SIGKILL)
    process.communicate()
    killed_at = time.monotonic()
    killed_run = count(conn, "select id from maintenance.runs")
    blocked = cli("run", "--json", env=lease)
    configured = conn.execute("select expires_at - renewed_at from maintenance.run_lease")
    conn.execute("drop trigger slow on temp_uploads")
    while True:  # the next run, as cron would retry it
        waited = time.monotonic() - killed_at
        document = json.loads(cli("run", "--json", env=lease).stdout)
        if document["skipped"] is None:
            break
        assert waited < 10, "the killed run's lease never lapsed"
        time.sleep(0.25)

    assert json.loads(blocked.stdout)["skipped"] == in_progress_sentence(conn, killed_run)
    assert configured.fetchone() == (timedelta(seconds=3),)
    assert waited < 3 + 2, "blocked longer than the lease (plus the killed batch's last statement)"
    purged_by_killed_run = rows - document["tempUploadsPurged"]
    assert purged_by_killed_run % 2 == 0, "only whole batches were committed"
    assert purged_by_killed_run >= 4
    assert count(conn, "select count(*) from temp_uploads") == 0
    statuses = dict(conn.execute("select id, status from maintenance.runs").fetchall())
    assert statuses.pop(killed_run) == "abandoned"
    assert statuses.pop(document["runId"]) == "succeeded"
    assert set(statuses.values()) == {"skipped"}
    history = json.loads(cli("history", "--json").stdout)
    assert [run["status"] for run in history if run["id"] == killed_run] == ["abandoned"]


def test_through_pgbouncer_in_transaction_mode_five_runs_still_give_one_worker(
    db_url: str, conn: Conn, start_pgbouncer: StartPooler
) -> None:
    # One server session for all clients: each transaction of each run may land on the session
    # another run used a moment ago, so no session state (an advisory lock) can guard a run.
    pooler = start_pgbouncer(pool_size=1)
    url = pooler.url(db_url)
    load_sample(conn)
    # Short batches (5 uploads at 20 ms: 0.1 s), since a competitor's statements queue for the
    # one server session behind them; about 6 s of work in all.
    slow_down_deletes(conn, 0.02)

    processes = [launch(url, "run", "--json", "--batch-size", "5") for _ in range(5)]
    finished = wait_all(processes)

    check_one_worker(conn, finished)
    worker = next(f for f in finished if f.document["skipped"] is None)
    # At least one batch per 5 of the 289 uploads: batches of 100 ms shrink towards the 50 ms
    # target after the first (issue 11's probe), so there are more.
    assert worker.document["tasks"][1]["batches"] >= 58, "many transactions through the pooler"


def test_a_migrated_database_works_through_pgbouncer(
    db_url: str, conn: Conn, start_pgbouncer: StartPooler
) -> None:
    load_sample(conn)
    url = start_pgbouncer(pool_size=1).url(db_url)
    through = make_cli(url)

    with psycopg.connect(url, autocommit=True) as application:
        # An application client of the same pooler leaves a prepared statement (psycopg's first
        # name) on the one server session that every client shares: a client that prepares
        # statements of its own would collide with it, or not find its own on another session.
        application.execute("select 1", prepare=True)
        ran = through("run", "--json", "--batch-size", "10")
        status = through("status", "--json")
        again = through("run", "--json")

    assert ran.exit_code == 0, ran.stderr
    assert totals(json.loads(ran.stdout)) == SAMPLE_TOTALS
    assert status.exit_code == 0, status.stderr
    document = json.loads(status.stdout)
    assert [document[key] for key in ("stuckRuns", "oldTempUploads", "oldRawItems")] == [0, 0, 0]
    assert document["lastRun"]["status"] == "succeeded"
    assert json.loads(again.stdout)["skipped"] is None, "the first run released its lease"
    assert count(conn, "select count(*) from maintenance.run_lease where expires_at > now()") == 0


def history_status(cli: Cli, run_id: int) -> str:
    (status,) = [
        run["status"] for run in json.loads(cli("history", "--json").stdout) if run["id"] == run_id
    ]
    return str(status)


def test_a_run_inside_a_batch_keeps_the_lease_even_past_its_expiry_then_is_abandoned(
    db_url: str, conn: Conn, cli: Cli
) -> None:
    add_temp_upload(conn, "2 days")
    with psycopg.connect(db_url, autocommit=True) as holder:
        run_id = hold_run_lease(holder, "cron-host-a", lease="1 second")
        time.sleep(1.2)  # its committed lease has lapsed
        with holder.transaction():
            # ...but it is inside a batch: the batch renewed the lease first, which locks the row
            # until the batch commits, however long the batch takes.
            holder.execute("select maintenance.renew_run_lease(%s, '1 second')", [run_id])
            time.sleep(1.2)
            during = history_status(cli, run_id)
            competitor = json.loads(cli("run", "--json").stdout)
            raise psycopg.Rollback  # the process died mid-batch: the batch rolls back
        after = history_status(cli, run_id)
        taken_over = json.loads(cli("run", "--json").stdout)

    assert during == "running"
    assert competitor["skipped"] == in_progress_sentence(conn, run_id)
    assert count(conn, "select count(*) from temp_uploads") == 0, "the next run did the work"
    assert after == "abandoned", "a lapsed lease outside a batch: the run is gone"
    assert taken_over["tempUploadsPurged"] == 1
    assert conn.execute(
        "select status from maintenance.runs where id = %s", [run_id]
    ).fetchone() == ("abandoned",)


def test_a_stalled_run_that_lost_its_lease_stops_without_committing(
    db_url: str, conn: Conn
) -> None:
    add_temp_upload(conn, "2 days")
    with psycopg.connect(db_url, autocommit=True) as stalled:
        run_id = hold_run_lease(stalled, "cron-host-a", lease="1 second")
        time.sleep(1.2)
        # Meanwhile another run took the lease over (and finished nothing yet).
        conn.execute("select maintenance.take_run_lease('cron-host-b', 1, '1 hour')")
        with stalled.transaction():
            renewed = stalled.execute(
                "select maintenance.renew_run_lease(%s, '1 minute')", [run_id]
            ).fetchone()

    assert renewed == (False,), "the stalled run learns it lost the lease, and its batch rolls back"


def test_doctor_says_a_transaction_pooler_sits_in_between_and_where_to_migrate(
    db_url: str, start_pgbouncer: StartPooler
) -> None:
    pooler = start_pgbouncer(pool_size=2)
    through = make_cli(pooler.url(db_url))

    result = through("doctor", "--json")

    assert result.exit_code == 0, result.stdout
    document = json.loads(result.stdout)
    assert document["healthy"] is True
    check = document["checks"][1]
    assert check["check"] == "pooler"
    assert check["verdict"] == "warn"
    assert check["detail"] == (
        "a pooler in transaction mode sits between maintctl and the server (dialled "
        f"127.0.0.1:{pooler.port}, the server listens on port {pooler.server_port}): runs are safe "
        "through it (the run lease keeps no session state), but run `maintctl migrate` over a "
        f"direct connection to the server (port {pooler.server_port}): it holds a session lock "
        "and session settings while it builds indexes"
    )
    people = through("doctor")
    assert "warn pooler: a pooler in transaction mode" in people.stdout


def test_migrate_through_a_transaction_pooler_is_refused_naming_the_direct_port(
    bare_db_url: str, start_pgbouncer: StartPooler
) -> None:
    pooler = start_pgbouncer(pool_size=2)
    through = make_cli(pooler.url(bare_db_url))

    refused = through("migrate")

    assert refused.exit_code == 78
    assert refused.stderr == (
        "maintctl: error: migrate needs a direct connection to the server, not the pooler in "
        f"transaction mode at 127.0.0.1:{pooler.port} (it holds a session lock and session "
        "settings while it builds indexes): use the server's own port "
        f"({pooler.server_port}), e.g. Supabase's direct connection or session pooler instead "
        "of the transaction pooler\n"
    )
    with psycopg.connect(bare_db_url) as conn:
        assert count(conn, "select count(*) from pg_namespace where nspname = 'maintenance'") == 0
    assert make_cli(bare_db_url)("migrate").exit_code == 0, "directly, it migrates"


def test_a_run_whose_lease_was_taken_over_stops_at_its_next_batch_with_exit_1(
    db_url: str, conn: Conn
) -> None:
    conn.execute(
        "insert into temp_uploads (created_at, storage_path) "
        "select now() - interval '2 days', 'f' || n from generate_series(1, 40) n"
    )
    slow_down_deletes(conn, 0.2)
    process = launch(db_url, "purge-temp", "--batch-size", "2")
    deadline = time.monotonic() + 30
    while count(conn, "select count(*) from temp_uploads") > 36:
        assert time.monotonic() < deadline, "the purge never got going"
        time.sleep(0.05)

    # As if the run had stalled past its lease and another run had taken the lease over (this
    # waits for the batch in flight, which holds the lease row, to commit).
    conn.execute("update maintenance.run_lease set run_id = 0, host = 'cron-host-b'")
    after_take_over = count(conn, "select count(*) from temp_uploads")
    _, stderr = process.communicate(timeout=30)

    assert process.returncode == 1, stderr
    assert stderr.splitlines()[-1] == (
        "maintctl: error: another run took the run lease over; this run stopped and its batch in "
        "flight rolled back"
    )
    assert "Traceback" not in stderr
    assert count(conn, "select count(*) from temp_uploads") == after_take_over, (
        "no batch committed without the lease"
    )
    row = conn.execute("select status, tasks from maintenance.runs").fetchone()
    assert row is not None
    assert row[0] == "failed"
    assert row[1][0]["rows"] == 40 - after_take_over


def _purge_with_heartbeat(db_url: str, run_id: int) -> BaseException:
    """purge-temp's batch loop in process under `run_id`'s heartbeat: how it ended."""
    from pydantic import SecretStr

    from maintctl import db
    from maintctl.guard import Heartbeat
    from maintctl.settings import Settings
    from maintctl.tasks import TASKS_BY_NAME, TaskAborted, run_task

    settings = Settings(database_url=SecretStr(db_url))
    heartbeat = Heartbeat(run_id, timedelta(minutes=1), guarded=True)
    with db.connect(settings) as maintctl:
        try:
            run_task(
                maintctl,
                TASKS_BY_NAME["temp"],
                settings,
                dry_run=False,
                run_id=run_id,
                heartbeat=heartbeat,
            )
        except TaskAborted as aborted:
            return aborted.cause
    raise AssertionError("the task went on without the lease")


def test_a_batch_that_starts_without_the_lease_does_nothing(db_url: str, conn: Conn) -> None:
    # The lease is renewed by the batch's first statement (with its limits): a run that lost it
    # stops there, before its step runs (a sequence counts the step's deletes even when their
    # transaction rolls back).
    add_temp_upload(conn, "2 days")
    other = hold_run_lease(conn, "cron-host-b")
    conn.execute("create sequence deletes_tried")
    conn.execute(
        "create function count_delete() returns trigger language plpgsql as $$ "
        "begin perform nextval('deletes_tried'); return old; end $$"
    )
    conn.execute(
        "create trigger count_delete before delete on temp_uploads "
        "for each row execute function count_delete()"
    )

    cause = _purge_with_heartbeat(db_url, other + 1)

    assert isinstance(cause, LeaseLost)
    assert count(conn, "select count(*) from temp_uploads") == 1
    tried = "select case when is_called then last_value else 0 end from deletes_tried"
    assert count(conn, tried) == 0


def test_a_batch_that_lost_the_lease_while_it_worked_rolls_back(db_url: str, conn: Conn) -> None:
    # The lease is renewed again by the step's own statement, at its end: a batch during which
    # the lease went to another run (here by the batch's own trigger, inside its transaction)
    # does not commit.
    add_temp_upload(conn, "2 days")
    ours = hold_run_lease(conn, "cron-host-a")
    conn.execute(
        "create function lose_lease() returns trigger language plpgsql as $$ "
        "begin update maintenance.run_lease set run_id = 0, host = 'cron-host-b'; return old; "
        "end $$"
    )
    conn.execute(
        "create trigger lose_lease before delete on temp_uploads "
        "for each row execute function lose_lease()"
    )

    cause = _purge_with_heartbeat(db_url, ours)

    assert isinstance(cause, LeaseLost)
    assert count(conn, "select count(*) from temp_uploads") == 1
    assert conn.execute("select run_id from maintenance.run_lease").fetchone() == (ours,)
