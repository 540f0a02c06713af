"""`--vacuum`: VACUUM (ANALYZE) the tables a run changed a lot, once its tasks are done.

"A lot": at least VACUUM_ALWAYS_ROWS rows, or at least VACUUM_MIN_ROWS rows that are at least
VACUUM_FRACTION of the table's rows before the run (pg_class.reltuples; a table never analyzed
counts as empty). Autovacuum would get there too, later: after a purge of millions of rows the
planner's statistics and the visibility map are stale until it does, and the space of the dead
rows is not reused.

VACUUM cannot run in a transaction block; it runs on the run's autocommit session, one table at a
time. A VACUUM that fails, or that PostgreSQL skips (the role does not own the table), is reported
and leaves the run's outcome and exit code as the tasks made them.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from maintctl import db
from maintctl.errors import DatabaseUnavailable, MaintctlError
from maintctl.rules.generate import policy_of, table_name
from maintctl.settings import Settings
from maintctl.tasks import TaskResult

VACUUM_FRACTION = 0.10
VACUUM_MIN_ROWS = 1_000
VACUUM_ALWAYS_ROWS = 100_000


def task_tables(settings: Settings) -> dict[str, str]:
    """The table each task changes, by task name."""
    policy = policy_of(settings)
    return {rule.name: table_name(rule, rule.table(rule.changes), policy) for rule in policy.rules}


@dataclass(frozen=True)
class VacuumResult:
    table: str
    rows_changed: int
    status: str  # ok | failed | skipped
    duration_ms: int
    error: str | None = None

    def as_record(self) -> dict[str, Any]:
        return {
            "table": self.table,
            "rowsChanged": self.rows_changed,
            "status": self.status,
            "durationMs": self.duration_ms,
            "error": self.error,
        }


def table_sizes(conn: db.Connection, settings: Settings) -> dict[str, float]:
    """The planner's row count of each application table, before the run changes them."""
    sizes = {}
    for table in task_tables(settings).values():
        params = {"schema": settings.app_schema, "table": table}
        sizes[table] = float(db.fetch_value(conn, "table_reltuples", params) or 0.0)
    return sizes


def changed_a_lot(rows: int, reltuples: float) -> bool:
    if rows >= VACUUM_ALWAYS_ROWS:
        return True
    return rows >= VACUUM_MIN_ROWS and rows >= VACUUM_FRACTION * max(reltuples, 0.0)


def vacuum_changed_tables(
    conn: db.Connection,
    settings: Settings,
    results: list[TaskResult],
    sizes_before: dict[str, float],
    *,
    deadline: float | None = None,
) -> list[VacuumResult]:
    """VACUUM (ANALYZE) each table the run changed a lot, in the order the tasks ran."""
    done: list[VacuumResult] = []
    tables = task_tables(settings)
    for result in results:
        table = tables[result.task]
        if not changed_a_lot(result.rows, sizes_before.get(table, 0.0)):
            continue
        if deadline is not None and time.monotonic() >= deadline:
            done.append(VacuumResult(table, result.rows, "skipped", 0, "max runtime reached"))
            continue
        started = time.monotonic()
        try:
            with db.database_errors(conn):
                warning = db.vacuum(conn, db.identifier(settings.app_schema, table))
            status = "failed" if warning else "ok"
        except DatabaseUnavailable:
            raise
        except MaintctlError as exc:
            status, warning = "failed", exc.message
        elapsed = int((time.monotonic() - started) * 1000)
        done.append(VacuumResult(table, result.rows, status, elapsed, warning))
    return done
