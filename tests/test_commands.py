"""`doctor`, and maintctl run as a real process the way cron runs it."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from psycopg import sql
from psycopg.conninfo import make_conninfo
from typer.testing import CliRunner

from maintctl.cli import app
from tests.conftest import Cli, CliResult
from tests.data import (
    APPLICATION_GRANTS,
    MAINTENANCE_GRANTS,
    Conn,
    count,
    grant,
    load_sample,
    slow_down_deletes,
)


def test_doctor_reports_each_check_and_exits_0_when_healthy(cli: Cli, conn: Conn) -> None:
    load_sample(conn)

    result = cli("doctor", "--json")

    assert result.exit_code == 0, result.stderr
    document = json.loads(result.stdout)
    assert document["healthy"] is True
    assert [check["check"] for check in document["checks"]] == [
        "connection",
        "pooler",
        "writable",
        "migrations",
        "tables",
        "columns",
        "timestamps",
        "row security",
        "privileges stuck",
        "privileges temp",
        "privileges compact",
        "privileges raw",
        "run lease",
        "health gate",
        "vacuum",
        "clock",
        "pause",
        "storage outbox",
        "dry run",
    ]
    assert {check["verdict"] for check in document["checks"]} == {"ok"}
    assert (
        document["checks"][-1]["detail"] == "would touch: stuck 15, temp 289, compact 210, raw 250"
    )
    assert document["checks"][1]["detail"].startswith("none: maintctl talks to the server directly")
    assert count(conn, "select count(*) from temp_uploads") == 433, "doctor changes nothing"
    people = cli("doctor")
    assert people.stdout.splitlines()[-1] == "healthy"


def test_doctor_exits_78_before_migrate(bare_cli: Cli) -> None:
    result = bare_cli("doctor")

    assert result.exit_code == 78
    assert "FAIL migrations: the maintenance schema is not installed; run: maintctl migrate" in (
        result.stdout
    )


def test_doctor_exits_78_naming_a_missing_table(cli: Cli, conn: Conn) -> None:
    conn.execute("drop table raw_import_items")

    result = cli("doctor", "--json")

    assert result.exit_code == 78
    failed = json.loads(result.stdout)["checks"][-1]
    assert failed == {
        "check": "tables",
        "ok": False,
        "verdict": "fail",
        "detail": "missing in schema 'public': raw_import_items",
    }


def test_doctor_exits_69_when_the_database_is_unreachable(cli: Cli) -> None:
    result = cli(
        "doctor",
        env={
            "MAINTCTL_DATABASE_URL": "postgresql://maintctl@127.0.0.1:1/x",
            "MAINTCTL_CONNECT_TIMEOUT": "1s",
        },
    )

    assert result.exit_code == 69
    assert result.stdout.startswith("FAIL connection: cannot connect to maintctl@127.0.0.1:1/x")


def conn_target(url: str) -> str:
    """host:port/dbname of a test URL, as maintctl names it."""
    from psycopg.conninfo import conninfo_to_dict

    params = conninfo_to_dict(url)
    port = params.get("port") or "5432"  # libpq's default, as maintctl names it
    return f"{params['host']}:{port}/{params['dbname']}"


def user_of(url: str) -> str:
    from psycopg.conninfo import conninfo_to_dict

    return str(conninfo_to_dict(url)["user"])


def maintctl_command() -> list[str]:
    installed = shutil.which("maintctl", path=str(Path(sys.executable).parent))
    return [installed] if installed else [sys.executable, "-m", "maintctl"]


def test_maintctl_runs_as_a_real_process_like_cron(db_url: str, conn: Conn) -> None:
    load_sample(conn)
    completed = run_like_cron(db_url, "run", "--json", "--quiet")

    assert completed.returncode == 0, completed.stderr
    assert completed.stderr == ""
    document = json.loads(completed.stdout)
    assert document["tempUploadsPurged"] == 289
    assert document["errors"] == []


def test_python_dash_m_maintctl_reports_its_version() -> None:
    completed = subprocess.run(
        [sys.executable, "-m", "maintctl", "--version"],
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ},
    )
    assert completed.stdout.startswith("maintctl ")


def test_an_internal_error_is_one_line_and_exit_70_unless_debug(cli: Cli, conn: Conn) -> None:
    # A ledger the code cannot read as it expects: a column of the wrong type.
    conn.execute("alter table maintenance.runs alter column tasks type text using tasks::text")
    conn.execute(
        "insert into maintenance.runs (command, status, tasks) values ('x', 'failed', 'oops')"
    )

    plain = cli("history")
    debug = cli("history", "--debug")

    assert plain.exit_code == 70
    assert plain.stderr.count("\n") == 1
    assert "run again with --debug" in plain.stderr
    assert "Traceback" not in plain.stderr
    assert debug.exit_code == 70
    assert "Traceback" in debug.stderr


def cron_environment(db_url: str) -> dict[str, str]:
    """What cron gives a job: no terminal, a minimal PATH, no HOME."""
    return {"PATH": "/usr/bin:/bin", "MAINTCTL_DATABASE_URL": db_url}


def run_like_cron(
    db_url: str, *args: str, wrapper: tuple[str, ...] = (), timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    """`maintctl ARGS` as its own process, as cron runs it (behind `wrapper`, e.g. faketime)."""
    return subprocess.run(
        [*wrapper, *maintctl_command(), *args],
        env=cron_environment(db_url),
        capture_output=True,
        text=True,
        check=False,
        timeout=timeout,
    )


def start_slow_purge(
    conn: Conn, db_url: str, *, rows: int, seconds_per_row: float
) -> subprocess.Popen[str]:
    """`maintctl purge-temp --quiet` (errors only on stderr) in two-row batches over slow
    deletes, once two batches committed and a third is in flight (its session sleeps in the
    delete trigger: a signal sent now lands inside that batch, not in the moment between two)."""
    conn.execute(
        "insert into temp_uploads (created_at, storage_path) "
        "select now() - interval '2 days', 'f' || n from generate_series(1, %s) n",
        [rows],
    )
    slow_down_deletes(conn, seconds_per_row)
    process = subprocess.Popen(
        [*maintctl_command(), "purge-temp", "--batch-size", "2", "--json", "--quiet"],
        env=cron_environment(db_url),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 30
    in_delete = (
        "select count(*) from pg_stat_activity where datname = current_database() "
        "and application_name = 'maintctl' and wait_event = 'PgSleep'"
    )
    while count(conn, "select count(*) from temp_uploads") > rows - 4 or not count(conn, in_delete):
        assert time.monotonic() < deadline, "the purge never got going"
        time.sleep(0.01)
    return process


def test_an_interrupt_with_no_batch_in_flight_mentions_none(db_url: str) -> None:
    # Connecting to a port nobody listens on is retried for seconds: no batch is in flight.
    unreachable = make_conninfo(db_url, port="1")
    process = subprocess.Popen(
        [*maintctl_command(), "run"],
        env=cron_environment(unreachable),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    time.sleep(1.5)
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=30)

    assert process.returncode == 143, stderr
    assert stderr == "maintctl: error: interrupted by SIGTERM\n"


@pytest.mark.parametrize(("signum", "exit_code"), [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_a_signal_rolls_back_the_batch_in_flight_and_the_ledger_says_interrupted(
    db_url: str, conn: Conn, signum: int, exit_code: int
) -> None:
    process = start_slow_purge(conn, db_url, rows=40, seconds_per_row=0.3)
    process.send_signal(signum)
    _, stderr = process.communicate(timeout=30)

    assert process.returncode == exit_code, stderr
    name = signal.Signals(signum).name
    assert (
        stderr == f"maintctl: error: interrupted by {name}; the batch in flight was rolled back\n"
    )
    remaining = count(conn, "select count(*) from temp_uploads")
    assert remaining % 2 == 0, "only whole batches were committed"
    assert 0 < remaining <= 36
    row = conn.execute("select status, tasks from maintenance.runs").fetchone()
    assert row is not None
    assert row[0] == "interrupted"
    (task,) = row[1]
    assert (task["task"], task["status"]) == ("temp", "interrupted")
    assert task["rows"] == 40 - remaining, "the ledger counts every committed row"
    # The session is gone too (the server may take a moment to notice).
    sessions = (
        "select count(*) from pg_stat_activity "
        "where datname = current_database() and application_name = 'maintctl'"
    )
    deadline = time.monotonic() + 10
    while count(conn, sessions) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert count(conn, sessions) == 0


@contextmanager
def login_role(conn: Conn, db_url: str) -> Iterator[tuple[sql.Identifier, str]]:
    """A fresh login role (cluster-wide, so named for this process) and a URL that uses it."""
    name = f"maintctl_role_{os.getpid()}"
    role = sql.Identifier(name)
    conn.execute(sql.SQL("create role {} login").format(role))
    try:
        yield role, make_conninfo(db_url, user=name)
    finally:
        conn.execute(sql.SQL("drop owned by {}").format(role))
        conn.execute(sql.SQL("drop role {}").format(role))


def as_role(url: str, *args: str) -> CliResult:
    result = CliRunner().invoke(app, list(args), env={"MAINTCTL_DATABASE_URL": url})
    return CliResult(result.exit_code, result.stdout, result.stderr)


def test_exit_77_when_the_role_lacks_privileges(db_url: str, conn: Conn) -> None:
    with login_role(conn, db_url) as (_, url):
        result = as_role(url, "status")

    assert result.exit_code == 77
    assert result.stderr == (
        "maintctl: error: permission denied: permission denied for schema maintenance\n"
    )


def test_the_privileges_the_readme_lists_are_enough_and_doctor_names_a_missing_one(
    db_url: str, conn: Conn
) -> None:
    load_sample(conn)
    with login_role(conn, db_url) as (role, url):
        grant(conn, role, *MAINTENANCE_GRANTS, *APPLICATION_GRANTS)

        healthy = as_role(url, "doctor")
        ran = as_role(url, "run", "--json")
        conn.execute(sql.SQL("revoke update on temp_uploads from {}").format(role))
        lacking = as_role(url, "doctor", "--json")

    assert healthy.exit_code == 0, healthy.stdout
    assert ran.exit_code == 0, ran.stdout
    assert json.loads(ran.stdout)["tempUploadsPurged"] == 289
    assert lacking.exit_code == 77
    failed = [check for check in json.loads(lacking.stdout)["checks"] if not check["ok"]]
    assert failed == [
        {
            "check": "privileges temp",
            "ok": False,
            "verdict": "fail",
            "detail": "temp needs UPDATE on temp_uploads",
        }
    ]


def test_a_refused_login_exits_77_at_once_and_a_missing_database_69(
    db_url: str, server_url: str
) -> None:
    started = time.monotonic()
    refused = as_role(make_conninfo(db_url, user="maintctl_no_such_role"), "status")
    missing = as_role(make_conninfo(server_url, dbname="maintctl_no_such_db"), "status")
    bad_option = as_role(make_conninfo(db_url, sslmode="sometimes"), "status")

    assert time.monotonic() - started < 8, "none of these is retried for the 10 s connect budget"
    assert refused.exit_code == 77
    where = f"{conn_target(db_url)}"
    assert refused.stderr == (
        f"maintctl: error: the database refused the connection to maintctl_no_such_role@{where}: "
        'role "maintctl_no_such_role" does not exist\n'
    )
    assert missing.exit_code == 69
    server = conn_target(server_url).rsplit("/", 1)[0]
    assert missing.stderr == (
        f"maintctl: error: cannot connect to {user_of(server_url)}@{server}/maintctl_no_such_db: "
        'database "maintctl_no_such_db" does not exist\n'
    )
    assert bad_option.exit_code == 78
    assert "invalid sslmode value" in bad_option.stderr


def test_an_unexpected_database_error_exits_70_and_says_how_to_see_more(
    cli: Cli, conn: Conn
) -> None:
    # (A read-only session is refused up front, exit 78: tests/test_read_only.py.)
    conn.execute(
        "create function public.refuse() returns trigger language plpgsql as "
        "$$ begin raise exception 'the pause switch is broken'; end $$"
    )
    conn.execute(
        "create trigger refuse before update on maintenance.pause "
        "for each row execute function public.refuse()"
    )

    result = cli("pause")

    assert result.exit_code == 70
    assert result.stderr == (
        "maintctl: error: database error: the pause switch is broken "
        "(run again with --debug for the details)\n"
    )


def test_a_terminated_session_exits_69_and_the_next_run_finishes(db_url: str, conn: Conn) -> None:
    process = start_slow_purge(conn, db_url, rows=20, seconds_per_row=0.2)
    conn.execute(
        "select pg_terminate_backend(pid) from pg_stat_activity "
        "where datname = current_database() and application_name = 'maintctl'"
    )
    _, stderr = process.communicate(timeout=30)

    assert process.returncode == 69, stderr
    assert stderr == (
        "maintctl: error: lost the connection to the database: "
        "terminating connection due to administrator command\n"
    )
    row = conn.execute("select status, errors from maintenance.runs").fetchone()
    assert row is not None
    assert row[0] == "failed"
    assert "lost the connection" in row[1][0]
    conn.execute("drop trigger slow on temp_uploads")
    finished = run_like_cron(db_url, "purge-temp")
    assert finished.returncode == 0, finished.stderr
    assert count(conn, "select count(*) from temp_uploads") == 0
