"""Installing the generated rules (maintctl.rules.generate) at `maintctl migrate`, and checking,
before any other command works, that what is installed is what the policy generates."""

from __future__ import annotations

from dataclasses import dataclass

import psycopg
from psycopg import sql

from maintctl import __version__, db
from maintctl.errors import Busy, ConfigError, NotMigrated
from maintctl.rules.generate import (
    NAIVE,
    IndexBuild,
    Installation,
    Policy,
    all_needs,
    cleared_columns,
    column_names,
    fingerprint,
    installation,
    policy_of,
    table_name,
    thresholds_of,
    typed_columns,
    value_of,
)
from maintctl.settings import Settings
from maintctl.sqlfiles import hardening


@dataclass(frozen=True)
class IndexState:
    valid: bool
    comment: str | None


@dataclass(frozen=True)
class Column:
    name: str


@dataclass(frozen=True)
class TypedColumn:
    name: str
    type: str


def catalog_policy(conn: db.Connection, settings: Settings) -> Policy:
    """The policy of the settings with the catalog's type of each column the rules read (a table
    that is missing adds none): what the generated SQL and its fingerprint depend on."""
    policy = policy_of(settings)
    types: dict[tuple[str, str], str] = {}
    for table in dict.fromkeys(need.table for need in all_needs(policy)):
        params = {"schema": policy.schema, "table": table}
        for column in db.fetch_all(conn, "table_column_types", params, TypedColumn):
            types[(table, column.name)] = column.type
    wanted = typed_columns(policy)
    return policy.with_types(
        tuple((t, c, types[t, c]) for t, c in sorted(wanted) if (t, c) in types)
    )


def missing_columns(conn: db.Connection, policy: Policy, *, with_added: bool) -> list[str]:
    """Each table or column the rules need that the catalog lacks, as `table.column (rule)`.
    `with_added`: count maintctl's own columns too (doctor, after migrate added them)."""
    present: dict[str, set[str] | None] = {}
    missing = []
    for need in all_needs(policy):
        if need.table not in present:
            params = {"schema": policy.schema, "table": need.table}
            found = db.fetch_all(conn, "table_columns", params, Column)
            present[need.table] = {column.name for column in found} if found else None
        columns = present[need.table]
        if columns is None:
            missing.append(f"table {need.table} (needed by {need.rule})")
            continue
        wanted = need.columns + (need.added if with_added else ())
        missing += [f"{need.table}.{c} (needed by {need.rule})" for c in wanted if c not in columns]
    return list(dict.fromkeys(missing))


@dataclass(frozen=True)
class EnumLabels:
    type_name: str
    labels: list[str]


def missing_statuses(conn: db.Connection, policy: Policy) -> list[str]:
    """Each status a rule names that its column's enum type lacks (a text column takes any)."""
    found = []
    for rule in policy.rules:
        for key, value in rule.values.items():
            table = table_name(rule, rule.table(rule.columns[value.column].table), policy)
            for column in column_names(rule, value.column, policy):
                params = {"schema": policy.schema, "table": table, "column": column}
                enum = db.fetch_optional(conn, "column_enum_labels", params, EnumLabels)
                if enum is None:
                    continue
                found += [
                    f"{table}.{column} (an enum {enum.type_name}: {', '.join(enum.labels)}) has "
                    f"no status {status!r} ({rule.name}'s {key})"
                    for status in value_of(rule, key, policy)
                    if status not in enum.labels
                ]
    return list(dict.fromkeys(found))


def check_statuses(conn: db.Connection, policy: Policy) -> None:
    """Refuse (exit 78) a status the rules name that the column's enum lacks: the partial indexes
    and the steps would fail on it half way through migrate."""
    missing = missing_statuses(conn, policy)
    if missing:
        raise ConfigError(
            f"in schema {policy.schema!r}, "
            + "; ".join(missing)
            + "; name the application's own in maintctl.toml (see maintctl config)"
        )


def naive_columns(policy: Policy) -> list[str]:
    """The `timestamp without time zone` columns the rules read, as `table.column`: read and
    written in the policy's naive_time_zone."""
    return [f"{table}.{column}" for table, column, kind in policy.types if kind == NAIVE]


