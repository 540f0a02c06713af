"""A run killed mid-task (SIGKILL: no handler runs) keeps in the ledger the results of the tasks it
had finished: each task's result is recorded when it ends, not only when the run does."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time

from tests.conftest import Cli
from tests.data import Conn, count, load_sample, slow_down_deletes
from tests.test_commands import cron_environment, maintctl_command


def recorded_tasks(conn: Conn) -> list[dict[str, object]]:
    row = conn.execute("select tasks from maintenance.runs order by id desc limit 1").fetchone()
    return list(row[0]) if row else []


def test_a_run_killed_mid_task_keeps_the_counts_of_the_tasks_it_finished(
    cli: Cli, conn: Conn, db_url: str
) -> None:
    load_sample(conn)  # 15 stuck runs, then temp uploads whose deletes are slowed down
    slow_down_deletes(conn, 0.2)
    env = {**cron_environment(db_url), "MAINTCTL_RUN_LEASE": "1s"}
    process = subprocess.Popen(
        [*maintctl_command(), "run", "--quiet", "--batch-size", "2"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 60
        while not recorded_tasks(conn) and time.monotonic() < deadline:
            time.sleep(0.05)
        finished = recorded_tasks(conn)
        os.kill(process.pid, signal.SIGKILL)  # inside purge-temp, its next task
        process.wait(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
    time.sleep(1.5)  # the killed run's lease lapses

    history = cli("history", "--json")
    table = cli("history")

    assert [task["task"] for task in finished] == ["stuck"]
    assert history.exit_code == 0, history.stderr
    (killed,) = json.loads(history.stdout)
    assert killed["status"] == "abandoned"
    assert [(task["task"], task["status"], task["rows"]) for task in killed["tasks"]] == [
        ("stuck", "ok", 15)
    ]
    assert "abandoned" in table.stdout
    assert "stuck 15" in table.stdout, table.stdout


def test_a_task_refused_before_it_ran_is_in_the_ledger_of_a_run_killed_later(
    cli: Cli, conn: Conn, db_url: str
) -> None:
    # stuck is refused untouched (its table is replicated without a replica identity), then the
    # run is killed inside purge-temp.
    load_sample(conn)
    conn.execute("alter table import_runs replica identity nothing")
    conn.execute("create publication runs_only for table import_runs")
    try:
        slow_down_deletes(conn, 0.2)
        env = {**cron_environment(db_url), "MAINTCTL_RUN_LEASE": "1s"}
        process = subprocess.Popen(
            [*maintctl_command(), "run", "--quiet", "--batch-size", "2"],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            deadline = time.monotonic() + 60
            while not recorded_tasks(conn) and time.monotonic() < deadline:
                time.sleep(0.05)
            finished = recorded_tasks(conn)
            os.kill(process.pid, signal.SIGKILL)
            process.wait(timeout=30)
        finally:
            if process.poll() is None:
                process.kill()
    finally:
        conn.execute("drop publication runs_only")

    assert [(task["task"], task["status"], task["rows"]) for task in finished] == [
        ("stuck", "failed", 0)
    ]
    assert str(finished[0]["error"]).startswith("import_runs has no replica identity")
    assert count(conn, "select count(*) from import_runs where status = 'processing'") > 0
