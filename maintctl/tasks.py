"""The four maintenance tasks. Each rule itself is SQL (`sql/migrations/0002_rules.sql`); a task
takes the rule's cutoff from the database clock once and applies the rule in batches, each batch
its own short transaction.

The CLI reads the task list to build its commands, so this module imports the database layer
only where a task runs: `maintctl --help` stays fast.
"""

from __future__ import annotations

import time
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
    heartbeat: Heartbeat | None = None,
) -> TaskResult:
    """Apply one rule until nothing is left, or count what it would touch with `dry_run`.

    The run's `heartbeat` beats inside each transaction: a real run's batch renews the run lease
    at its start (which also keeps the lease row locked while the batch works) and at its end.

    A database error fails this task only (the result says why). An interrupt or a lost
    connection ends the run: TaskAborted carries the rows committed so far and the cause.
    """
    from maintctl import db

    started = time.monotonic()
    threshold = getattr(settings, task.threshold)
    rows = batches = 0
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