def check_time_zone(conn: db.Connection, policy: Policy) -> None:
    """Refuse (exit 78) a naive_time_zone the server does not know, when a column needs it."""
    if naive_columns(policy) and not db.fetch_value(
        conn, "time_zone_known", {"zone": policy.naive_time_zone}
    ):
        raise ConfigError(
            f"naive_time_zone {policy.naive_time_zone!r} is not a time zone this server knows "
            f"(pg_timezone_names), and {', '.join(naive_columns(policy))} are read in it"
        )


@dataclass(frozen=True)
class Present:
    present: bool
    can_select: bool
    can_update: bool
    can_delete: bool


def missing_tables(conn: db.Connection, policy: Policy) -> dict[str, str]:
    """The rules whose table is missing, each with the first it lacks: the others still run."""
    found: dict[str, str] = {}
    for need in all_needs(policy):
        params = {"schema": policy.schema, "table": need.table}
        if (
            need.rule not in found
            and not db.fetch_one(conn, "table_privileges", params, Present).present
        ):
            found[need.rule] = need.table
    return found


@dataclass(frozen=True)
class TableSafety:
    row_security: bool
    forced: bool
    role: str  # this session's
    applies: bool
    policies: list[str]
    open_commands: list[str]  # a permissive policy of the role lets every row through for these
    restricting: list[str]  # restrictive policies of the role that hide rows
    not_null: list[str]
    lacks_replica_identity: bool


def rls_commands(privileges: tuple[str, ...]) -> list[str]:
    """The commands whose policies a rule's DML passes: its privileges, and SELECT for the rows
    an UPDATE or DELETE reads (its WHERE, its row locks)."""
    return list(dict.fromkeys(("SELECT", *privileges)))


def row_security_problem(
    rule: str, table: str, needed: list[str], found: TableSafety
) -> str | None:
    """Why Row Level Security that applies to the role would hide rows from the rule, or None
    when policies of the role let every row through for each command it needs."""
    lacking = [command for command in needed if command not in found.open_commands]
    if not lacking and not found.restricting:
        return None
    policies = ", ".join(found.policies) or "none: it hides every row"
    why = []
    if lacking:
        why.append(f"no policy of this role lets every row through for {', '.join(lacking)}")
    if found.restricting:
        why.append(f"restrictive {', '.join(found.restricting)} hide rows")
    return (
        f"row level security{' (FORCE)' if found.forced else ''} on {table} applies to this "
        f"role (policies: {policies}): {rule} needs every row for {', '.join(needed)}, but "
        f"{' and '.join(why)}, so it would see and change only the rows those allow; run "
        f"maintctl grant {found.role} as the table's owner (it adds a policy letting the role "
        "see every row), run maintctl as the table's owner, or give the role BYPASSRLS"
    )


def row_security_note(table: str, found: TableSafety) -> str:
    """What doctor says of a table's Row Level Security, and whether it affects this role."""
    if not found.row_security:
        return f"{table}: off"
    enabled = "enabled (FORCE)" if found.forced else "enabled"
    if not found.applies:
        return f"{table}: {enabled}, not applied to this role (owner or BYPASSRLS)"
    return (
        f"{table}: {enabled}, applies to this role, whose policies let every row through for "
        f"{', '.join(found.open_commands)}"
    )


