"""The four maintenance tasks. Each rule itself is SQL (`sql/migrations/0002_rules.sql`); a task
takes the rule's cutoff from the database clock once and applies the rule in batches, each batch
its own short transaction.

The CLI reads the task list to build its commands, so this module imports the database layer
only where a task runs: `maintctl --help` stays fast.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

from maintctl.durations import iso_timestamp
from maintctl.errors import DatabaseUnavailable, LeaseLost, TaskError

if TYPE_CHECKING:
    from maintctl.db import Connection
    from maintctl.guard import Heartbeat
    from maintctl.settings import Settings


@dataclass(frozen=True)
class Task:
    name: str  # as the JSON and the ledger name it
    command: str  # the CLI command that runs it alone
    threshold: str  # the Settings field of its threshold
    batch_query: str
    count_query: str
    json_key: str  # the total's key in the JSON report


TASKS = (
    Task(
        "stuck",
        "stuck",
        "stuck_after",
        "mark_stuck_runs_batch",
        "count_stuck_runs",
        "stuckRunsMarked",
    ),
    Task(
        "temp",
        "purge-temp",
        "temp_upload_ttl",
        "purge_temp_uploads_batch",
        "count_old_temp_uploads",
        "tempUploadsPurged",
    ),
    Task(
        "compact",
        "compact",
        "compact_after",
        "compact_import_jobs_batch",
        "count_old_import_jobs",
        "importJobsCompacted",
    ),
    Task(
        "raw",
        "purge-raw",
        "raw_items_ttl",
        "purge_raw_items_batch",
        "count_old_raw_items",
        "rawItemsPurged",
    ),
)
TASKS_BY_NAME = {task.name: task for task in TASKS}


@dataclass(frozen=True)
class TaskProgress:
    """Where a task stands after each committed batch, for a progress display."""

    task: str
    rows: int  # rows done so far
    batches: int
    total: int | None  # rows eligible when the task started, when known


ProgressCallback = Callable[[TaskProgress], None]


class TaskAborted(Exception):
    """A task cut short by an interrupt or a lost connection, with what it had committed."""

    def __init__(self, result: TaskResult, cause: BaseException) -> None:
        super().__init__(result.error)
        self.result = result
        self.cause = cause


@dataclass(frozen=True)
class TaskResult:
    task: str
    status: str  # ok | failed | stopped (max runtime reached, work left) | not_run | interrupted
    rows: int
    batches: int
    duration_ms: int
    cutoff: datetime | None
    error: str | None = None

    def as_record(self) -> dict[str, Any]:
        """The task as the JSON report and the ledger both show it."""
        return {
            "task": self.task,
            "status": self.status,
            "rows": self.rows,
            "batches": self.batches,
            "durationMs": self.duration_ms,
            "cutoff": iso_timestamp(self.cutoff) if self.cutoff else None,
            "error": self.error,
        }


def run_task(
    conn: Connection,
    task: Task,
    settings: Settings,
    *,
    dry_run: bool,
    deadline: float | None = None,
    on_batch: ProgressCallback | None = None,
    heartbeat: Heartbeat | None = None,
) -> TaskResult:
    """Apply one rule until nothing is left, or count what it would touch with `dry_run`.

    `on_batch`, when given, is called after each committed batch (and after a pre-step such as
    dropping whole partitions) with the rows done so far and the rows eligible at the start.
    The run's `heartbeat` beats inside each transaction: a real run's batch renews the run lease
    at its start (which also keeps the lease row locked while the batch works) and at its end.

    A database error fails this task only (the result says why). An interrupt or a lost
    connection ends the run: TaskAborted carries the rows committed so far and the cause.
    """
    from maintctl import db

    started = time.monotonic()
    threshold = getattr(settings, task.threshold)
    rows = batches = 0
    total: int | None = None
    cutoff: datetime | None = None

    def result(status: str, error: str | None = None) -> TaskResult:
        elapsed = int((time.monotonic() - started) * 1000)
        return TaskResult(task.name, status, rows, batches, elapsed, cutoff, error)

    if deadline is not None and time.monotonic() >= deadline:
        return result("not_run", "max runtime reached before this task started")
    try:
        with db.task_errors(conn):
            cutoff = db.fetch_value(conn, "cutoff", {"threshold": threshold})
            if dry_run:
                with db.transaction(conn, settings):
                    if heartbeat is not None:
                        heartbeat.beat(conn)
                    rows = int(db.fetch_value(conn, task.count_query, {"cutoff": cutoff}))
                return result("ok")
            if on_batch is not None:  # a count only for whoever watches: a terminal
                with db.transaction(conn, settings):
                    total = int(db.fetch_value(conn, task.count_query, {"cutoff": cutoff}))
            pre_step = PRE_STEPS.get(task.name)
            if pre_step is not None:
                rows += pre_step(conn, settings, cutoff)
                if on_batch is not None:
                    on_batch(TaskProgress(task.name, rows, batches, total))
            params = {"cutoff": cutoff, "threshold": threshold, "batch_size": settings.batch_size}
            while True:
                with db.transaction(conn, settings):
                    if heartbeat is not None:
                        heartbeat.beat(conn)
                    touched = int(db.fetch_value(conn, task.batch_query, params))
                    if heartbeat is not None:
                        heartbeat.beat(conn)
                rows += touched
                batches += 1
                if on_batch is not None:
                    on_batch(TaskProgress(task.name, rows, batches, total))
                # A short batch means the rule found nothing more it could lock.
                if touched < settings.batch_size:
                    return result("ok")
                if deadline is not None and time.monotonic() >= deadline:
                    return result("stopped", "max runtime reached; the next run carries on")
    except TaskError as exc:
        return result("failed", exc.message)
    except KeyboardInterrupt as exc:
        interrupted = result("interrupted", "interrupted; the batch in flight rolled back")
        raise TaskAborted(interrupted, exc) from exc
    except (DatabaseUnavailable, LeaseLost) as exc:
        raise TaskAborted(result("failed", exc.message), exc) from exc


# --- partitions ----------------------------------------------------------------------------


@dataclass(frozen=True)
class ExpiredPartition:
    partition_schema: str
    partition: str  # the partition's own (unqualified) name
    upper_bound: datetime
    detach_pending: bool  # a DETACH ... CONCURRENTLY that was interrupted: finalize it
    has_default: bool  # the parent has a DEFAULT partition: no CONCURRENTLY


def drop_expired_temp_partitions(conn: Connection, settings: Settings, cutoff: datetime) -> int:
    """When temp_uploads is range-partitioned by created_at, drop the partitions whose whole range
    lies before the cutoff at once, and return how many rows they held (counted exactly, after the
    detach, so no row can arrive meanwhile). The batch loop then deletes through the parent, which
    prunes to the one partition that straddles the cutoff. The DEFAULT partition is never dropped.

    The detach is CONCURRENTLY where PostgreSQL allows it (no DEFAULT partition), which cannot run
    in a transaction block; else a plain DETACH in a short transaction under lock_timeout. When a
    detach times out, the remaining partitions are left to the batch loop; a CONCURRENTLY detach
    left pending is finished (FINALIZE) by the next run.
    """
    from maintctl import db

    params = {"schema": settings.app_schema, "cutoff": cutoff}
    expired = db.fetch_all(conn, "expired_temp_uploads_partitions", params, ExpiredPartition)
    dropped = 0
    for found in expired:
        names = {
            "parent": db.identifier(settings.app_schema, "temp_uploads"),
            "partition": db.identifier(found.partition_schema, found.partition),
        }
        if found.detach_pending:
            detached = db.try_outside_transaction(conn, settings, "finalize_detach", names)
        elif found.has_default:
            detached = db.try_in_transaction(conn, settings, "detach_partition", names)
        else:
            detached = db.try_outside_transaction(
                conn, settings, "detach_partition_concurrently", names
            )
        if not detached:
            # The application holds the table (and a pending detach blocks any other): the rest
            # go by the batch loop, and the next run finishes a pending detach.
            break
        with db.transaction(conn, settings):
            # Detached, the table takes no new rows: the count is exact. A row at or past the
            # cutoff (it cannot be there, by the partition's bounds) stops the drop.
            held = db.fetch_composed(
                conn, "count_detached_partition", names, {"cutoff": cutoff}, Held
            )
            if held.fresh:
                raise TaskError(
                    f"partition {found.partition} holds {held.fresh} rows newer than the cutoff; "
                    "it was detached but not dropped"
                )
            db.execute_composed(conn, "drop_partition", names)
        dropped += held.rows
    return dropped


@dataclass(frozen=True)
class Held:
    rows: int
    fresh: int


# Steps a task takes before its batch loop, by task name.
PRE_STEPS: dict[str, Callable[[Connection, Settings, datetime], int]] = {
    "temp": drop_expired_temp_partitions,
}
