"""The batch loop that applies a rule (maintctl/rules/; its SQL is generated from
`sql/rules/<name>.sql`): a task takes the rule's cutoff from the database clock once and applies the
rule in batches, each batch its own short transaction.

The CLI reads the task list to build its commands, so this module imports the database layer
only where a task runs: `maintctl --help` stays fast.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any

from maintctl.durations import iso_timestamp
from maintctl.errors import (
    BATCH_ROLLED_BACK,
    BatchTimedOut,
    DatabaseUnavailable,
    LeaseLost,
    TaskError,
    Terminated,
)
from maintctl.rules import RULES, RULES_BY_NAME, Rule

if TYPE_CHECKING:
    from maintctl.archive.capture import RunArchive
    from maintctl.db import Connection
    from maintctl.guard import Heartbeat
    from maintctl.health import Gate
    from maintctl.settings import Settings


# A task is a rule (maintctl/rules/) being applied: the rules are the task list, in run order.
Task = Rule
TASKS: tuple[Task, ...] = RULES
TASKS_BY_NAME = RULES_BY_NAME


def count_rule(
    conn: Connection,
    rule: Rule,
    cutoff: datetime | None,
    limit: int | None = None,
    cutoffs: dict[str, str] | None = None,
) -> int:
    """What the rule would touch now at this cutoff (and per-status `cutoffs`), up to `limit` rows
    (None: all): the one count of each rule, for the dry run, `status` and the view alike."""
    from psycopg import sql

    from maintctl import db

    count = {"count": sql.Identifier("maintenance", rule.count_function)}
    params = {"cutoff": cutoff, "limit": limit, "cutoffs": db.jsonb(cutoffs)}
    return db.fetch_composed(conn, "rule_count", count, params, Count).rows


def rule_cutoffs(
    conn: Connection, settings: Settings, rule: Rule
) -> tuple[datetime, dict[str, str] | None]:
    """The rule's cutoff by the database clock, and with a threshold per status each status's
    (the cutoff is then the latest of them, which bounds the walk), all at one moment."""
    return all_cutoffs(conn, settings, (rule,))[0]


def all_cutoffs(
    conn: Connection, settings: Settings, rules: tuple[Rule, ...]
) -> list[tuple[datetime, dict[str, str] | None]]:
    """rule_cutoffs of several rules, in one statement."""
    from maintctl import db

    thresholds = [settings.threshold_of(rule) for rule in rules]
    by_status = [list((settings.thresholds_by_status.get(r.name) or {}).items()) for r in rules]
    thresholds += [threshold for statuses in by_status for _, threshold in statuses]
    moments = list(db.fetch_value(conn, "cutoffs", {"thresholds": thresholds}))
    found: list[tuple[datetime, dict[str, str] | None]] = []
    extra = iter(moments[len(rules) :])
    for cutoff, statuses in zip(moments, by_status, strict=False):
        if not statuses:
            found.append((cutoff, None))
            continue
        cutoffs = {status: next(extra) for status, _ in statuses}
        latest = max(cutoffs.values())
        found.append((latest, {status: moment.isoformat() for status, moment in cutoffs.items()}))
    return found


def count_rules(
    conn: Connection,
    rules: tuple[Rule, ...],
    cutoffs: list[tuple[datetime, dict[str, str] | None]],
    limit: int | None,
) -> dict[str, int]:
    """count_rule of several rules, in one statement (what `status` asks on every poll)."""
    from psycopg import sql

    from maintctl import db

    counts = sql.SQL(", ").join(
        sql.SQL("{count}({cutoff}, {limit}::bigint, {cutoffs}::jsonb)").format(
            count=sql.Identifier("maintenance", rule.count_function),
            cutoff=sql.Placeholder(f"cutoff_{position}"),
            limit=sql.Placeholder("limit"),
            cutoffs=sql.Placeholder(f"cutoffs_{position}"),
        )
        for position, rule in enumerate(rules)
    )
    params: dict[str, Any] = {"limit": limit}
    for position, (cutoff, by_status) in enumerate(cutoffs):
        params[f"cutoff_{position}"] = cutoff
        params[f"cutoffs_{position}"] = db.jsonb(by_status)
    values = db.fetch_composed_values(conn, "rule_counts", {"counts": counts}, params)
    return {rule.name: int(value) for rule, value in zip(rules, values, strict=True)}


@dataclass(frozen=True)
class Count:
    rows: int


# A batch that runs into statement_timeout is tried again at half the size, down to one row.
MIN_BATCH_SIZE = 1
# No transaction is to take longer than this, so that the application's writes never wait long
# behind one. Batches aim at AIM_BATCH_SECONDS, well under it, so that one that meets a stall (a
# checkpoint, the other sessions on the cores) or heavier rows still fits: a batch over the
# budget shrinks the next to the aim in proportion, at most by half (down to TIMED_FLOOR rows);
# one that took under AIM_GROW_BELOW of the aim grows the next towards the aim, at most doubling,
# up to the ceiling (Settings.batch_ceiling).
TARGET_BATCH_SECONDS = 0.05
AIM_BATCH_SECONDS = 0.035
AIM_GROW_BELOW = 0.8
TIMED_FLOOR = 10
# The first batch of a task is a probe of this many rows: the second is sized to fit
# AIM_BATCH_SECONDS at the probe's pace, whatever the rows weigh (a fixed first batch of 1,000
# import jobs with 4 MB logs took 5 s).
FIRST_BATCH_SIZE = 10
# Set to end every task between two batches as SIGTERM would (maintctl serve's shutdown: its run
# works in a thread, where no signal arrives).
stop_requested = threading.Event()


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
    remaining: int | None = None  # rows still eligible when the task stopped early
    batch_size: int | None = None  # where the batch size ended, adapted to time and timeouts
    # What the task cost the database (maintctl.health): WAL written, time spent waiting on the
    # health gate, and the peak standby replay lag the gate saw (None: no standby seen).
    wal_bytes: int = 0
    throttled_ms: int = 0
    peak_replica_lag_bytes: int | None = None
    peak_replica_lag_ms: int | None = None

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
            "remaining": self.remaining,
            "batchSize": self.batch_size,
            "walBytes": self.wal_bytes,
            "throttledMs": self.throttled_ms,
            "peakReplicaLagBytes": self.peak_replica_lag_bytes,
            "peakReplicaLagMs": self.peak_replica_lag_ms,
        }


@dataclass(frozen=True)
class TaskProgress:
    """Where a task stands after each committed batch, for a progress display."""

    task: str
    rows: int  # touched so far
    batches: int
    total: int | None  # eligible when the task started (counted only when someone listens)
    batch_size: int


@dataclass(frozen=True)
class Step:
    """What one batch did, and where the walk goes on (None: nothing left); with an archive,
    what it removed (maintenance.archive_lines, 0012_archive_capture.sql): the action, the
    columns the rows carry and the rows as JSON lines."""

    rows: int
    next_position: dict[str, Any] | None
    # Rows the rule could not change, left as they are (maintenance.rule_step): each's key, the
    # error and the constraint; and how many it left unchanged without an error.
    blocked: list[dict[str, Any]] | None = None
    unchanged: int = 0
    archive_action: str | None = None
    archive_columns: list[str] | None = None
    archive_rows: str | None = None
    renewed: bool | None = None  # its statement renewed the run lease (None: it did not try)


ProgressCallback = Callable[[TaskProgress], None]

# The rule_step parameters of a batch whose statement does not renew the run lease.
NO_RENEWAL: dict[str, object] = {"lease_run_id": None, "lease": None}


def next_batch_size(size: int, ceiling: int, seconds: float) -> int:
    """The size of the next batch after one of `size` rows took `seconds` (AIM_BATCH_SECONDS,
    never over TARGET_BATCH_SECONDS), within the `ceiling`."""
    if seconds > TARGET_BATCH_SECONDS and size > TIMED_FLOOR:
        return max(TIMED_FLOOR, size // 2, int(size * AIM_BATCH_SECONDS / seconds))
    if seconds < AIM_BATCH_SECONDS * AIM_GROW_BELOW and size < ceiling:
        fits = int(size * AIM_BATCH_SECONDS / max(seconds, 1e-6))
        return min(ceiling, size * 2, fits)
    return min(size, ceiling)


def size_after_probe(size: int, ceiling: int, seconds: float) -> int:
    """The size of the second batch, after the first (the probe) of `size` rows took `seconds`:
    as many rows as fit AIM_BATCH_SECONDS at that pace, within 1 and the `ceiling`."""
    fits = int(size * AIM_BATCH_SECONDS / max(seconds, 1e-6))
    return max(MIN_BATCH_SIZE, min(ceiling, fits))


def _smaller_after_timeout(size: int, timeout: BatchTimedOut) -> int:
    """The size to try again after a batch of `size` rows ran into statement_timeout."""
    if size <= MIN_BATCH_SIZE:
        raise TaskError(f"{timeout.message}, even with {size} row(s) per batch") from timeout
    return max(MIN_BATCH_SIZE, size // 2)


def _step(
    conn: Connection,
    settings: Settings,
    task: Task,
    params: dict[str, Any],
    hold: ExitStack,
    heartbeat: Heartbeat | None,
    archive: RunArchive | None,
    *,
    one_snapshot: bool = True,
) -> Step:
    """One batch, its own transaction, the run lease renewed at its start and end; none once a
    stop is requested (`stop_requested`, as SIGTERM). What it removed is made durable in the
    `archive` before the COMMIT (an archive that fails rolls the batch back). From just before its
    COMMIT, SIGINT and SIGTERM wait in `hold` until the caller has counted the batch: an interrupt
    in between would leave a committed batch out of the ledger.

    The batch runs in one snapshot (REPEATABLE READ) unless `one_snapshot` is false: a step may
    then read what it is about to change in a statement of its own (purge-temp reads the files of
    the range it deletes, which is cheaper than a RETURNING). A row another transaction changed
    meanwhile raises db.SnapshotConflict, and the caller does the batch again in READ COMMITTED,
    where the steps take no such shortcut."""
    from maintctl import db

    if stop_requested.is_set():
        raise Terminated
    # A crash may lose this batch's commit (the next run redoes it), never the ledger's: the
    # ledger commits synchronously, which flushes the WAL of every batch before it.
    # A guarded run renews its lease in the batch's own statements (two round trips fewer).
    lease = heartbeat.lease_parameters() if heartbeat is not None else None
    try:
        with (
            db.statement_timeouts(),
            db.snapshot_conflicts(),
            db.transaction(
                conn,
                settings,
                asynchronous_commit=True,
                one_snapshot=one_snapshot,
                renew_lease=lease,
            ),
        ):
            if heartbeat is not None and lease is None:
                heartbeat.beat(conn)
            # Without an archive the step's statement renews the lease at the batch's end; with
            # one, that comes after the archive has the batch's rows.
            renews = lease if lease is not None and archive is None else NO_RENEWAL
            step = db.fetch_one(conn, "rule_step", {**params, **renews, "rule": task.name}, Step)
            if step.renewed is False:
                raise LeaseLost
            if step.renewed is None:
                if archive is not None:
                    archive.record(conn, task, step)
                if heartbeat is not None:
                    heartbeat.beat(conn)
            hold.enter_context(db.interrupts_held())
    except KeyboardInterrupt as exc:
        exc.add_note(BATCH_ROLLED_BACK)
        raise
    return step


def _batch(
    conn: Connection,
    settings: Settings,
    task: Task,
    params: dict[str, Any],
    hold: ExitStack,
    heartbeat: Heartbeat | None,
    archive: RunArchive | None,
) -> Step:
    """One batch (_step) in one snapshot; when the application changed a row of its range
    meanwhile, the same batch again in READ COMMITTED."""
    from maintctl import db

    try:
        return _step(conn, settings, task, params, hold, heartbeat, archive)
    except db.SnapshotConflict:
        return _step(conn, settings, task, params, hold, heartbeat, archive, one_snapshot=False)


def run_task(
    conn: Connection,
    task: Task,
    settings: Settings,
    *,
    dry_run: bool,
    deadline: float | None = None,
    run_id: int | None = None,
    on_batch: ProgressCallback | None = None,
    heartbeat: Heartbeat | None = None,
    archive: RunArchive | None = None,
    force: bool = False,
) -> TaskResult:
    """Apply one rule until nothing is left, or count what it would touch with `dry_run`.

    The rule walks its rows in key order, one batch per short transaction (see
    docs/performance-design.md). Batches keep to TARGET_BATCH_SECONDS; one that runs into
    statement_timeout is retried at half the size; max runtime stops the walk between batches and
    counts what is left. A pre-step (PRE_STEPS) may first drop whole partitions. `on_batch` hears
    of each committed batch, with the rows eligible at the start. The run's `heartbeat` beats
    inside each transaction: a real run's batch renews the run lease at its start (which also
    keeps the lease row locked while the batch works) and at its end. With an `archive`, each
    batch's removed rows are made durable there before the batch commits, and the pre-step is
    skipped (a dropped partition's rows would not be archived).

    Before each batch the health gate (maintctl.health) may make the task wait, or stop it.
    MAINTCTL_MAX_ROWS stops it after that many rows; the anomaly guard (maintctl.limits) refuses
    it before it starts, unless `force`.

    A database error fails this task only (the result says why). An interrupt or a lost
    connection ends the run: TaskAborted carries the rows committed so far and the cause.
    """
    from maintctl import db, health, limits

    threshold = settings.threshold_of(task)
    tally = _Tally(task.name, dry_run, batch_size=min(settings.batch_ceiling, FIRST_BATCH_SIZE))

    def count_eligible() -> int:
        return _count_eligible(conn, settings, task, tally, heartbeat)

    def stop(gate: health.Gate, reason: str) -> TaskResult:
        tally.remaining = count_eligible()
        gate.finish()
        if tally.remaining == 0 and reason == MAX_ROWS_REACHED:  # the limit fell on the last row
            tally.remaining = None
            return _ended(conn, tally, "ok")
        return _ended(conn, tally, "stopped", reason)

    if deadline is not None and time.monotonic() >= deadline:
        return tally.result("not_run", "max runtime reached before this task started")
    try:
        with db.task_errors(conn):
            tally.cutoff, tally.cutoffs = rule_cutoffs(conn, settings, task)
            if dry_run:
                tally.rows = count_eligible()
                return tally.result("ok")
            if not force and (refusal := limits.anomaly(conn, settings, task.name, count_eligible)):
                return tally.result("failed", refusal)
            total = count_eligible() if on_batch is not None else None
            tally.gate = gate = health.Gate(conn, settings, heartbeat)
            max_rows = settings.max_rows
            # A partition drop removes whole partitions at once: with a row limit, rows go by
            # batches only; with an archive neither (a dropped partition's rows would not be
            # archived).
            if max_rows is None and archive is None:
                tally.rows = _pre_step(conn, settings, task, tally.cutoff, run_id)
            position: dict[str, Any] | None = None
            while True:
                if (throttled := gate.check()) is not None:
                    return stop(gate, throttled)
                batch_size = tally.size_within(max_rows)
                params = {
                    "cutoff": tally.cutoff,
                    "threshold": threshold,
                    "batch_size": batch_size,
                    "position": db.jsonb(position),
                    "run_id": run_id,
                    "cutoffs": db.jsonb(tally.cutoffs),
                    "archive": archive.parameter(task) if archive is not None else None,
                }
                batch_started = time.monotonic()
                with ExitStack() as hold:
                    try:
                        step = _batch(conn, settings, task, params, hold, heartbeat, archive)
                    except BatchTimedOut as exc:
                        tally.batch_size = _smaller_after_timeout(batch_size, exc)
                        continue
                    tally.add(step)
                    position = step.next_position
                if on_batch is not None:
                    on_batch(TaskProgress(task.name, tally.rows, tally.batches, total, batch_size))
                tally.resize(batch_size, settings.batch_ceiling, time.monotonic() - batch_started)
                if position is None:
                    gate.finish()
                    return _ended(conn, tally, "ok")
                if (reached := _limit_reached(tally.rows, max_rows, deadline)) is not None:
                    return stop(gate, reached)
    except TaskError as exc:
        return _ended(conn, tally, "failed", exc.message)
    except KeyboardInterrupt as exc:
        interrupted = tally.result("interrupted", "interrupted; the batch in flight rolled back")
        raise TaskAborted(interrupted, exc) from exc
    except (DatabaseUnavailable, LeaseLost) as exc:
        raise TaskAborted(tally.result("failed", exc.message), exc) from exc


@dataclass
class _Tally:
    """What a task has done so far, for its result whenever it ends."""

    task: str
    dry_run: bool
    batch_size: int
    started: float = field(default_factory=time.monotonic)
    rows: int = 0
    batches: int = 0
    cutoff: datetime | None = None
    cutoffs: dict[str, str] | None = None  # a rule with a threshold per status: each status's
    remaining: int | None = None
    gate: Gate | None = None  # counts the WAL and the waits of a real run
    # Rows its batches left: could not change (a foreign key, a trigger raising, a check), the
    # first of them, and left unchanged without an error (a BEFORE trigger that cancelled it).
    blocked: int = 0
    first_blocked: dict[str, Any] | None = None
    unchanged: int = 0

    def add(self, step: Step) -> None:
        """Count a committed batch."""
        self.rows += step.rows
        self.batches += 1
        self.blocked += len(step.blocked or [])
        if self.first_blocked is None and step.blocked:
            self.first_blocked = step.blocked[0]
        self.unchanged += step.unchanged

    def resize(self, size: int, ceiling: int, seconds: float) -> None:
        """After a batch of `size` rows took `seconds`: the first is a probe, the others adapt."""
        resized = size_after_probe if self.batches == 1 else next_batch_size
        self.batch_size = resized(size, ceiling, seconds)

    def size_within(self, max_rows: int | None) -> int:
        """The next batch's size, so that the task stays within --max-rows."""
        if max_rows is None:
            return self.batch_size
        return min(self.batch_size, max_rows - self.rows)

    def result(self, status: str, error: str | None = None) -> TaskResult:
        return TaskResult(
            self.task,
            status,
            self.rows,
            self.batches,
            int((time.monotonic() - self.started) * 1000),
            self.cutoff,
            error,
            self.remaining,
            None if self.dry_run else self.batch_size,
            **_cost(self.gate),
        )


MAX_ROWS_REACHED = "max rows reached (MAINTCTL_MAX_ROWS); the next run carries on"


def _ended(conn: Connection, tally: _Tally, status: str, reason: str | None = None) -> TaskResult:
    """The task's result. Rows its batches left (could not change, or left unchanged without an
    error) fail it, named after what ended it (maintenance.left_rows_sentence): a task never says
    ok while rows it found are still there unchanged, but for rows another session holds, which
    the next run takes."""
    from maintctl import db

    if not (tally.blocked or tally.unchanged):
        return tally.result(status, reason)
    params = {
        "blocked": tally.blocked,
        "first": db.jsonb(tally.first_blocked),
        "unchanged": tally.unchanged,
    }
    said: str = db.fetch_value(conn, "left_rows_sentence", params)
    if tally.remaining is None:  # the walk went to its end: what is left is what it left
        tally.remaining = tally.blocked + tally.unchanged
    return tally.result("failed", "; ".join(part for part in (reason, said) if part))


def _limit_reached(rows: int, max_rows: int | None, deadline: float | None) -> str | None:
    """Why the walk stops between batches with work left: --max-rows, or --max-runtime."""
    if max_rows is not None and rows >= max_rows:
        return MAX_ROWS_REACHED
    if deadline is not None and time.monotonic() >= deadline:
        return "max runtime reached; the next run carries on"
    return None


def _count_eligible(
    conn: Connection,
    settings: Settings,
    task: Task,
    tally: _Tally,
    heartbeat: Heartbeat | None,
) -> int:
    """The rows the rule selects now, in a transaction that also gives the run's heartbeat."""
    from maintctl import db

    with db.transaction(conn, settings):
        if heartbeat is not None:
            heartbeat.beat(conn)
        return count_rule(conn, task, tally.cutoff, cutoffs=tally.cutoffs)


def _cost(gate: Gate | None) -> dict[str, Any]:
    """What the health gate counted of the task's cost, as TaskResult's fields."""
    if gate is None:
        return {}
    return {
        "wal_bytes": gate.wal_bytes,
        "throttled_ms": gate.throttled_ms,
        "peak_replica_lag_bytes": gate.peak_lag_bytes,
        "peak_replica_lag_ms": gate.peak_lag_ms,
    }


# --- partitions ----------------------------------------------------------------------------


@dataclass(frozen=True)
class ExpiredPartition:
    partition_schema: str
    partition: str  # the partition's own (unqualified) name
    upper_bound: datetime
    detach_pending: bool  # a DETACH ... CONCURRENTLY that was interrupted: finalize it
    has_default: bool  # the parent has a DEFAULT partition: no CONCURRENTLY


def drop_expired_temp_partitions(
    conn: Connection, settings: Settings, cutoff: datetime, run_id: int | None
) -> int:
    """When temp_uploads is range-partitioned by created_at, drop the partitions whose whole range
    lies before the cutoff at once, and return how many rows they held (counted exactly, after the
    detach, so no row can arrive meanwhile). Their files go to the storage outbox in the
    transaction that drops them, as the batch loop's deletes do. The batch loop then deletes
    through the parent, which prunes to the one partition that straddles the cutoff. The DEFAULT
    partition is never dropped.

    The detach is CONCURRENTLY where PostgreSQL allows it (no DEFAULT partition), which cannot run
    in a transaction block; else a plain DETACH in a short transaction under lock_timeout. When a
    detach times out, the remaining partitions are left to the batch loop; a CONCURRENTLY detach
    left pending is finished (FINALIZE) by the next run.
    """
    from psycopg import sql

    from maintctl import db
    from maintctl.rules.generate import column_names, placeholders, table_name
    from maintctl.rules.install import catalog_policy

    rule = RULES_BY_NAME["temp"]
    # With the catalog's types: a naive created_at is compared in naive_time_zone, as the rule's
    # generated SQL compares it, whatever the session's TimeZone.
    policy = catalog_policy(conn, settings)
    table = table_name(rule, rule.tables[0], policy)
    columns = {key: column_names(rule, key, policy) for key in rule.columns}
    referred = {"schema": settings.app_schema, "table": table}
    if db.fetch_one(conn, "referring_foreign_keys", referred, ReferringKeys).restricting:
        # A partition with a row another table refers to cannot go whole: the batch loop deletes
        # the rest and names that row.
        return 0
    params = {
        "schema": settings.app_schema,
        "table": table,
        "created_at": columns["created_at"][0],
        "zone": policy.naive_time_zone,
        "cutoff": cutoff,
    }
    expired = db.fetch_all(conn, "expired_temp_uploads_partitions", params, ExpiredPartition)
    dropped = 0
    for found in expired:
        names = {
            "parent": db.identifier(settings.app_schema, table),
            "partition": db.identifier(found.partition_schema, found.partition),
            **{
                key: sql.Identifier(found[0]) if found else sql.SQL("null::bigint")
                for key, found in columns.items()
            },
            "created_at": placeholders(rule, policy)["created_at"],
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
            if columns["storage_path"]:  # storage_path = false: no files, no outbox
                db.execute_composed(
                    conn, "outbox_detached_partition", names, {"run_id": run_id, "chunk": 5000}
                )
            db.execute_composed(conn, "drop_partition", names)
        dropped += held.rows
    return dropped


@dataclass(frozen=True)
class ReferringKeys:
    """The foreign keys that refer to a table (referring_foreign_keys), each described."""

    restricting: list[str]  # keep a referred row from being deleted
    changing: list[str]  # change the referring rows when it is (CASCADE, SET NULL, SET DEFAULT)


@dataclass(frozen=True)
class Held:
    rows: int
    fresh: int


# Steps a task takes before its batch loop, by task name.
PRE_STEPS: dict[str, Callable[[Connection, Settings, datetime, int | None], int]] = {
    "temp": drop_expired_temp_partitions,
}


def _pre_step(
    conn: Connection, settings: Settings, task: Task, cutoff: datetime, run_id: int | None
) -> int:
    """The rows the task's pre-step (if it has one) removed before the batch loop."""
    pre_step = PRE_STEPS.get(task.name)
    return pre_step(conn, settings, cutoff, run_id) if pre_step is not None else 0
