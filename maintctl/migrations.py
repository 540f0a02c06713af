"""`maintctl migrate`: installs and upgrades the maintenance schema, once, whoever runs it."""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import datetime

from psycopg import sql

from maintctl import __version__, db, pooler
from maintctl.errors import ConfigError, NotMigrated, PermissionDenied
from maintctl.rules.generate import application_tables, fingerprint, policy_of
from maintctl.rules.install import (
    catalog_policy,
    check_conditions,
    check_rule_columns,
    ensure_current,
    installed_fingerprint,
)
from maintctl.rules.install import install as install_rules
from maintctl.settings import Settings
from maintctl.sqlfiles import Migration, hardening, read_sql
from maintctl.sqlfiles import migrations as known_migrations

MIN_SERVER_VERSION = 150000  # security_invoker views
LOCK_POLL_SECONDS = 0.2


@dataclass(frozen=True)
class AppliedMigration:
    version: int
    name: str
    app_schema: str


@dataclass(frozen=True)
class ServerInfo:
    server_version: str
    server_version_num: int
    now: datetime


@dataclass(frozen=True)
class Preflight:
    role: str
    database: str
    can_create_schema: bool
    can_create_in_app_schema: bool
    maintenance_owner: str | None
    owns_maintenance: bool


@dataclass(frozen=True)
class TableOwner:
    table_name: str
    owner: str | None  # None: no such table
    owned: bool


@dataclass(frozen=True)
class MigrateResult:
    applied: list[str]
    already_applied: int
    app_schema: str
    rules_installed: bool = False  # the rules' SQL was generated and installed anew


def _label(migration: Migration) -> str:
    return f"{migration.version:04d}_{migration.name}"


def applied_migrations(conn: db.Connection) -> list[AppliedMigration]:
    if not db.fetch_value(conn, "migrations_table_exists"):
        return []
    return db.fetch_all(conn, "applied_migrations", {}, AppliedMigration)


def check_app_schema(conn: db.Connection, settings: Settings) -> None:
    if not db.fetch_value(conn, "schema_exists", {"schema": settings.app_schema}):
        database = db.fetch_one(
            conn, "migrate_preflight", {"schema": settings.app_schema}, Preflight
        ).database
        raise ConfigError(
            f"application schema {settings.app_schema!r} not found in database {database!r} "
            "(set MAINTCTL_SCHEMA or --schema, or check the database in the URL)"
        )


def check_before_migrating(conn: db.Connection, settings: Settings) -> None:
    """Refuse, before anything is created, a migrate that would fail halfway: the wrong database
    or schema, a newer maintctl's schema, a table or column the enabled rules name that is not
    there, a [[purge]] rule's bad `where`, a role that does not own the rules' tables (their
    generated SQL adds columns and indexes to them) or cannot create or does not own the
    maintenance schema."""
    check_app_schema(conn, settings)
    applied = applied_migrations(conn)
    newest_known = known_migrations()[-1].version
    if applied and applied[-1].version > newest_known:
        raise _newer_maintctl(applied[-1].version, newest_known)
    policy = policy_of(settings)
    wanted = application_tables(policy)
    where = db.fetch_one(conn, "migrate_preflight", {"schema": settings.app_schema}, Preflight)
    params = {"schema": settings.app_schema, "tables": list(wanted)}
    tables = db.fetch_all(conn, "application_table_owners", params, TableOwner)
    missing = [table.table_name for table in tables if table.owner is None]
    if missing:
        found = "none" if len(missing) == len(tables) else "not " + ", ".join(missing)
        raise ConfigError(
            f"application tables not found: searched schema {settings.app_schema!r} of database "
            f"{where.database!r} for {', '.join(wanted)} and found {found} "
            "(set MAINTCTL_SCHEMA or --schema, or check the database in the URL)"
        )
    check_rule_columns(conn, settings)
    check_conditions(conn, settings)
    pending = {m.version for m in applied} < {m.version for m in known_migrations()}
    # The installed rules' fingerprint covers the catalog's column types (a key's, a naive
    # timestamp's), so it is compared with the policy as the catalog types it.
    if not pending and installed_fingerprint(conn) == fingerprint(catalog_policy(conn, settings)):
        return  # nothing to create
    foreign = [table for table in tables if not table.owned]
    if foreign:
        owners = sorted({table.owner or "" for table in foreign})
        names = ", ".join(f"{settings.app_schema}.{table.table_name}" for table in foreign)
        raise PermissionDenied(
            f"migrate must run as the owner of the application's tables: role {where.role!r} "
            f"does not own {names} (owner {', '.join(owners)}); run maintctl migrate as "
            f"{owners[0]}"
        )
    if not where.can_create_in_app_schema:
        raise PermissionDenied(
            f"role {where.role!r} may not create in schema {settings.app_schema!r}, where the "
            "rules' indexes go (it needs CREATE on the schema); run maintctl migrate as the "
            "schema's owner, or grant it CREATE on the schema"
        )
    if where.maintenance_owner is None and not where.can_create_schema:
        raise PermissionDenied(
            f"role {where.role!r} may not create the maintenance schema in database "
            f"{where.database!r} (it needs CREATE on the database); run maintctl migrate as "
            "the owner of the application's tables"
        )
    if not where.owns_maintenance:
        raise PermissionDenied(
            f"the maintenance schema of database {where.database!r} belongs to "
            f"{where.maintenance_owner!r}, not {where.role!r}; run maintctl migrate as "
            f"{where.maintenance_owner}"
        )