def safety_problems(conn: db.Connection, policy: Policy) -> tuple[dict[str, list[str]], list[str]]:
    """By rule, what would make its DML fail, do nothing or see only some rows: Row Level
    Security that applies to this role without a policy letting every row through for each
    command the rule needs (`maintctl grant` adds one), a column compact clears that is NOT
    NULL, a table a publication replicates without a replica identity. And a note on each
    table's Row Level Security: off, not applied to this role, or applied with such policies."""
    problems: dict[str, list[str]] = {}
    notes: list[str] = []
    for rule in policy.rules:
        changed = table_name(rule, rule.table(rule.changes), policy)
        found_here: list[str] = []
        for need in [n for n in all_needs(policy) if n.rule == rule.name]:
            params = {"schema": policy.schema, "table": need.table}
            found = db.fetch_optional(conn, "table_safety", params, TableSafety)
            if found is None:
                continue
            hidden = (
                row_security_problem(rule.name, need.table, rls_commands(need.privileges), found)
                if found.applies
                else None
            )
            if hidden is not None:
                found_here.append(hidden)
            else:
                notes.append(row_security_note(need.table, found))
            if need.table == changed:
                found_here += [
                    f"{rule.name} clears {need.table}.{column}, which is NOT NULL; set "
                    f"[rules.{rule.name}] clear to the columns that may be null"
                    for column in cleared_columns(rule, policy)
                    if column in found.not_null
                ]
                if found.lacks_replica_identity:
                    found_here.append(
                        f"{need.table} has no replica identity and a publication replicates "
                        f"its updates and deletes: {rule.name}'s would fail; give it a primary "
                        "key or ALTER TABLE ... REPLICA IDENTITY"
                    )
        if found_here:
            problems[rule.name] = found_here
    return problems, list(dict.fromkeys(notes))


def installed_fingerprint(conn: db.Connection) -> str | None:
    found: str | None = db.fetch_value(conn, "installed_rules_fingerprint")
    return found


def ensure_current(conn: db.Connection, settings: Settings) -> None:
    """Refuse (exit 78) when the installed steps were generated from another policy."""
    policy = catalog_policy(conn, settings)
    if len(policy.types) < len(typed_columns(policy)):
        # A table or key column the rules use is gone: its type is not known, so neither is the
        # fingerprint. What is missing is named by doctor, and by the run of that rule.
        return
    if installed_fingerprint(conn) != fingerprint(policy):
        raise NotMigrated(
            "the installed maintenance rules were generated from another policy or another "
            "maintctl (table or column names, schema); run: maintctl migrate"
        )


def check_rule_columns(conn: db.Connection, settings: Settings) -> None:
    """Refuse (exit 78) a policy that names a table or column the application schema lacks,
    before migrate changes anything; and a naive_time_zone the server does not know."""
    refuse_unfit(conn, catalog_policy(conn, settings))


def refuse_unfit(conn: db.Connection, policy: Policy) -> None:
    """Refuse (exit 78) a policy whose tables or columns the schema lacks, a status its enum
    lacks, or a naive_time_zone the server does not know: checked before anything changes."""
    missing = missing_columns(conn, policy, with_added=False)
    if missing:
        raise ConfigError(
            f"in schema {policy.schema!r}, missing: "
            + ", ".join(missing)
            + " (see maintctl config)"
        )
    check_statuses(conn, policy)
    check_time_zone(conn, policy)
    check_index_names(conn, policy)


@dataclass(frozen=True)
class NameHolder:
    kind: str
    on_table: bool


RELATION_KINDS = {
    "r": "a table",
    "p": "a partitioned table",
    "v": "a view",
    "m": "a materialized view",
    "S": "a sequence",
    "f": "a foreign table",
    "c": "a composite type",
    "t": "a TOAST table",
}


def check_index_names(conn: db.Connection, policy: Policy) -> None:
    """Refuse (exit 78) an index name of the rules that another relation of the schema holds (a
    table, a view, an index of another table): its build would fail once migrate had begun."""
    taken = []
    for build in installation(policy).indexes:
        params = {"schema": policy.schema, "name": build.name, "table": build.table.as_string()}
        holder = db.fetch_optional(conn, "relation_named", params, NameHolder)
        index = holder is not None and holder.kind in ("i", "I")  # "I": of a partitioned table
        if holder is not None and not (index and holder.on_table):
            what = "an index of another table" if index else RELATION_KINDS[holder.kind]
            taken.append(f"{build.name} is {what}")
        # A valid or INVALID index of that name on the table: built anew or kept (install).
    if taken:
        raise ConfigError(
            f"in schema {policy.schema!r}, the names of the rules' indexes are taken: "
            + ", ".join(taken)
            + "; rename or drop those, then run maintctl migrate"
        )


def check_conditions(conn: db.Connection, settings: Settings) -> None:
    """Each [[purge]] rule's `where`, checked before anything uses it (exit 78)."""
    from maintctl.rules.purge import check_where

    for rule in policy_of(settings).purge_rules:
        check_where(conn, settings, rule)


