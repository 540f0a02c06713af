"""The health gate against a real primary and its real streaming standby (both private servers,
never the shared one): replay paused stops the purge after the throttle wait and says why, the
next run finishes with no row twice; an unconsumed logical slot stops it; a WAL-rate cap holds;
walBytes is the server's LSN difference; a role that cannot read the standbys' lag is told."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg import sql
from psycopg.conninfo import make_conninfo

from maintctl.web import ROUTE
from tests.conftest import make_cli
from tests.private_server import PrivateServer, replicated_servers
from tests.serving import SECRET, serving
from tests.test_monitoring import samples, value
from tests.test_serve import in_background, wait_for

Servers = tuple[PrivateServer, PrivateServer]


@pytest.fixture
def replicated() -> Iterator[Servers]:
    """A primary and its streaming standby, both running."""
    with replicated_servers() as servers:
        yield servers


UPLOADS = 6000


def add_old_uploads(url: str, how_many: int = UPLOADS) -> None:
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(
            "insert into temp_uploads (created_at, storage_path, size_bytes) "
            "select now() - interval '2 days', 'uploads/' || n || '/' || repeat('x', 60), n "
            "from generate_series(1, %s) n",
            [how_many],
        )


def wait_caught_up(primary: PrivateServer, standby: PrivateServer) -> None:
    """Until the standby has replayed everything the primary has written so far."""
    with psycopg.connect(primary.url(), autocommit=True) as conn:
        target = conn.execute("select pg_current_wal_lsn()").fetchone()
    with psycopg.connect(standby.url(), autocommit=True) as conn:
        for _ in range(300):
            row = conn.execute(
                "select pg_last_wal_replay_lsn() >= %s::pg_lsn", [target[0] if target else None]
            ).fetchone()
            if row and row[0]:
                return
            time.sleep(0.1)
    raise AssertionError("the standby did not catch up in 30 s")


def purge(url: str, *args: str, **env: str) -> tuple[int, dict[str, Any], str]:
    result = make_cli(url)("purge-temp", "--json", *args, env=dict(env))
    document = json.loads(result.stdout)
    return result.exit_code, document, result.stderr


def scalar(url: str, query: str, *params: Any) -> Any:
    with psycopg.connect(url, autocommit=True) as conn:
        row = conn.execute(query, params or None).fetchone()
    assert row is not None
    return row[0]


def test_paused_replay_stops_the_purge_and_the_next_run_finishes_it(replicated: Servers) -> None:
    primary, standby = replicated
    url = primary.migrated_database()
    add_old_uploads(url)
    wait_caught_up(primary, standby)
    with psycopg.connect(standby.url(), autocommit=True) as conn:
        conn.execute("select pg_wal_replay_pause()")

    code, document, stderr = purge(
        url,
        "--batch-size",
        "500",
        MAINTCTL_MAX_REPLICA_LAG="64kB",
        MAINTCTL_THROTTLE_WAIT="3s",
    )

    (task,) = document["tasks"]
    assert code == 0, stderr
    assert task["status"] == "stopped"
    assert "standby 'walreceiver' is " in task["error"]
    assert "behind in replay (MAINTCTL_MAX_REPLICA_LAG 64.0 kB)" in task["error"]
    assert "waited 3s (MAINTCTL_THROTTLE_WAIT), the next run carries on" in task["error"]
    assert 0 < task["rows"] < UPLOADS
    assert task["remaining"] == UPLOADS - task["rows"]
    assert task["throttledMs"] >= 3000
    assert task["peakReplicaLagBytes"] > 64 * 1024
    assert document["throttledMs"] == task["throttledMs"]
    assert "waiting on the health gate" in stderr
    first_rows = task["rows"]

    with psycopg.connect(standby.url(), autocommit=True) as conn:
        conn.execute("select pg_wal_replay_resume()")
    wait_caught_up(primary, standby)
    code, document, stderr = purge(url, MAINTCTL_MAX_REPLICA_LAG="64kB")

    (task,) = document["tasks"]
    assert (code, task["status"]) == (0, "ok"), stderr
    assert first_rows + task["rows"] == UPLOADS
    assert scalar(url, "select count(*) from temp_uploads") == 0
    # Every upload went to the outbox exactly once.
    assert scalar(
        url, "select count(distinct upload_id) from maintenance.storage_outbox_files"
    ) == (UPLOADS)
    assert scalar(url, "select count(*) from maintenance.storage_outbox_files") == UPLOADS


def test_a_replay_lag_given_as_a_duration_stops_the_purge_too(replicated: Servers) -> None:
    primary, standby = replicated
    url = primary.migrated_database()
    add_old_uploads(url)
    wait_caught_up(primary, standby)
    with psycopg.connect(standby.url(), autocommit=True) as conn:
        conn.execute("select pg_wal_replay_pause()")

    # While replay is paused, the standby's replay_lag grows with the clock from the first batch;
    # the WAL-rate cap makes the purge take long enough for it to pass the limit.
    code, document, stderr = purge(
        url,
        "--batch-size",
        "500",
        "--max-wal-rate",
        "256kB/s",
        "--max-replica-lag",
        "1s",
        "--throttle-wait",
        "3s",
    )

    (task,) = document["tasks"]
    assert code == 0, stderr
    assert task["status"] == "stopped"
    assert "standby 'walreceiver' is " in task["error"]
    assert " s behind in replay (MAINTCTL_MAX_REPLICA_LAG 1s)" in task["error"]
    assert task["peakReplicaLagMs"] > 1000
    assert 0 < task["rows"] < UPLOADS


def test_an_unconsumed_logical_slot_stops_the_purge(replicated: Servers) -> None:
    primary, _standby = replicated
    url = primary.migrated_database()
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("select pg_create_logical_replication_slot('analytics', 'test_decoding')")
    add_old_uploads(url)

    code, document, stderr = purge(
        url,
        "--batch-size",
        "500",
        MAINTCTL_MAX_SLOT_LAG="256kB",
        MAINTCTL_MAX_REPLICA_LAG="off",
        MAINTCTL_THROTTLE_WAIT="2s",
    )

    (task,) = document["tasks"]
    assert code == 0, stderr
    assert task["status"] == "stopped"
    assert "replication slot 'analytics' retains " in task["error"]
    assert "of WAL (MAINTCTL_MAX_SLOT_LAG 256.0 kB)" in task["error"]
    assert task["remaining"] == UPLOADS - task["rows"] > 0

    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("select pg_drop_replication_slot('analytics')")
    code, document, stderr = purge(url, MAINTCTL_MAX_SLOT_LAG="256kB")
    assert (code, document["tasks"][0]["status"]) == (0, "ok"), stderr
    assert scalar(url, "select count(*) from temp_uploads") == 0


def test_the_wal_rate_cap_holds_and_wal_bytes_is_the_servers_lsn_difference(
    private_server: PrivateServer,
) -> None:
    private_server.start()
    url = private_server.migrated_database()
    add_old_uploads(url)
    before = scalar(url, "select pg_current_wal_lsn()::text")
    rate = 256 * 1024

    code, document, stderr = purge(url, "--batch-size", "500", MAINTCTL_MAX_WAL_RATE="256kB/s")

    server_wal = scalar(url, "select pg_wal_lsn_diff(pg_current_wal_lsn(), %s)::bigint", before)
    (task,) = document["tasks"]
    assert (code, task["status"], task["rows"]) == (0, "ok", UPLOADS), stderr
    # The run's own bookkeeping (ledger, lease) writes a little WAL outside the task.
    assert 0.9 * server_wal <= task["walBytes"] <= server_wal
    assert task["walBytes"] > 2 * rate  # enough WAL that the cap had to slow the task down
    assert task["throttledMs"] > 0
    assert task["walBytes"] / (task["durationMs"] / 1000) <= rate


def test_without_the_wal_rate_cap_the_same_purge_is_not_paced(
    private_server: PrivateServer,
) -> None:
    private_server.start()
    url = private_server.migrated_database()
    add_old_uploads(url)

    code, document, stderr = purge(url, "--batch-size", "500")

    (task,) = document["tasks"]
    assert (code, task["status"], task["throttledMs"]) == (0, "ok", 0), stderr
    assert task["walBytes"] > 0


def test_a_role_that_cannot_read_the_standbys_lag_is_told_and_grant_fixes_it(
    replicated: Servers,
) -> None:
    primary, _standby = replicated
    url = primary.migrated_database()
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("create role gate_runner login")
    owner = make_cli(url)
    assert owner("grant", "gate_runner").exit_code == 0
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("revoke pg_read_all_stats from gate_runner")
    runner_url = url.replace("postgres@", "gate_runner@")
    runner = make_cli(runner_url)

    blind_run = runner("run")
    blind_doctor = runner("doctor")
    assert owner("grant", "gate_runner").exit_code == 0
    seeing_run = runner("run")
    seeing_doctor = runner("doctor")

    assert blind_run.exit_code == 0, blind_run.stderr
    assert "the health gate cannot see the standbys' replay lag" in blind_run.stderr
    assert blind_doctor.exit_code == 77
    assert "cannot see the standbys' replay lag" in blind_doctor.stdout
    assert seeing_run.exit_code == 0
    assert "cannot see" not in seeing_run.stderr
    assert seeing_doctor.exit_code == 0, seeing_doctor.stdout
    assert "1 standby" in seeing_doctor.stdout


def test_with_both_limits_off_a_paused_standby_and_a_slot_do_not_hold_the_purge(
    replicated: Servers,
) -> None:
    primary, standby = replicated
    url = primary.migrated_database()
    add_old_uploads(url)
    wait_caught_up(primary, standby)
    with psycopg.connect(standby.url(), autocommit=True) as conn:
        conn.execute("select pg_wal_replay_pause()")
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("select pg_create_logical_replication_slot('analytics', 'test_decoding')")

    code, document, stderr = purge(
        url,
        "--batch-size",
        "500",
        MAINTCTL_THROTTLE_WAIT="2s",
        MAINTCTL_MAX_REPLICA_LAG="off",
        MAINTCTL_MAX_SLOT_LAG="off",
    )

    (task,) = document["tasks"]
    assert (code, task["status"], task["rows"]) == (0, "ok", UPLOADS), stderr
    assert task["throttledMs"] == 0
    assert task["peakReplicaLagBytes"] > 64 * 1024  # the lag was there, and seen


def test_the_cost_of_a_run_is_in_its_json_ledger_history_step_lines_and_metrics(
    replicated: Servers, tmp_path: Path
) -> None:
    primary, standby = replicated
    url = primary.migrated_database()
    add_old_uploads(url)
    wait_caught_up(primary, standby)
    metrics = tmp_path / "maintctl.prom"
    cli = make_cli(url)

    result = cli("run", "--json", "--log-format", "json", "--metrics-file", str(metrics))
    history = json.loads(cli("history", "--json").stdout)

    assert result.exit_code == 0, result.stderr
    document = json.loads(result.stdout)
    tasks = {task["task"]: task for task in document["tasks"]}
    assert tasks["temp"]["walBytes"] > UPLOADS * 50  # at least the outbox's share of each row
    assert document["walBytes"] == sum(task["walBytes"] for task in tasks.values())
    assert document["throttledMs"] == sum(task["throttledMs"] for task in tasks.values()) == 0
    assert document["peakReplicaLagBytes"] == max(
        task["peakReplicaLagBytes"] for task in tasks.values()
    )
    assert document["peakReplicaLagBytes"] is not None  # the standby was seen
    with psycopg.connect(url, autocommit=True) as conn:
        row = conn.execute("select tasks from maintenance.runs where id = %s", [document["runId"]])
        ledger = {task["task"]: task for task in row.fetchone()[0]}  # type: ignore[index]
    assert {name: task["walBytes"] for name, task in ledger.items()} == {
        name: task["walBytes"] for name, task in tasks.items()
    }
    assert history[0]["walBytes"] == document["walBytes"]
    assert history[0]["peakReplicaLagBytes"] == document["peakReplicaLagBytes"]
    steps = [json.loads(line) for line in result.stderr.splitlines()]
    done = {step["task"]: step for step in steps if step["event"] == "task_done"}
    assert done["temp"]["walBytes"] == tasks["temp"]["walBytes"]
    assert done["temp"]["throttledMs"] == 0
    assert " of WAL" in done["temp"]["message"]
    found = samples(metrics)
    temp = {"command": "run", "task": "temp"}
    assert value(found, "maintctl_task_wal_bytes", **temp) == tasks["temp"]["walBytes"]
    assert value(found, "maintctl_task_throttled_seconds", **temp) == 0
    peak = value(found, "maintctl_last_run_peak_replica_lag_bytes", command="run")
    assert peak == document["peakReplicaLagBytes"]


@pytest.fixture
def owner_without_createrole(conn: psycopg.Connection[Any]) -> Iterator[tuple[str, str]]:
    """An owner of the maintenance schema that is no superuser and lacks CREATEROLE (it holds
    every other privilege with grant option), and a role for it to grant to; cluster-wide roles,
    so named for this process."""
    owner, target = f"maintctl_owner_{os.getpid()}", f"maintctl_target_{os.getpid()}"
    names = {"owner": sql.Identifier(owner), "target": sql.Identifier(target)}
    for statement in (
        "create role {owner} login",
        "create role {target} nologin",
        "alter schema maintenance owner to {owner}",
        "grant all on all tables in schema maintenance to {owner} with grant option",
        "grant all on all sequences in schema maintenance to {owner} with grant option",
        "grant all on all routines in schema maintenance to {owner} with grant option",
        "grant usage on schema public to {owner} with grant option",
        "grant all on import_runs, import_jobs, temp_uploads, raw_import_items "
        "to {owner} with grant option",
    ):
        conn.execute(sql.SQL(statement).format(**names))
    try:
        yield owner, target
    finally:
        for statement in (
            "alter schema maintenance owner to current_user",
            # One at a time: a default ACL names both, and dropping both at once trips on it.
            "drop owned by {target}",
            "drop owned by {owner}",
            "drop role {owner}, {target}",
        ):
            conn.execute(sql.SQL(statement).format(**names))


def test_an_owner_that_may_not_grant_pg_read_all_stats_still_grants_the_rest(
    db_url: str, conn: psycopg.Connection[Any], owner_without_createrole: tuple[str, str]
) -> None:
    owner, target = owner_without_createrole
    as_owner = make_cli(make_conninfo(db_url, user=owner))

    result = as_owner("grant", target, "--json")
    text = as_owner("grant", target)

    assert result.exit_code == 0, result.stderr
    refused = json.loads(result.stdout)["statsRefused"]
    assert 'role "pg_read_all_stats"' in refused  # PostgreSQL's own reason
    assert f"could not grant pg_read_all_stats: {refused}" in " ".join(text.stdout.split())
    member = "select pg_has_role(%s, 'pg_read_all_stats', 'member')"
    assert conn.execute(member, [target]).fetchone() == (False,)
    may_delete = "select has_table_privilege(%s, 'temp_uploads', 'delete')"
    assert conn.execute(may_delete, [target]).fetchone() == (True,)


AUDIT_POLICY = """
[[purge]]
name = "audit-log"
table = "audit_log"
time_column = "created_at"
older_than = "90d"
"""


def test_the_gate_paces_a_purge_rule_of_the_policy_file_too(
    private_server: PrivateServer, tmp_path: Path
) -> None:
    private_server.start()
    url = private_server.migrated_database()
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(
            "create table audit_log (id bigint generated always as identity primary key, "
            "created_at timestamptz not null, message text)"
        )
        conn.execute(
            "insert into audit_log (created_at, message) "
            "select now() - interval '100 days', repeat('m', 200) from generate_series(1, 8000)"
        )
    (tmp_path / "maintctl.toml").write_text(AUDIT_POLICY)
    cli = make_cli(url)
    assert cli("migrate").exit_code == 0
    before = scalar(url, "select pg_current_wal_lsn()::text")
    rate = 128 * 1024

    result = cli(
        "purge",
        "audit-log",
        "--json",
        "--batch-size",
        "500",
        env={"MAINTCTL_MAX_WAL_RATE": "128kB/s"},
    )

    server_wal = scalar(url, "select pg_wal_lsn_diff(pg_current_wal_lsn(), %s)::bigint", before)
    (task,) = json.loads(result.stdout)["tasks"]
    assert (result.exit_code, task["status"], task["rows"]) == (0, "ok", 8000), result.stderr
    assert 0.9 * server_wal <= task["walBytes"] <= server_wal
    assert task["walBytes"] > 2 * rate  # enough WAL that the cap had to slow the task down
    assert task["throttledMs"] > 0
    assert task["walBytes"] / (task["durationMs"] / 1000) <= rate


def test_maintctl_serve_s_stop_request_ends_a_wait_on_the_gate(replicated: Servers) -> None:
    # serve's run works in a thread, where SIGTERM never arrives: its stop request must also end
    # a wait on the gate, not only come before the next batch (here the wait would last an hour).
    primary, standby = replicated
    url = primary.migrated_database()
    with psycopg.connect(standby.url(), autocommit=True) as conn:
        conn.execute("select pg_wal_replay_pause()")
    add_old_uploads(url)  # WAL the paused standby does not replay: the gate waits from the start
    gate = {"MAINTCTL_MAX_REPLICA_LAG": "64kB", "MAINTCTL_THROTTLE_WAIT": "1h"}

    with psycopg.connect(url, autocommit=True) as conn, serving(url, env=gate) as server:
        thread, answers = in_background(lambda: server.get(ROUTE, x_cron_secret=SECRET))
        wait_for(conn, "select count(*) from maintenance.runs", "the run never started")
        server.process.terminate()
        thread.join(timeout=60)
        exit_code, output = server.stop()
        [(status, tasks)] = conn.execute("select status, tasks from maintenance.runs").fetchall()

    [answer] = answers
    assert answer.status == 503
    assert answer.json()["error"].startswith("the server is shutting down: the run stopped")
    assert exit_code == 0, output
    assert status == "interrupted"
    assert [task["status"] for task in tasks] == ["interrupted"]  # stuck, the first task
    assert scalar(url, "select count(*) from temp_uploads") == UPLOADS
