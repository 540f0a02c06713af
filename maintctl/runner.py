"""A maintenance run: the pause switch, one run at a time, the tasks in order, the ledger."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import psycopg

from maintctl import db, ledger
from maintctl.errors import ExitCode
from maintctl.settings import Settings
from maintctl.tasks import Task, TaskResult, run_task


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised as a KeyboardInterrupt so that psycopg cancels the running statement."""


@dataclass
class RunReport:
    """What a run did, for the JSON, the tables and the exit code."""

    dry_run: bool
    started: datetime = field(default_factory=lambda: datetime.now(UTC))
    run_id: int | None = None
    tasks: list[TaskResult] = field(default_factory=list)
    skipped: str | None = None
    skip_exit_code: ExitCode = ExitCode.OK
    duration_ms: int = 0

    @property
    def errors(self) -> list[str]:
        return [f"{t.task}: {t.error}" for t in self.tasks if t.status == "failed"]

    @property
    def exit_code(self) -> ExitCode:
        if self.skipped is not None:
            return self.skip_exit_code
        return ExitCode.TASK_FAILED if self.errors else ExitCode.OK

    def rows(self, task: Task) -> int:
        return sum(t.rows for t in self.tasks if t.task == task.name)


def disabled_report(dry_run: bool) -> RunReport:
    """The report of a run that MAINTCTL_ENABLED=false stopped before it connected."""
    return RunReport(
        dry_run=dry_run,
        skipped="maintenance is disabled (MAINTCTL_ENABLED=false)",
        skip_exit_code=ExitCode.DISABLED,
    )


def run_maintenance(
    conn: db.Connection,
    settings: Settings,
    tasks: tuple[Task, ...],
    *,
    command: str,
    dry_run: bool = False,
    max_runtime: timedelta | None = None,
) -> RunReport:
    """Run the given tasks in order, each isolated from the others' failures, and record it.

    Skips (and says why) when maintenance is paused, or when another non-dry run holds the lock.
    """
    clock = time.monotonic()
    report = RunReport(dry_run=dry_run)

    def skip(reason: str, exit_code: ExitCode) -> RunReport:
        start = ledger.start_run(
            conn, settings, command=command, dry_run=dry_run, status="skipped", skipped=reason
        )
        report.run_id, report.started = start.id, start.started_at
        report.skipped, report.skip_exit_code = reason, exit_code
        return report

    pause = ledger.pause_state(conn)
    if pause.paused:
        return skip(ledger.pause_sentence(pause), ExitCode.DISABLED)
    locked = not dry_run and bool(db.fetch_value(conn, "try_run_lock"))
    if not dry_run and not locked:
        holder = db.fetch_optional(conn, "current_run_holder", {}, ledger.RunHolder)
        where = ""
        if holder is not None:
            started = holder.started_at.astimezone(UTC)
            where = f" (host {holder.host}, started {started:%Y-%m-%d %H:%M:%S} UTC)"
        return skip(f"another maintenance run is in progress{where}", ExitCode.OK)
    try:
        if locked:
            db.execute(conn, "mark_abandoned_runs")
        start = ledger.start_run(conn, settings, command=command, dry_run=dry_run)
        report.run_id, report.started = start.id, start.started_at
        deadline = clock + max_runtime.total_seconds() if max_runtime else None
        status = "interrupted"
        try:
            for task in tasks:
                report.tasks.append(
                    run_task(conn, task, settings, dry_run=dry_run, deadline=deadline)
                )
            status = "failed" if report.errors else "succeeded"
        finally:
            report.duration_ms = int((time.monotonic() - clock) * 1000)
            _close_ledger(conn, settings, report, status)
    finally:
        if locked and not conn.closed and not conn.broken:
            db.fetch_value(conn, "run_unlock")
    return report


def _close_ledger(conn: db.Connection, settings: Settings, report: RunReport, status: str) -> None:
    if report.run_id is None or conn.closed or conn.broken:
        return  # the row stays 'running' and the next run marks it abandoned
    try:
        ledger.finish_run(
            conn,
            report.run_id,
            status=status,
            tasks=[t.as_record() for t in report.tasks],
            errors=report.errors,
        )
        ledger.prune(conn, settings)
    except psycopg.Error:
        if status != "interrupted":
            raise