def install(conn: db.Connection, settings: Settings) -> bool:
    """Install what the policy generates, unless it is already installed; True when it was.

    Everything is checked first (a missing table or column, an index name another relation
    holds, a statement the schema will not take: exit 78, nothing changed). maintctl's own
    columns go in a transaction; the indexes are built one by one without blocking writes (one
    that replaces an index of another definition beside it, under a name of its own); then the
    functions and the fingerprint commit together. Should a build or that transaction fail,
    what this install made is undone (the indexes it built or left invalid, the columns it
    added) and the database is as it was: the old rules keep working. Only then do the new
    indexes take the old ones' places. The thresholds, not part of the fingerprint, are the
    pg_cron procedure's defaults: when they
    changed, the functions are installed anew too."""
    policy = catalog_policy(conn, settings)
    generated = installation(policy, thresholds_of(settings))
    current = installed_fingerprint(conn) == generated.fingerprint
    if current and _indexes_ready(conn, policy, generated) and _procedure_current(conn, generated):
        return False
    refuse_unfit(conn, policy)
    _try_statements(conn, settings, generated)
    added = _absent_added_columns(conn, policy)
    with db.transaction(conn, settings):
        for statement in generated.columns:
            conn.execute(statement)
    built: list[str] = []  # the indexes this install made, dropped again should it fail
    try:
        swaps = _build_indexes(conn, policy, generated, built)
        with db.transaction(conn, settings):
            for statement in generated.functions:
                conn.execute(statement)
            conn.execute(hardening())
            record = {
                "fingerprint": generated.fingerprint,
                "app_schema": policy.schema,
                "maintctl_version": __version__,
            }
            db.execute(conn, "record_installed_rules", record)
    except psycopg.Error as exc:
        error = db.translate(conn, exc)
        raise type(error)(_undo(conn, settings, policy, built, added, error.message)) from exc
    _take_places(conn, policy, generated, swaps)
    return True


def _try_statements(conn: db.Connection, settings: Settings, generated: Installation) -> None:
    """The columns and functions, run once in a transaction rolled back: what the application's
    schema will not take (a time column of text, which no cutoff compares with) fails here,
    before an index build of hours, and nothing changes."""
    try:
        with db.transaction(conn, settings):
            for statement in (*generated.columns, *generated.functions):
                conn.execute(statement)
            raise psycopg.Rollback()
    except psycopg.Error as exc:
        error = db.translate(conn, exc)
        if isinstance(error, Busy):  # the application held a table: try again later
            raise error from exc
        raise type(error)(
            f"migrate did not install the rules: {error.message}; the rules and the "
            "application's tables were left as they were"
        ) from exc


def _absent_added_columns(conn: db.Connection, policy: Policy) -> list[tuple[str, str]]:
    """maintctl's own columns (compacted_at) that the tables lack: the ones this install adds."""
    absent = []
    for need in all_needs(policy):
        params = {"schema": policy.schema, "table": need.table}
        present = {column.name for column in db.fetch_all(conn, "table_columns", params, Column)}
        absent += [(need.table, column) for column in need.added if column not in present]
    return list(dict.fromkeys(absent))


def _undo(
    conn: db.Connection,
    settings: Settings,
    policy: Policy,
    built: list[str],
    added: list[tuple[str, str]],
    failure: str,
) -> str:
    """Drop the indexes and columns a failed install made; the message says what failed, what
    was undone and what could not be (the next migrate clears an index left behind)."""
    undone, left = [], []
    if not conn.closed:
        with db.best_effort():
            db.execute(conn, "allow_long_statements")
    for name in built:
        try:
            index = sql.Identifier(policy.schema, name)
            db.execute_composed(conn, "drop_index_concurrently", {"index": index})
            undone.append(f"dropped index {name}")
        except psycopg.Error as exc:
            left.append(f"index {name} ({db.first_line(exc)})")
    with db.best_effort():
        db.execute(conn, "reset_session_limits")
    for table, column in added:
        try:
            with db.transaction(conn, settings):
                names = {"table": sql.Identifier(policy.schema, table)}
                db.execute_composed(
                    conn, "drop_added_column", {**names, "column": sql.Identifier(column)}
                )
            undone.append(f"dropped column {table}.{column}")
        except psycopg.Error as exc:
            left.append(f"column {table}.{column} ({db.first_line(exc)})")
    message = f"migrate did not install the rules: {failure}"
    if left:
        return (
            f"{message}; it could not undo {', '.join(left)}: the old rules still run, and the "
            "next maintctl migrate clears what is left"
        )
    done = f" ({', '.join(undone)})" if undone else ""
    return (
        f"{message}; it undid what it had made{done}: the rules and the application's tables "
        "are as they were"
    )


