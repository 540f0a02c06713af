"""A hot standby or a read-only session (DESIGN.md, "Real databases"): every command that writes
refuses with exit 78 saying so, before it changes anything; doctor fails on it; status and
history, which only read, still answer. The standby is a real one, streaming from a private
primary (tests/standby.py)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import psycopg
from psycopg import sql

from tests.conftest import Cli, make_cli
from tests.data import Conn, add_temp_upload, count
from tests.private_server import PrivateServer, private_server  # noqa: F401 - the fixture
from tests.serving import serving
from tests.standby import hot_standby

STANDBY = (
    "the database is a hot standby (in recovery, read-only): maintctl writes, so give it the "
    "primary's URL"
)
READ_ONLY = (
    "the session is read-only (default_transaction_read_only = on, set for this role, database "
    "or URL): maintctl writes, so give it a read-write connection"
)


def writing_commands(tmp_path: Path) -> list[tuple[str, ...]]:
    """Every command that writes, each as a user would type it."""
    return [
        ("run",),
        ("run", "--dry-run"),  # a dry run writes its ledger row
        ("stuck",),
        ("purge-temp",),
        ("compact",),
        ("purge-raw",),
        ("migrate",),
        ("pause",),
        ("resume",),
        ("drain-outbox", str(tmp_path / "handover.jsonl")),
        ("grant", "someone"),
        ("restore", "--run", "1", "--archive", str(tmp_path / "archive")),
    ]


def test_every_writing_command_refuses_a_hot_standby(
    private_server: PrivateServer,  # noqa: F811
    tmp_path: Path,
) -> None:
    private_server.start()
    primary_url = private_server.migrated_database()
    with psycopg.connect(primary_url, autocommit=True) as primary:
        old = add_temp_upload(primary, "25 hours")
    with hot_standby(private_server) as standby:
        cli = make_cli(standby.url("imports"))

        for command in writing_commands(tmp_path):
            result = cli(*command)
            assert (command, result.exit_code) == (command, 78), result.stdout + result.stderr
            assert result.stderr.strip() == f"maintctl: error: {STANDBY}", command
        doctor = cli("doctor", "--json")
        status = cli("status", "--json")
        history = cli("history")

    assert doctor.exit_code == 78
    assert json.loads(doctor.stdout)["checks"][-1] == {
        "check": "writable",
        "ok": False,
        "verdict": "fail",
        "detail": STANDBY,
    }
    assert status.exit_code == 0, status.stderr  # reading is fine on a standby
    assert json.loads(status.stdout)["oldTempUploads"] == 1
    assert history.exit_code == 0, history.stderr
    with psycopg.connect(primary_url, autocommit=True) as primary:
        assert count(primary, "select count(*) from temp_uploads where id = %s", [old]) == 1
        assert count(primary, "select count(*) from maintenance.runs") == 0


def test_a_read_only_session_is_refused_before_anything_changes(
    cli: Cli, conn: Conn, tmp_path: Path
) -> None:
    old = add_temp_upload(conn, "25 hours")
    database = conn.execute("select current_database()").fetchone()
    assert database is not None
    conn.execute(
        sql.SQL("alter database {} set default_transaction_read_only = on").format(
            sql.Identifier(database[0])
        )
    )

    for command in writing_commands(tmp_path):
        result = cli(*command)
        assert (command, result.exit_code) == (command, 78), result.stdout + result.stderr
        assert result.stderr.strip() == f"maintctl: error: {READ_ONLY}", command
    doctor = cli("doctor", "--json")

    assert doctor.exit_code == 78
    assert json.loads(doctor.stdout)["checks"][-1]["detail"] == READ_ONLY
    assert count(conn, "select count(*) from temp_uploads where id = %s", [old]) == 1
    assert count(conn, "select count(*) from maintenance.runs") == 0


def test_serve_on_a_read_only_session_shows_the_dashboard_and_is_not_ready(
    db_url: str, conn: Conn
) -> None:
    # The dashboard and /metrics only read, as status does; a run, and so readiness, needs writes.
    add_temp_upload(conn, "25 hours")
    database = conn.execute("select current_database()").fetchone()
    assert database is not None
    conn.execute(
        sql.SQL("alter database {} set default_transaction_read_only = on").format(
            sql.Identifier(database[0])
        )
    )
    with serving(db_url, "--public-dashboard") as server:
        page = server.get("/")
        metrics = server.get("/metrics")
        ready = server.get("/readyz")

    assert page.status == 200, page.text
    assert re.search(
        r"<td class=what>Old temp uploads</td><td>1d</td><td class=n>1</td>", page.text
    )
    assert metrics.status == 200, metrics.text
    assert ready.status == 503
    assert ready.json() == {"ready": False, "reason": READ_ONLY}
