"""A maintenance run: the pause switch, one run at a time, the tasks in order, the ledger."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from maintctl import db, ledger
from maintctl.errors import ExitCode
from maintctl.settings import Settings
from maintctl.tasks import ProgressCallback, Task, TaskAborted, TaskResult, run_task


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
    on_batch: ProgressCallback | None = None,
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
        try:
            for task in tasks:
                report.tasks.append(
                    run_task(
                        conn,
                        task,
                        settings,
                        dry_run=dry_run,
                        deadline=deadline,
                        run_id=report.run_id,
                        on_batch=on_batch,
                    )
                )
        except (Exception, KeyboardInterrupt) as exc:
            cause: BaseException = exc
            if isinstance(exc, TaskAborted):
                report.tasks.append(exc.result)  # the rows its committed batches touched
                cause = exc.cause
            if isinstance(cause, KeyboardInterrupt):
                db.cancel_in_flight(conn)
                _finish(conn, settings, report, clock, "interrupted", in_flight=True)
            else:  # a lost connection, or a bug: the ledger says so if it can
                error = None if isinstance(exc, TaskAborted) else str(exc)
                _finish(conn, settings, report, clock, "failed", in_flight=True, error=error)
            raise cause from cause.__cause__  # the original, its own chain kept
        _finish(conn, settings, report, clock, "failed" if report.errors else "succeeded")
    finally:
        if locked:
            _release_run_lock(conn)
    return report


def _finish(
    conn: db.Connection,
    settings: Settings,
    report: RunReport,
    clock: float,
    status: str,
    *,
    in_flight: bool = False,
    error: str | None = None,
) -> None:
    """Close the run's ledger row. With an exception in flight this is best effort and never
    hides that exception: an interrupted statement can leave the session unusable, so a fresh
    session records the outcome. A row that cannot be closed stays 'running' and the next run
    marks it abandoned."""
    report.duration_ms = int((time.monotonic() - clock) * 1000)
    if report.run_id is None:
        return
    errors = report.errors + ([error] if error else [])
    tasks = [result.as_record() for result in report.tasks]

    def record(session: db.Connection) -> None:
        ledger.finish_run(session, report.run_id or 0, status=status, tasks=tasks, errors=errors)
        ledger.prune(session, settings)

    if not in_flight:
        record(conn)
        return
    with db.best_effort():
        try:
            record(conn)
        except Exception:
            with db.connect(settings) as fresh:
                record(fresh)


def _release_run_lock(conn: db.Connection) -> None:
    # Closing the session releases the lock too, so a failure here changes nothing.
    with db.best_effort():
        if not conn.closed and not conn.broken:
            db.fetch_value(conn, "run_unlock")