def _procedure_current(conn: db.Connection, generated: Installation) -> bool:
    """Whether the pg_cron procedure's defaults are the policy's thresholds (its comment)."""
    comment: str | None = db.fetch_value(conn, "procedure_comment")
    return comment == generated.procedure_comment


def _index_state(conn: db.Connection, schema: str, name: str) -> IndexState | None:
    params = {"schema": schema, "name": name}
    return db.fetch_optional(conn, "index_state", params, IndexState)


def _ready(state: IndexState | None, digest: str) -> bool:
    return state is not None and state.valid and state.comment in (None, digest)


def _indexes_ready(conn: db.Connection, policy: Policy, generated: Installation) -> bool:
    return all(
        _ready(_index_state(conn, policy.schema, build.name), build.digest)
        for build in generated.indexes
    )


def _replacement_name(build: IndexBuild) -> str:
    """Where an index of a new definition is built beside the one it replaces."""
    return f"maintctl_new_{build.digest}"


def _build_indexes(
    conn: db.Connection, policy: Policy, generated: Installation, built: list[str]
) -> list[IndexBuild]:
    """Each index, unless a valid one of that name and definition is there; the name of each
    build goes into `built` before it starts. An index of that name without maintctl's comment
    (built by a maintctl before rules were data) is kept as it is. One of another definition
    stays until the new rules are installed: the new one is built beside it (returned, for
    _take_places)."""
    swaps = []
    db.execute(conn, "allow_long_statements")
    try:
        for build in generated.indexes:
            state = _index_state(conn, policy.schema, build.name)
            if _ready(state, build.digest):
                continue
            target = build.name
            if state is not None and state.valid:
                target = _replacement_name(build)
                swaps.append(build)
            # Leftovers of an interrupted migrate go first: an INVALID build, of no use to
            # anyone, or a replacement that never took its place.
            index = sql.Identifier(policy.schema, target)
            for leftover in dict.fromkeys((target, _replacement_name(build))):
                old = {"index": sql.Identifier(policy.schema, leftover)}
                db.execute_composed(conn, "drop_index_concurrently", old)
            built.append(target)
            names = {"index": sql.Identifier(target), "definition": build.definition}
            db.execute_composed(conn, "create_index_concurrently", names)
            db.execute_composed(
                conn, "comment_index", {"index": index, "comment": sql.Literal(build.digest)}
            )
    finally:
        with db.best_effort():
            db.execute(conn, "reset_session_limits")
    return swaps


def _take_places(
    conn: db.Connection, policy: Policy, generated: Installation, swaps: list[IndexBuild]
) -> None:
    """Once the new rules are installed: each index built beside an old one takes its name, and
    an index of maintctl's name built before rules were data gets its digest as its comment."""
    db.execute(conn, "allow_long_statements")
    try:
        for build in swaps:
            index = sql.Identifier(policy.schema, build.name)
            db.execute_composed(conn, "drop_index_concurrently", {"index": index})
            new = sql.Identifier(policy.schema, _replacement_name(build))
            db.execute_composed(
                conn, "rename_index", {"index": new, "name": sql.Identifier(build.name)}
            )
        for build in generated.indexes:
            state = _index_state(conn, policy.schema, build.name)
            if state is not None and state.comment is None:
                index = sql.Identifier(policy.schema, build.name)
                comment = {"index": index, "comment": sql.Literal(build.digest)}
                db.execute_composed(conn, "comment_index", comment)
    finally:
        db.execute(conn, "reset_session_limits")
