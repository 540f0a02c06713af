"""A maintenance run: the pause switch, one run at a time, the tasks in order, the ledger."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from maintctl import db, guard, ledger
from maintctl.errors import ExitCode
from maintctl.log import Notify
from maintctl.rules.generate import policy_of
from maintctl.rules.install import safety_problems
from maintctl.settings import Settings
from maintctl.tasks import ProgressCallback, Task, TaskAborted, TaskResult, run_task
from maintctl.vacuum import VacuumResult, table_sizes, vacuum_changed_tables


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
    vacuum: list[VacuumResult] | None = None  # with --vacuum: what was vacuumed, and how

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
    notify: Notify | None = None,
    on_batch: ProgressCallback | None = None,
    vacuum: bool = False,
) -> RunReport:
    """Run the given tasks in order, each isolated from the others' failures, and record it.

    Skips (and says why) when maintenance is paused, or when another non-dry run holds the run
    lease (see maintctl.guard). `notify(event, level, **fields)` hears of each step (lease taken,
    run started, task done). With `vacuum` (not on a dry run), the tables the tasks changed a lot
    are vacuumed afterwards.
    """
    say: Notify = notify or (lambda *args, **fields: None)
    clock = time.monotonic()
    report = RunReport(dry_run=dry_run)

    def skip(reason: str, exit_code: ExitCode) -> RunReport:
        start = ledger.start_run(
            conn, settings, command=command, dry_run=dry_run, status="skipped", skipped=reason
        )
        report.run_id, report.started = start.id, start.started_at
        report.skipped, report.skip_exit_code = reason, exit_code
        report.duration_ms = int((time.monotonic() - clock) * 1000)
        return report

    pause = ledger.pause_state(conn)
    if pause.paused:
        return skip(ledger.pause_sentence(pause), ExitCode.DISABLED)
    if dry_run:  # a dry run changes nothing, so it needs no lease
        start = ledger.start_run(conn, settings, command=command, dry_run=True)
    else:
        opened = guard.start_guarded_run(conn, settings, command=command)
        if isinstance(opened, guard.LeaseHolder):
            return skip(opened.sentence(), ExitCode.OK)
        start = opened
    report.run_id, report.started = start.id, start.started_at
    heartbeat = guard.Heartbeat(start.id, settings.run_lease, guarded=not dry_run)
    deadline = clock + max_runtime.total_seconds() if max_runtime else None
    try:
        if not dry_run:
            say("lease_taken")
        say("run_started", runId=start.id, command=command, dryRun=dry_run)
        _run_tasks(
            conn,
            settings,
            tasks,
            report,
            deadline=deadline,
            say=say,
            on_batch=on_batch,
            heartbeat=heartbeat,
            vacuum=vacuum and not dry_run,
        )
    except (Exception, KeyboardInterrupt) as exc:
        cause: BaseException = exc
        if isinstance(exc, TaskAborted):
            report.tasks.append(exc.result)  # the rows its committed batches touched
            cause = exc.cause
        if isinstance(cause, KeyboardInterrupt):
            db.cancel_in_flight(conn)
            _finish(conn, settings, report, clock, "interrupted", in_flight=True)
        else:  # a lost connection or lease, or a bug: the ledger says so if it can
            error = None if isinstance(exc, TaskAborted) else str(exc)
            _finish(conn, settings, report, clock, "failed", in_flight=True, error=error)
        raise cause from cause.__cause__  # the original, its own chain kept
    _finish(conn, settings, report, clock, "failed" if report.errors else "succeeded")
    return report


def _run_tasks(
    conn: db.Connection,
    settings: Settings,
    tasks: tuple[Task, ...],
    report: RunReport,
    *,
    deadline: float | None,
    say: Notify,
    on_batch: ProgressCallback | None,
    heartbeat: guard.Heartbeat,
    vacuum: bool,
) -> None:
    """The tasks in order, each result appended to the report as it ends; then --vacuum."""
    sizes = table_sizes(conn, settings) if vacuum else {}
    # A rule whose DML would fail, do nothing or see only some rows (Row Level Security, a NOT
    # NULL column it clears, no replica identity) fails without touching anything: never an ok
    # with 0 rows.
    problems, _ = safety_problems(conn, policy_of(settings))
    for task in tasks:
        if task.name in problems:
            refused = TaskResult(task.name, "failed", 0, 0, 0, None, "; ".join(problems[task.name]))
            report.tasks.append(refused)
            say(
                "task_done",
                "error",
                runId=report.run_id,
                dryRun=report.dry_run,
                **refused.as_record(),
            )
            continue
        result = run_task(
            conn,
            task,
            settings,
            dry_run=report.dry_run,
            deadline=deadline,
            run_id=report.run_id,
            on_batch=on_batch,
            heartbeat=heartbeat,
        )
        report.tasks.append(result)
        level = {"ok": "info", "failed": "error"}.get(result.status, "warning")
        say("task_done", level, runId=report.run_id, dryRun=report.dry_run, **result.as_record())
    if vacuum:
        report.vacuum = vacuum_changed_tables(
            conn, settings, report.tasks, sizes, deadline=deadline
        )


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
    session records the outcome and releases the lease. A row that cannot be closed stays
    'running', its lease lapses, and the next run marks it abandoned."""
    report.duration_ms = int((time.monotonic() - clock) * 1000)
    if report.run_id is None:
        return
    errors = report.errors + ([error] if error else [])
    tasks = [result.as_record() for result in report.tasks]

    def record(session: db.Connection) -> None:
        ledger.finish_run(session, report.run_id or 0, status=status, tasks=tasks, errors=errors)
        ledger.prune(session, settings)
        if not report.dry_run:  # the next run need not wait for the lease to lapse
            guard.release(session, report.run_id or 0)

    if not in_flight:
        record(conn)
        return
    with db.best_effort():
        try:
            record(conn)
        except Exception:
            with db.connect(settings) as fresh:
                record(fresh)
