"""A maintenance run: the pause switch, one run at a time, the tasks in order, the ledger."""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from maintctl import db, guard, health, ledger
from maintctl.errors import ExitCode
from maintctl.log import Notify
from maintctl.rules.generate import policy_of
from maintctl.rules.install import safety_problems
from maintctl.settings import Settings
from maintctl.tasks import ProgressCallback, Task, TaskAborted, TaskResult, run_task
from maintctl.vacuum import VacuumResult, table_sizes, vacuum_changed_tables

if TYPE_CHECKING:
    from maintctl.archive import Destination
    from maintctl.archive.capture import RunArchive


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
    archive_pruned: list[int] = field(default_factory=list)  # runs the retention removed

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

    @property
    def impact(self) -> dict[str, int | None]:
        """What the run cost the database, over its tasks (the JSON's and the metrics' keys)."""
        return run_impact([result.as_record() for result in self.tasks])


def run_impact(tasks: list[dict[str, Any]]) -> dict[str, int | None]:
    """The WAL, the time waited on the health gate and the peak standby lag of a run, from its
    tasks as the JSON and the ledger record them (older ledger rows lack the keys)."""

    def peak(key: str) -> int | None:
        seen = [int(task[key]) for task in tasks if task.get(key) is not None]
        return max(seen) if seen else None

    return {
        "walBytes": sum(int(task.get("walBytes") or 0) for task in tasks),
        "throttledMs": sum(int(task.get("throttledMs") or 0) for task in tasks),
        "peakReplicaLagBytes": peak("peakReplicaLagBytes"),
        "peakReplicaLagMs": peak("peakReplicaLagMs"),
    }


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
    archive: Destination | None = None,
    force: bool = False,
) -> RunReport:
    """Run the given tasks in order, each isolated from the others' failures, and record it.

    Skips (and says why) when maintenance is paused, or when another non-dry run holds the run
    lease (see maintctl.guard). `notify(event, level, **fields)` hears of each step (lease taken,
    run started, task done). With `vacuum` (not on a dry run), the tables the tasks changed a lot
    are vacuumed afterwards. With an `archive` (not on a dry run), the run's removed rows are
    archived there batch by batch, its manifest written when the run ends, and then the runs
    older than MAINTCTL_ARCHIVE_RETENTION pruned. `force` lets a task past the anomaly guard
    (maintctl.limits).
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

    start = _open_run(conn, settings, command=command, dry_run=dry_run, say=say)
    if isinstance(start, tuple):
        return skip(*start)
    report.run_id, report.started = start.id, start.started_at
    heartbeat = guard.Heartbeat(start.id, settings.run_lease, guarded=not dry_run)
    deadline = clock + max_runtime.total_seconds() if max_runtime else None
    archived: RunArchive | None = None
    try:
        if not dry_run:
            say("lease_taken")
        say("run_started", runId=start.id, command=command, dryRun=dry_run)
        if archive is not None and not dry_run:
            from maintctl.archive.capture import RunArchive

            archived = RunArchive.start(conn, settings, archive, start.id)
        if not dry_run and health.read_health(conn).blind:
            say("gate_blind", "warning", message=health.BLIND_SENTENCE)
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
            archive=archived,
            force=force,
        )
        if archived is not None:
            archived.close(datetime.now(UTC))
    except (Exception, KeyboardInterrupt) as exc:
        if archived is not None:  # what was archived stays readable: its manifest says so
            with db.best_effort(), contextlib.suppress(OSError):
                archived.close(datetime.now(UTC))
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
    if archive is not None and settings.archive_retention is not None:
        report.archive_pruned = archive.prune(settings.archive_retention)
    return report


def _open_run(
    conn: db.Connection, settings: Settings, *, command: str, dry_run: bool, say: Notify
) -> ledger.RunStart | tuple[str, ExitCode]:
    """The run's ledger row, or why the run is skipped and its exit code: paused, or (not for a
    dry run, which changes nothing and needs no lease) another run holds the lease."""
    pause = ledger.pause_state(conn)
    if pause.paused and not dry_run:
        return ledger.pause_sentence(pause), ExitCode.DISABLED
    if pause.paused:  # a dry run changes nothing: it goes on, and says so
        sentence = ledger.pause_sentence(pause)
        say("warning", "warning", message=f"{sentence}; a dry run changes nothing, so it goes on")
    if dry_run:
        return ledger.start_run(conn, settings, command=command, dry_run=True)
    opened = guard.start_guarded_run(conn, settings, command=command)
    if isinstance(opened, guard.LeaseHolder):
        return opened.sentence(), ExitCode.OK
    return opened


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
    archive: RunArchive | None,
    force: bool,
) -> None:
    """The tasks in order, each result appended to the report as it ends; then --vacuum."""
    sizes = table_sizes(conn, settings) if vacuum else {}
    # A rule whose DML would fail, do nothing or see only some rows (Row Level Security, a NOT
    # NULL column it clears, no replica identity) fails without touching anything: never an ok
    # with 0 rows.
    problems, _ = safety_problems(conn, policy_of(settings))
    for task in tasks:
        if task.name in problems:
            result = TaskResult(task.name, "failed", 0, 0, 0, None, "; ".join(problems[task.name]))
        else:
            result = run_task(
                conn,
                task,
                settings,
                dry_run=report.dry_run,
                deadline=deadline,
                run_id=report.run_id,
                on_batch=on_batch,
                heartbeat=heartbeat,
                archive=archive,
                force=force,
            )
        report.tasks.append(result)
        if report.run_id is not None:  # a run killed later still shows what this one did
            ledger.record_tasks(conn, report.run_id, [r.as_record() for r in report.tasks])
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
