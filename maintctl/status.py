"""`maintctl status` and `maintctl doctor`: what is waiting, and whether maintctl can work here."""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import datetime, timedelta

from maintctl import db, ledger, migrations, pooler
from maintctl.errors import ConfigError, ExitCode, MaintctlError, PermissionDenied
from maintctl.settings import Settings
from maintctl.sqlfiles import migrations as known_migrations
from maintctl.tasks import TASKS, run_task


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
    with db.transaction(conn, settings):
        counts = db.fetch_one(conn, "pending_counts", settings.thresholds(), PendingCounts)
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
    present: bool
    can_select: bool
    can_update: bool
    can_delete: bool

    def lacking(self, needed: tuple[str, ...]) -> list[str]:
        held = {"SELECT": self.can_select, "UPDATE": self.can_update, "DELETE": self.can_delete}
        return [privilege for privilege in needed if not held[privilege]]


# What the tasks do to each application table. Every batch locks its rows first (FOR UPDATE or
# FOR SHARE), and PostgreSQL asks UPDATE for that even where the batch then deletes.
NEEDED_PRIVILEGES = {
    "import_runs": ("SELECT", "UPDATE"),
    "raw_import_items": ("SELECT", "UPDATE", "DELETE"),
    "temp_uploads": ("SELECT", "UPDATE", "DELETE"),
    "import_jobs": ("SELECT", "UPDATE"),
}


def run_doctor(settings: Settings) -> list[Check]:
    """The CI smoke check: each step a verdict; stops at the first failing step."""
    checks: list[Check] = []
    step = "connection"
    started = time.monotonic()
    try:
        with db.connect(settings) as conn, db.database_errors(conn):
            server = db.fetch_one(conn, "server_info", {}, migrations.ServerInfo)
            elapsed = int((time.monotonic() - started) * 1000)
            target = db.describe_target(settings)
            detail = f"{target}, PostgreSQL {server.server_version}, {elapsed} ms"
            checks.append(Check(step, True, detail))

            step = "pooler"
            checks.append(pooler_check(conn, settings))

            step = "migrations"
            migrations.ensure_migrated(conn, settings)
            checks.append(Check(step, True, f"all {len(known_migrations())} applied"))

            step = "tables"
            absent, lacking = [], []
            for table, needed in NEEDED_PRIVILEGES.items():
                params = {"schema": settings.app_schema, "table": table}
                found = db.fetch_one(conn, "table_privileges", params, TablePrivileges)
                if not found.present:
                    absent.append(table)
                lacking += [f"{privilege} on {table}" for privilege in found.lacking(needed)]
            if absent:
                missing = ", ".join(absent)
                raise ConfigError(f"missing in schema {settings.app_schema!r}: {missing}")
            if lacking:
                raise PermissionDenied("missing: " + ", ".join(lacking))
            checks.append(Check(step, True, "all four present, with what each task needs"))

            step = "pause"
            state = ledger.pause_state(conn)
            paused = ledger.pause_sentence(state) if state.paused else "not paused"
            checks.append(Check(step, True, paused))

            step = "dry run"
            results = [run_task(conn, task, settings, dry_run=True) for task in TASKS]
            failures = [f"{r.task}: {r.error}" for r in results if r.status == "failed"]
            if failures:
                raise ConfigError("; ".join(failures))
            counts = ", ".join(f"{r.task} {r.rows}" for r in results)
            checks.append(Check(step, True, f"would touch: {counts}"))
    except MaintctlError as exc:
        checks.append(Check(step, False, exc.message, exc.exit_code))
    return checks


def pooler_check(conn: db.Connection, settings: Settings) -> Check:
    """Doctor's verdict on what sits between maintctl and the server (see maintctl.pooler)."""
    probe = pooler.probe(conn, settings)
    if probe.transaction_pooler:
        return Check(
            "pooler",
            True,
            f"warning: a pooler in transaction mode sits between maintctl and the server (dialled "
            f"{probe.dialled}, the server listens on port {probe.server_port}): runs are safe "
            "through it (the run lease keeps no session state), but run `maintctl migrate` over "
            f"a direct connection to the server (port {probe.server_port}): it holds a session "
            "lock and session settings while it builds indexes",
        )
    if probe.dialled_port != probe.server_port:
        return Check(
            "pooler",
            True,
            f"a pooler or proxy in session mode (dialled {probe.dialled}, the server listens on "
            f"port {probe.server_port}): every command works through it",
        )
    return Check("pooler", True, f"none: maintctl talks to the server directly ({probe.dialled})")
