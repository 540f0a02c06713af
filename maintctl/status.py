"""`maintctl status` and `maintctl doctor`: what is waiting, and whether maintctl can work here."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from maintctl import db, health, ledger, migrations, pooler
from maintctl.durations import format_duration
from maintctl.errors import ConfigError, ExitCode, MaintctlError
from maintctl.grants import MAINTAIN_SERVER_VERSION
from maintctl.guard import RUN_LEASE_MISSING
from maintctl.rules import install
from maintctl.rules.generate import all_needs, application_tables, policy_of
from maintctl.rules.install import missing_columns
from maintctl.settings import Settings
from maintctl.sqlfiles import migrations as known_migrations
from maintctl.tasks import ReferringKeys, all_cutoffs, count_rules, run_task
from maintctl.vacuum import task_tables

# Each count of `status` stops here unless --exact: an exact count of a backlog of millions reads
# millions of index entries on every poll (sql/migrations/0007_status_counts.sql).
STATUS_COUNT_LIMIT = 100_000


# What each rule would touch now, by rule name, in the rules' order (a rule the policy turns off
# has none).
PendingCounts = dict[str, int]


@dataclass(frozen=True)
class OutboxBacklog:
    """The storage outbox: files of deleted temp uploads not yet handed to drain-outbox."""

    paths: int
    oldest: datetime | None


@dataclass(frozen=True)
class StatusReport:
    counts: PendingCounts
    pause: ledger.PauseState
    thresholds: dict[str, Any]
    last_run: ledger.RunRecord | None
    last_success: datetime | None
    server_now: datetime
    max_age: timedelta | None
    count_limit: int | None = None  # a count equal to it means "at least that many"
    outbox: OutboxBacklog = OutboxBacklog(0, None)
    max_age_text: str | None = None  # --max-age as the user wrote it
    # The rules whose table is missing (rule name: table), not counted: the others are.
    missing: dict[str, str] = field(default_factory=dict)

    @property
    def stale(self) -> bool:
        """Whether --max-age was given and no successful run is that recent (dead man's switch)."""
        if self.max_age is None:
            return False
        return self.last_success is None or self.server_now - self.last_success > self.max_age

    @property
    def exit_code(self) -> ExitCode:
        return ExitCode.TASK_FAILED if self.stale else ExitCode.OK

    def waiting(self) -> list[tuple[str, str, str, int]]:
        """(rule, what, threshold, rows) for each rule counted, in the order of a run: the four
        the policy keeps, then its [[purge]] rules."""
        from maintctl.rules import RULES_BY_NAME
        from maintctl.settings import camel

        purges: dict[str, str] = self.thresholds.get("purge") or {}
        shown = []
        for name, rows in self.counts.items():
            rule = RULES_BY_NAME.get(name)
            if rule is None:
                shown.append((name, f"Rows to purge ({name})", purges.get(name, "?"), rows))
            else:
                shown.append((name, rule.label, self.thresholds[camel(rule.threshold)], rows))
        return shown

    def at_limit(self, rows: int) -> bool:
        """Whether a count stopped at the limit (at least that many rows wait)."""
        return self.count_limit is not None and rows >= self.count_limit


def get_status(
    conn: db.Connection,
    settings: Settings,
    max_age: timedelta | None = None,
    *,
    exact: bool = False,
    max_age_text: str | None = None,
) -> StatusReport:
    """What is waiting; each count stops at STATUS_COUNT_LIMIT unless `exact`."""
    limit = None if exact else STATUS_COUNT_LIMIT
    with db.transaction(conn, settings):
        policy = policy_of(settings)
        missing = install.missing_tables(conn, policy)
        rules = tuple(rule for rule in policy.rules if rule.name not in missing)
        counts = count_rules(conn, rules, all_cutoffs(conn, settings, rules), limit)
        server = db.fetch_one(conn, "server_info", {}, migrations.ServerInfo)
        return StatusReport(
            counts=counts,
            pause=ledger.pause_state(conn),
            thresholds=settings.thresholds_text(),
            last_run=ledger.last_run(conn),
            last_success=ledger.last_success(conn),
            server_now=server.now,
            max_age=max_age,
            count_limit=limit,
            outbox=db.fetch_one(conn, "storage_outbox_backlog", {}, OutboxBacklog),
            max_age_text=max_age_text,
            missing=missing,
        )


@dataclass(frozen=True)
class Check:
    name: str
    ok: bool
    detail: str
    exit_code: ExitCode = ExitCode.OK
    warning: bool = False  # ok, but worth a look (a clock far from the database's)

    @property
    def verdict(self) -> str:
        return "fail" if not self.ok else ("warn" if self.warning else "ok")


@dataclass(frozen=True)
class TablePrivileges:
    present: bool
    can_select: bool
    can_update: bool
    can_delete: bool

    def lacking(self, needed: tuple[str, ...]) -> list[str]:
        held = {"SELECT": self.can_select, "UPDATE": self.can_update, "DELETE": self.can_delete}
        return [privilege for privilege in needed if not held[privilege]]


@dataclass(frozen=True)
class ServerClock:
    now: datetime


CLOCK_WARNING = timedelta(minutes=5)
OUTBOX_WARNING = timedelta(days=1)  # files older than this in the outbox: nothing drains it

DoctorStep = Callable[[db.Connection, Settings], list[Check]]


def check_writable(conn: db.Connection, settings: Settings) -> list[Check]:
    """A hot standby or a read-only session: every command that writes would be refused."""
    migrations.ensure_writable(conn)
    return [Check("writable", True, "a primary, read-write session")]


def check_migrations(conn: db.Connection, settings: Settings) -> list[Check]:
    migrations.ensure_migrated(conn, settings)
    return [Check("migrations", True, f"all {len(known_migrations())} applied")]


def check_tables(conn: db.Connection, settings: Settings) -> list[Check]:
    tables = application_tables(policy_of(settings))
    absent = [table for table in tables if not _privileges(conn, settings, table).present]
    if absent:
        missing = ", ".join(absent)
        raise ConfigError(f"missing in schema {settings.app_schema!r}: {missing}")
    return [Check("tables", True, f"all {len(tables)} present: {', '.join(tables)}")]


def check_columns(conn: db.Connection, settings: Settings) -> list[Check]:
    """Every column the rules' generated SQL reads or writes (maintctl.rules.generate.needs): a
    rule whose column is gone fails only when it runs, so doctor looks in the catalog first."""
    missing = missing_columns(conn, policy_of(settings), with_added=True)
    if missing:
        raise ConfigError("missing column " + ", ".join(missing))
    install.check_statuses(conn, policy_of(settings))
    return [Check("columns", True, "every column the rules use is present")]


def check_timestamps(conn: db.Connection, settings: Settings) -> list[Check]:
    """Which time columns are naive (`timestamp without time zone`) and in which zone the rules
    read them, and maintctl writes them, whatever the session's TimeZone."""
    policy = install.catalog_policy(conn, settings)
    naive = install.naive_columns(policy)
    if not naive:
        return [Check("timestamps", True, "every time column the rules read has a time zone")]
    install.check_time_zone(conn, policy)
    detail = (
        f"{', '.join(naive)}: timestamp without time zone, read and written in "
        f"{policy.naive_time_zone} (naive_time_zone), whatever the session's TimeZone"
    )
    return [Check("timestamps", True, detail)]


def check_safety(conn: db.Connection, settings: Settings) -> list[Check]:
    """What would make a rule's DML fail, do nothing or see only some rows, named before a run
    (maintctl.rules.install.safety_problems; a run fails those rules' tasks without touching
    them). Then a line on each table's Row Level Security: off, not applied to the role, or
    applied with policies that let the role see every row."""
    problems, notes = install.safety_problems(conn, policy_of(settings))
    found = [problem for found in problems.values() for problem in found]
    if found:
        raise ConfigError("; ".join(dict.fromkeys(found)))
    if not notes:
        return []
    return [Check("row security", True, "; ".join(notes))]


def check_foreign_keys(conn: db.Connection, settings: Settings) -> list[Check]:
    """The foreign keys that refer to a table a rule deletes from. One that keeps a row while it
    refers to it is no fault of the schema, but that row is left as it is and named, and its task
    fails (docs/safety.md, "Rows that cannot change"); one that cascades or sets null makes a run
    change rows of another table too, which no archive keeps. Warnings, so that neither is a
    surprise: doctor's healthy is a promise of what a run changes."""
    policy = policy_of(settings)
    found = []
    for need in all_needs(policy):
        if "DELETE" not in need.privileges:
            continue
        params = {"schema": policy.schema, "table": need.table}
        keys = db.fetch_one(conn, "referring_foreign_keys", params, ReferringKeys)
        if keys.restricting:
            found.append(
                f"a row of {need.table} that {', '.join(keys.restricting)} refers to is not "
                f"deleted: {need.rule} leaves it, names it and fails (exit 1)"
            )
        if keys.changing:
            found.append(
                f"deleting a row of {need.table} also changes the rows of "
                f"{', '.join(keys.changing)} that refer to it: {need.rule} changes them too, "
                "and an archive keeps none of them"
            )
    if not found:
        return []
    return [Check("foreign keys", True, "; ".join(dict.fromkeys(found)), warning=True)]


def check_conditions(conn: db.Connection, settings: Settings) -> list[Check]:
    """Each [[purge]] rule's `where`: a boolean condition on its table alone, immutable."""
    rules = policy_of(settings).purge_rules
    install.check_conditions(conn, settings)
    if not any(rule.where for rule in rules):
        return []
    named = ", ".join(rule.name for rule in rules if rule.where)
    return [Check("conditions", True, f"the where of {named}: a condition on its table alone")]


def check_privileges(conn: db.Connection, settings: Settings) -> list[Check]:
    """One line per task: the privileges its rule needs on each table it touches."""
    checks = []
    for rule in policy_of(settings).rules:
        held, lacking = [], []
        for need in [n for n in all_needs(policy_of(settings)) if n.rule == rule.name]:
            found = _privileges(conn, settings, need.table)
            lacking += [
                f"{privilege} on {need.table}" for privilege in found.lacking(need.privileges)
            ]
            held.append(f"{', '.join(need.privileges)} on {need.table}")
        name = f"privileges {rule.name}"
        if lacking:
            detail = f"{rule.name} needs " + ", ".join(lacking)
            checks.append(Check(name, False, detail, ExitCode.NO_PERMISSION))
        else:
            checks.append(Check(name, True, "; ".join(held)))
    return checks


@dataclass(frozen=True)
class RunLeaseRow:
    present: bool
    owner: bool
    can_delete: bool


def check_run_lease(conn: db.Connection, settings: Settings) -> list[Check]:
    """The lease's single row: without it no run can take the lease (triggers put it back when
    it is deleted), and a granted role that may delete it can stop every run."""
    row = db.fetch_one(conn, "run_lease_row", {}, RunLeaseRow)
    if row.can_delete and not row.owner:
        raise ConfigError(
            "this role may delete maintenance.run_lease's row, which would stop every run: as "
            "the owner, run maintctl grant ROLE again"
        )
    if not row.present:
        raise ConfigError(RUN_LEASE_MISSING)
    return [Check("run lease", True, "its row is in place")]


@dataclass(frozen=True)
class VacuumPrivilege:
    table_name: str
    can_vacuum: bool


def check_vacuum(conn: db.Connection, settings: Settings) -> list[Check]:
    """Whether `run --vacuum` can VACUUM the tables as this role. A warning at most: --vacuum is
    optional, and autovacuum gets there too."""
    tables = list(dict.fromkeys(task_tables(settings).values()))
    params = {"schema": settings.app_schema, "tables": tables}
    found = db.fetch_all(conn, "vacuum_privileges", params, VacuumPrivilege)
    refused = [row.table_name for row in found if not row.can_vacuum]
    if not refused:
        return [Check("vacuum", True, f"run --vacuum can VACUUM {', '.join(tables)}")]
    names = ", ".join(refused)
    if int(db.fetch_value(conn, "server_version_num")) >= MAINTAIN_SERVER_VERSION:
        why = "grant it MAINTAIN on them: maintctl grant ROLE, as the owner"
    else:
        why = (
            "before PostgreSQL 17 only their owner can: run --vacuum as the owner, or leave it "
            "to autovacuum"
        )
    detail = f"run --vacuum cannot VACUUM {names} as this role ({why})"
    return [Check("vacuum", True, detail, warning=True)]


def check_health_gate(conn: db.Connection, settings: Settings) -> list[Check]:
    """What the health gate sees now (maintctl.health): fails when standbys are connected whose
    replay lag this role may not read; warns when a run now would wait."""
    found = health.read_health(conn)
    if found.blind and settings.max_replica_lag is not None:
        return [Check("health gate", False, health.BLIND_SENTENCE, ExitCode.NO_PERMISSION)]
    waits = health.over_limit(found, settings) is not None
    return [Check("health gate", True, health.describe(found, settings), warning=waits)]


def check_clock(conn: db.Connection, settings: Settings) -> list[Check]:
    """This host's clock against the database's. The rules only use the database's clock, so a
    difference is a warning: it skews this host's logs, metrics and healthcheck pings."""
    before = time.time()
    server = db.fetch_one(conn, "server_clock", {}, ServerClock).now.timestamp()
    after = time.time()
    offset = (before + after) / 2 - server
    size = format_duration(timedelta(seconds=round(abs(offset)))) if abs(offset) >= 1 else None
    if abs(offset) <= CLOCK_WARNING.total_seconds():
        return [Check("clock", True, f"within {size or '1s'} of the database's")]
    side = "ahead of" if offset > 0 else "behind"
    detail = (
        f"this host's clock is {size} {side} the database's (the rules use the database's; "
        "logs, metrics and pings use this host's)"
    )
    return [Check("clock", True, detail, warning=True)]


def check_outbox(conn: db.Connection, settings: Settings) -> list[Check]:
    """The storage outbox's backlog: files whose rows are deleted, waiting for drain-outbox. A
    day-old backlog is a warning: nothing is handing the files to the storage cleaner."""
    backlog = db.fetch_one(conn, "storage_outbox_backlog", {}, OutboxBacklog)
    if backlog.paths == 0 or backlog.oldest is None:
        return [Check("storage outbox", True, "empty")]
    now = db.fetch_one(conn, "server_clock", {}, ServerClock).now
    age = now - backlog.oldest
    waited = format_duration(timedelta(seconds=max(1, round(age.total_seconds()))))
    detail = f"{backlog.paths:,} file(s) waiting for maintctl drain-outbox, the oldest for {waited}"
    return [Check("storage outbox", True, detail, warning=age > OUTBOX_WARNING)]


def check_pause(conn: db.Connection, settings: Settings) -> list[Check]:
    state = ledger.pause_state(conn)
    return [Check("pause", True, ledger.pause_sentence(state) if state.paused else "not paused")]


def check_dry_run(conn: db.Connection, settings: Settings) -> list[Check]:
    results = [run_task(conn, rule, settings, dry_run=True) for rule in policy_of(settings).rules]
    failures = [f"{r.task}: {r.error}" for r in results if r.status == "failed"]
    if failures:
        raise ConfigError("; ".join(failures))
    counts = ", ".join(f"{r.task} {r.rows}" for r in results)
    return [Check("dry run", True, f"would touch: {counts}")]


# The steps after the connection, in order; doctor stops after the first that fails. A step
# returns its lines, or raises a MaintctlError that becomes its failing line.
def pooler_check(conn: db.Connection, settings: Settings) -> list[Check]:
    """Doctor's verdict on what sits between maintctl and the server (see maintctl.pooler)."""
    probe = pooler.probe(conn, settings)
    if probe.transaction_pooler:
        detail = (
            f"a pooler in transaction mode sits between maintctl and the server (dialled "
            f"{probe.dialled}, the server listens on port {probe.server_port}): runs are safe "
            "through it (the run lease keeps no session state), but run `maintctl migrate` over "
            f"a direct connection to the server (port {probe.server_port}): it holds a session "
            "lock and session settings while it builds indexes"
        )
        return [Check("pooler", True, detail, warning=True)]
    if probe.dialled_port != probe.server_port:
        detail = (
            f"a pooler or proxy in session mode (dialled {probe.dialled}, the server listens on "
            f"port {probe.server_port}): every command works through it"
        )
        return [Check("pooler", True, detail)]
    return [Check("pooler", True, f"none: maintctl talks to the server directly ({probe.dialled})")]


DOCTOR_STEPS: list[tuple[str, DoctorStep]] = [
    ("pooler", pooler_check),
    ("writable", check_writable),
    ("conditions", check_conditions),
    ("migrations", check_migrations),
    ("tables", check_tables),
    ("columns", check_columns),
    ("timestamps", check_timestamps),
    ("safety", check_safety),
    ("foreign keys", check_foreign_keys),
    ("privileges", check_privileges),
    ("run lease", check_run_lease),
    ("health gate", check_health_gate),
    ("vacuum", check_vacuum),
    ("clock", check_clock),
    ("pause", check_pause),
    ("storage outbox", check_outbox),
    ("dry run", check_dry_run),
]


def _privileges(conn: db.Connection, settings: Settings, table: str) -> TablePrivileges:
    params = {"schema": settings.app_schema, "table": table}
    return db.fetch_one(conn, "table_privileges", params, TablePrivileges)


def run_doctor(settings: Settings) -> list[Check]:
    """The CI smoke check: each step a verdict; stops at the first failing step."""
    checks: list[Check] = []
    step = "connection"
    started = time.monotonic()
    try:
        with db.connect(settings) as conn, db.database_errors(conn):
            server = db.fetch_one(conn, "server_info", {}, migrations.ServerInfo)
            elapsed = int((time.monotonic() - started) * 1000)
            target = db.describe_connection(conn)
            detail = f"{target}, PostgreSQL {server.server_version}, {elapsed} ms"
            checks.append(Check(step, True, detail))
            for name, check in DOCTOR_STEPS:
                step = name  # the failing line's name, should the step raise
                found = check(conn, settings)
                checks += found
                if not all(line.ok for line in found):
                    break
    except MaintctlError as exc:
        checks.append(Check(step, False, exc.message, exc.exit_code))
    return checks
