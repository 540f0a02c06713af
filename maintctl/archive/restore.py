"""`maintctl restore --run N`: put back what run N removed, from its archive.

Deleted rows go back with their own keys (identity columns included: OVERRIDING SYSTEM VALUE);
compacted columns get their archived values back. A row whose key exists again is left alone and
counted, so a second restore changes nothing. The archived columns must still match the table's
(same names and types), else nothing is restored. The whole restore is one transaction: it
happens entirely or not at all, and `--dry-run` is the same transaction rolled back, so its
counts are exact.

Tables and keys are the rules' (maintctl/rules/) under the policy's names: a row is matched by
the key of the rule that changes its table (a table no rule of the policy changes, by its primary
key).

Temp uploads: a restored upload's file is taken out of the storage outbox when it is still there
(not yet handed to the storage cleaner: the file still exists). One whose path was already drained
is restored all the same and counted as `filesHandedOver`: the storage cleaner may have deleted its
file, and only the storage can say.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field

from psycopg import errors as pg_errors
from psycopg import sql

from maintctl import db
from maintctl.archive.format import ArchivedRun, ArchivedTable, ArchiveError, Column, Destination
from maintctl.errors import ConfigError
from maintctl.settings import Settings


class RollBack(Exception):
    """Ends a dry run's transaction without committing it."""


@dataclass
class RestoredTable:
    table: str
    action: str
    archived: int = 0  # rows in the archive
    restored: int = 0  # put back now
    present: int = 0  # left alone: the key exists again (delete), or holds the values (compact)
    missing: int = 0  # compact: the row is gone since, nothing to put the values on


@dataclass
class RestoreResult:
    run_id: int
    dry_run: bool
    complete: bool  # the run's manifest was there; else the run was interrupted
    tables: list[RestoredTable] = field(default_factory=list)
    files_kept: int = 0  # temp uploads restored whose files were still in the outbox
    files_handed_over: int = 0  # ... whose files the storage cleaner may already have deleted

    @property
    def restored(self) -> int:
        return sum(table.restored for table in self.tables)


@dataclass(frozen=True)
class _Deleted:
    archived: int
    restored: int
    first_keys: list[str]  # the restored rows' first key column, as text


@dataclass(frozen=True)
class _Compacted:
    archived: int
    restored: int
    missing: int


def restore_run(
    conn: db.Connection,
    settings: Settings,
    destination: Destination,
    run_id: int,
    *,
    dry_run: bool,
) -> RestoreResult:
    """Restore run `run_id` from `destination` into the database (see the module's doc)."""
    archived = destination.read_run(run_id)
    result = RestoreResult(run_id, dry_run, archived.complete)
    _check_columns(conn, settings, archived)
    rules = _RuleTables.of(settings)
    try:
        with db.transaction(conn, settings):
            for table in archived.tables:
                result.tables.append(_restore_table(conn, settings, rules, table, result))
            if dry_run:
                raise RollBack
    except RollBack:
        pass
    except pg_errors.IntegrityError as exc:  # a foreign key's row gone since, a new constraint
        raise ArchiveError(
            f"cannot restore run {run_id}: {db.first_line(exc)}; nothing was restored"
        ) from exc
    return result


def _check_columns(conn: db.Connection, settings: Settings, archived: ArchivedRun) -> None:
    """Refuse, before any change, a table whose columns are no longer those archived."""
    for table in archived.tables:
        params = {"schema": settings.app_schema, "table": table.table}
        now = {c.name: c for c in db.fetch_all(conn, "archive_table_columns", params, Column)}
        if not now:
            raise ConfigError(f"cannot restore run {archived.run_id}: table {table.table} is gone")
        then = {column.name: column for column in table.columns}
        differences = [
            f"{name} was {column.type}, is {now[name].type}"
            if name in now
            else f"{name} ({column.type}) is gone"
            for name, column in then.items()
            if name not in now or now[name].type != column.type
        ]
        if table.action == "delete":
            differences += [f"{name} ({now[name].type}) is new" for name in now if name not in then]
        if differences:
            raise ConfigError(
                f"cannot restore run {archived.run_id}: the columns of {table.table} no longer "
                f"match its archive ({'; '.join(differences)}); nothing was restored"
            )


@dataclass(frozen=True)
class _RuleTables:
    """What the rules of the policy say of the tables they change: each one's key columns, and
    the table whose deleted rows' files the storage outbox records (None: no rule has files)."""

    keys: dict[str, tuple[str, ...]]
    outbox: str | None

    @classmethod
    def of(cls, settings: Settings) -> _RuleTables:
        from maintctl.rules.generate import column_names, policy_of, table_name

        policy = policy_of(settings)
        keys: dict[str, tuple[str, ...]] = {}
        outbox = None
        for rule in policy.rules:
            changed = table_name(rule, rule.table(rule.changes), policy)
            keys.setdefault(changed, column_names(rule, "key", policy))
            if rule.emits_paths and column_names(rule, "storage_path", policy):
                outbox = changed
        return cls(keys, outbox)


def _restore_table(
    conn: db.Connection,
    settings: Settings,
    rules: _RuleTables,
    table: ArchivedTable,
    result: RestoreResult,
) -> RestoredTable:
    done = RestoredTable(table.table, table.action)
    target = sql.Identifier(settings.app_schema, table.table)
    carried = {column.name for column in table.columns}
    by_rule = [name for name in rules.keys.get(table.table, ()) if name in carried]
    key = by_rule or [column.name for column in table.columns if column.key]
    if not key:
        raise ArchiveError(f"the archive of {table.table} names no primary key to restore by")
    for batch in _batches(table.batches, settings.batch_size):
        rows = {"rows": "[" + ",".join(batch) + "]"}
        if table.action == "delete":
            insertable = [c.name for c in table.columns if not c.generated]
            names = {
                "table": target,
                "columns": sql.SQL(", ").join(map(sql.Identifier, insertable)),
                "key": sql.SQL(", ").join(map(sql.Identifier, key)),
                "first_key": sql.Identifier(key[0]),
            }
            deleted = db.fetch_composed(conn, "restore_deleted_rows", names, rows, _Deleted)
            done.archived += deleted.archived
            done.restored += deleted.restored
            done.present += deleted.archived - deleted.restored
            if table.table == rules.outbox and deleted.first_keys:
                ids = deleted.first_keys
                kept = int(db.fetch_value(conn, "outbox_withdraw_uploads", {"ids": ids}))
                result.files_kept += kept
                result.files_handed_over += len(ids) - kept
        else:
            values = [c.name for c in table.columns if c.name not in key]
            names = {
                "table": target,
                "targets": sql.SQL(", ").join(map(sql.Identifier, values)),
                "columns": _qualified("t", values),
                "archived_columns": _qualified("a", values),
                "key": _qualified("t", key),
                "archived_key": _qualified("a", key),
            }
            compacted = db.fetch_composed(conn, "restore_compacted_values", names, rows, _Compacted)
            done.archived += compacted.archived
            done.restored += compacted.restored
            done.missing += compacted.missing
            done.present += compacted.archived - compacted.restored - compacted.missing
    return done


def _qualified(alias: str, columns: list[str]) -> sql.Composable:
    return sql.SQL(", ").join(sql.Identifier(alias, name) for name in columns)


def _batches(batches: Iterator[list[str]], size: int) -> Iterator[list[str]]:
    """The archived rows again in chunks of at most `size` (one statement each)."""
    for batch in batches:
        for start in range(0, len(batch), size):
            yield batch[start : start + size]