def _newer_maintctl(applied: int, known: int) -> ConfigError:
    return ConfigError(
        f"the database was migrated by a newer maintctl (migration {applied}, "
        f"this maintctl knows up to {known}); upgrade maintctl"
    )


@dataclass(frozen=True)
class SessionWritable:
    in_recovery: bool
    read_only: bool


def ensure_writable(conn: db.Connection) -> None:
    """Refuse (exit 78) a hot standby or a read-only session before any command writes."""
    found = db.fetch_one(conn, "session_writable", {}, SessionWritable)
    if found.in_recovery:
        raise ConfigError(
            "the database is a hot standby (in recovery, read-only): maintctl writes, so give it "
            "the primary's URL"
        )
    if found.read_only:
        raise ConfigError(
            "the session is read-only (default_transaction_read_only = on, set for this role, "
            "database or URL): maintctl writes, so give it a read-write connection"
        )


def ensure_migrated(conn: db.Connection, settings: Settings) -> None:
    """Refuse (exit 78) to work on a database whose maintenance schema is missing or stale."""
    applied = applied_migrations(conn)
    known = known_migrations()
    if not applied:
        raise NotMigrated("the maintenance schema is not installed; run: maintctl migrate")
    newest_known = known[-1].version
    if applied[-1].version > newest_known:
        raise _newer_maintctl(applied[-1].version, newest_known)
    if len(applied) < len(known):
        raise NotMigrated(
            f"the maintenance schema is out of date ({len(applied)} of {len(known)} migrations "
            "applied); run: maintctl migrate"
        )
    if applied[-1].app_schema != settings.app_schema:
        raise ConfigError(
            f"the maintenance schema serves application schema {applied[-1].app_schema!r}, "
            f"not {settings.app_schema!r}; set MAINTCTL_SCHEMA={applied[-1].app_schema}"
        )
    ensure_current(conn, settings)


def _wait_for_lock(conn: db.Connection) -> None:
    # Poll rather than block: a statement waiting on the lock would hold a snapshot, and the
    # other migrate's CREATE INDEX CONCURRENTLY would wait for it forever.
    while not db.fetch_value(conn, "try_migration_lock"):
        time.sleep(LOCK_POLL_SECONDS)


def migrate(conn: db.Connection, settings: Settings) -> MigrateResult:
    """Apply every migration not yet applied; safe to run twice at once.

    A transactional migration, its hardening and its ledger row commit together. Index builds
    (CREATE INDEX CONCURRENTLY) never block the application's writes, so they run without
    statement or lock timeouts: on a large table they take as long as they take.
    """
    server = db.fetch_one(conn, "server_info", {}, ServerInfo)
    if server.server_version_num < MIN_SERVER_VERSION:
        raise ConfigError(
            f"maintctl needs PostgreSQL 15 or newer; this server is {server.server_version}"
        )
    check_before_migrating(conn, settings)
    pooler.refuse_for_migrate(conn, settings)
    _wait_for_lock(conn)
    try:
        check_before_migrating(conn, settings)  # again, under the lock: another may have run
        applied = applied_migrations(conn)
        if applied and applied[-1].app_schema != settings.app_schema:
            raise ConfigError(
                f"the maintenance schema already serves application schema "
                f"{applied[-1].app_schema!r}, not {settings.app_schema!r}"
            )
        done = {migration.version for migration in applied}
        bootstrapped = bool(db.fetch_value(conn, "migrations_table_exists"))
        had_schema = bool(db.fetch_value(conn, "maintenance_schema_exists"))
        app = sql.Identifier(settings.app_schema)
        newly_applied = []
        for migration in known_migrations():
            if migration.version in done:
                continue
            record = {
                "version": migration.version,
                "name": migration.name,
                "app_schema": settings.app_schema,
                "maintctl_version": __version__,
            }
            if not migration.transactional:
                db.execute(conn, "allow_long_statements")
                try:
                    for statement in migration.statements():
                        conn.execute(sql.SQL(statement).format(app=app))
                finally:
                    db.execute(conn, "reset_session_limits")
            with db.transaction(conn, settings):
                if not bootstrapped:
                    # The schema and its ledger come with the first migration: a migrate that
                    # fails there leaves nothing behind.
                    conn.execute(read_sql("bootstrap.sql"))
                if migration.transactional:
                    db.execute(conn, "skip_function_body_checks")
                    conn.execute(sql.SQL(migration.text).format(app=app))
                conn.execute(hardening())
                db.execute(conn, "record_migration", record)
            bootstrapped = True
            newly_applied.append(_label(migration))
        # The rules' own SQL, generated from their definitions and the policy. On a database that
        # had no maintenance schema, one that fails takes the schema its migrations made with it:
        # a failed migrate leaves the database as it was (the install undid its own part).
        try:
            rules_installed = install_rules(conn, settings)
        except BaseException:
            if not had_schema:
                with db.best_effort(), db.transaction(conn, settings):
                    db.execute(conn, "drop_maintenance_schema")
            raise
        # Again on every migrate: API roles created since (Supabase's anon) lose access too.
        with db.transaction(conn, settings):
            conn.execute(hardening())
    finally:
        with db.best_effort():
            db.fetch_value(conn, "migration_unlock")
    return MigrateResult(newly_applied, len(done), settings.app_schema, rules_installed)
