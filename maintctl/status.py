"""`maintctl status` and `maintctl doctor`: what is waiting, and whether maintctl can work here."""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import datetime, timedelta

import psycopg

from maintctl import db, ledger, migrations
from maintctl.errors import ExitCode, MaintctlError
from maintctl.settings import Settings
from maintctl.sqlfiles import migrations as known_migrations
from maintctl.tasks import TASKS, run_task

APPLICATION_TABLES = ("import_runs", "raw_import_items", "temp_uploads", "import_jobs")


@dataclass(frozen=True)
class PendingCounts:
    stuck_runs: int
    old_temp_uploads: int
    old_raw_items: int
    old_import_jobs: int


@dataclass(frozen=True)
class StatusReport:
    counts: PendingCounts
    pause: ledger.PauseState
    thresholds: dict[str, str]
    last_run: ledger.RunRecord | None
    last_success: datetime | None
    server_now: datetime
    max_age: timedelta | None

    @property
    def stale(self) -> bool:
        """Whether --max-age was given and no successful run is that recent (dead man's switch)."""
        if self.max_age is None:
            return False
        return self.last_success is None or self.server_now - self.last_success > self.max_age

    @property
    def exit_code(self) -> ExitCode:
        return ExitCode.TASK_FAILED if self.stale else ExitCode.OK


def get_status(
    conn: db.Connection, settings: Settings, max_age: timedelta | None = None
) -> StatusReport:
    counts = db.fetch_one(
        conn,
        "pending_counts",
        settings.thresholds(),
        PendingCounts,
    )
    server = db.fetch_one(conn, "server_info", {}, migrations.ServerInfo)
    return StatusReport(
        counts=counts,
        pause=ledger.pause_state(conn),
        thresholds=settings.thresholds_text(),
        last_run=ledger.last_run(conn),
        last_success=ledger.last_success(conn),
        server_now=server.now,
        max_age=max_age,
    )


@dataclass(frozen=True)
class Check:
    name: str
    ok: bool
    detail: str
    exit_code: ExitCode = ExitCode.OK


@dataclass(frozen=True)
class TablePrivileges:
    can_select: bool
    can_update: bool
    can_delete: bool


def run_doctor(settings: Settings) -> list[Check]:
    """The CI smoke check: each step a verdict; stops at the first step the others depend on."""
    checks: list[Check] = []

    def failed(name: str, exc: MaintctlError) -> list[Check]:
        checks.append(Check(name, False, exc.message, exc.exit_code))
        return checks

    started = time.monotonic()
    try:
        conn = db.connect(settings)
    except MaintctlError as exc:
        return failed("connection", exc)
    with conn:
        server = db.fetch_one(conn, "server_info", {}, migrations.ServerInfo)
        elapsed = int((time.monotonic() - started) * 1000)
        checks.append(
            Check(
                "connection",
                True,
                f"{db.describe_target(settings)}, PostgreSQL {server.server_version}, {elapsed} ms",
            )
        )
        try:
            migrations.ensure_migrated(conn, settings)
        except MaintctlError as exc:
            return failed("migrations", exc)
        checks.append(Check("migrations", True, f"all {len(known_migrations())} applied"))
        absent, lacking = [], []
        for table in APPLICATION_TABLES:
            try:
                privileges = db.fetch_one(
                    conn,
                    "table_privileges",
                    {"schema": settings.app_schema, "table": table},
                    TablePrivileges,
                )
            except psycopg.errors.UndefinedTable:
                absent.append(table)
                continue
            lacking += [
                f"{privilege} on {table}"
                for privilege, held in (
                    ("SELECT", privileges.can_select),
                    ("UPDATE", privileges.can_update),
                    ("DELETE", privileges.can_delete),
                )
                if not held
            ]
        if absent:
            detail = f"missing in schema {settings.app_schema!r}: {', '.join(absent)}"
            checks.append(Check("tables", False, detail, ExitCode.CONFIG))
            return checks
        if lacking:
            detail = "missing: " + ", ".join(lacking)
            checks.append(Check("privileges", False, detail, ExitCode.NO_PERMISSION))
            return checks
        checks.append(Check("privileges", True, "SELECT, UPDATE, DELETE on the four tables"))
        state = ledger.pause_state(conn)
        checks.append(
            Check("pause", True, ledger.pause_sentence(state) if state.paused else "not paused")
        )
        results = [run_task(conn, task, settings, dry_run=True) for task in TASKS]
        failures = [f"{r.task}: {r.error}" for r in results if r.status == "failed"]
        if failures:
            checks.append(Check("dry run", False, "; ".join(failures), ExitCode.CONFIG))
        else:
            counts = ", ".join(f"{r.task} {r.rows}" for r in results)
            checks.append(Check("dry run", True, f"would touch: {counts}"))
    return checks
