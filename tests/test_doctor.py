"""`maintctl doctor`, the CI smoke check: one verdict per line, and the contract's exit code for
each way a database can be unfit (the healthy, unmigrated and unreachable cases are in
test_commands.py)."""

from __future__ import annotations

import json
import shutil
from typing import Any

import pytest

from maintctl.sqlfiles import migrations
from tests.conftest import Cli
from tests.data import MAINTENANCE_GRANTS, Conn, count, grant, load_sample
from tests.test_commands import as_role, login_role, run_like_cron


def checks(stdout: str) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = json.loads(stdout)["checks"]
    return found


def test_a_missing_column_exits_78_naming_it(cli: Cli, conn: Conn) -> None:
    conn.execute("alter table import_runs drop column heartbeat_at")

    result = cli("doctor", "--json")
    people = cli("doctor")

    assert result.exit_code == 78
    assert checks(result.stdout)[-1] == {
        "check": "columns",
        "ok": False,
        "verdict": "fail",
        "detail": "missing column import_runs.heartbeat_at (needed by stuck)",
    }
    assert people.exit_code == 78
    assert people.stdout.splitlines()[-2:] == [
        "FAIL columns: missing column import_runs.heartbeat_at (needed by stuck)",
        "not healthy",
    ]


def test_every_missing_column_is_named_with_its_rules(cli: Cli, conn: Conn) -> None:
    conn.execute("alter table import_runs drop column finished_at")
    conn.execute("alter table import_jobs drop column compacted_at")

    result = cli("doctor", "--json")

    assert result.exit_code == 78
    assert checks(result.stdout)[-1]["detail"] == (
        "missing column import_runs.finished_at (needed by stuck), "
        "import_jobs.compacted_at (needed by compact), "
        "import_runs.finished_at (needed by raw)"
    )


def test_a_role_lacking_a_privilege_exits_77_naming_it_and_the_task(
    db_url: str, conn: Conn
) -> None:
    load_sample(conn)
    with login_role(conn, db_url) as (role, url):
        grant(
            conn,
            role,
            *MAINTENANCE_GRANTS,
            "grant select on import_runs to {}",  # no UPDATE: stuck and raw cannot lock runs
            "grant select, update on import_jobs to {}",
            "grant select, update, delete on temp_uploads, raw_import_items to {}",
        )

        result = as_role(url, "doctor", "--json")

    assert result.exit_code == 77
    lines = {check["check"]: check for check in checks(result.stdout)}
    assert lines["privileges stuck"]["detail"] == "stuck needs UPDATE on import_runs"
    assert lines["privileges raw"]["detail"] == "raw needs UPDATE on import_runs"
    assert lines["privileges temp"]["ok"] is True
    assert lines["privileges compact"]["ok"] is True
    assert "dry run" not in lines, "doctor stops at the failing step"


def test_migrations_out_of_date_exit_78(cli: Cli, conn: Conn) -> None:
    conn.execute("delete from maintenance.schema_migrations where version = 3")

    result = cli("doctor", "--json")

    assert result.exit_code == 78
    assert checks(result.stdout)[-1] == {
        "check": "migrations",
        "ok": False,
        "verdict": "fail",
        "detail": "the maintenance schema is out of date "
        f"({len(migrations()) - 1} of {len(migrations())} migrations applied); "
        "run: maintctl migrate",
    }


def test_healthy_doctor_changes_nothing_and_every_line_is_ok(cli: Cli, conn: Conn) -> None:
    load_sample(conn)

    result = cli("doctor")

    assert result.exit_code == 0
    lines = result.stdout.splitlines()
    # main's 16, the health gate's line, writable, timestamps and row security
    assert len(lines) == 20
    assert all(line.startswith("ok   ") for line in lines[:-1])
    assert lines[-1] == "healthy"
    assert count(conn, "select count(*) from maintenance.runs") == 0
    assert count(conn, "select count(*) from temp_uploads") == 433


@pytest.mark.skipif(shutil.which("faketime") is None, reason="faketime is not installed")
@pytest.mark.parametrize(
    ("offset", "side", "exit_code"), [("+10m", "ahead of", 0), ("-10m", "behind", 0)]
)
def test_a_host_clock_far_from_the_database_is_a_warning(
    db_url: str, offset: str, side: str, exit_code: int
) -> None:
    skewed = run_like_cron(
        db_url, "doctor", "--json", wrapper=("faketime", "-f", offset), timeout=60
    )
    plain = run_like_cron(db_url, "doctor", "--json", timeout=60)

    assert skewed.returncode == exit_code, skewed.stderr
    clock = next(check for check in checks(skewed.stdout) if check["check"] == "clock")
    assert clock["ok"] is True
    assert clock["verdict"] == "warn"
    assert clock["detail"].startswith(f"this host's clock is 10m {side} the database's")
    assert json.loads(skewed.stdout)["healthy"] is True
    normal = next(check for check in checks(plain.stdout) if check["check"] == "clock")
    assert normal["verdict"] == "ok"
    assert normal["detail"].startswith("within ")
