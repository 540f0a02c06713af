"""`maintctl grant ROLE`: a least-privilege role for `run`, `status`, `doctor` and `history`.

The statements are `sql/grants/grant.sql` and `revoke.sql`; maintctl fills in the role, the
application schema and the maintenance schema's owner, each quoted as an identifier.
"""

from __future__ import annotations

from dataclasses import dataclass

from psycopg import sql
from psycopg.errors import InsufficientPrivilege

from maintctl import db
from maintctl.errors import ConfigError
from maintctl.rules.generate import all_needs, policy_of
from maintctl.settings import Settings
from maintctl.sqlfiles import read_sql

# Supabase's API roles: the hardening takes everything away from them on every migrate, and
# granting them maintenance would hand it to every visitor of the API.
API_ROLES = ("anon", "authenticated")
PRIVILEGES = ("SELECT", "UPDATE", "DELETE")


# From PostgreSQL 17 a role can be granted MAINTAIN (VACUUM, ANALYZE); before, only the owner.
MAINTAIN_SERVER_VERSION = 170000


@dataclass(frozen=True)
class GrantResult:
    role: str
    revoked: bool
    app_schema: str
    can_vacuum: bool  # MAINTAIN granted (17+): run --vacuum works as the role
    # The health gate reads the standbys' replay lag (pg_stat_replication), which needs
    # pg_read_all_stats: None when granted (or revoked), else why it could not be.
    stats_refused: str | None = None
    tables: tuple[str, ...] = ()  # the application tables the rules work on
    # The policy (named `policy`) created on each of those with Row Level Security enabled, so
    # that the role sees every row; with `revoked`, dropped from every table.
    policy: str = ""
    policy_tables: tuple[str, ...] = ()


def grant_role(
    conn: db.Connection, settings: Settings, role: str, *, revoke: bool = False
) -> GrantResult:
    """Grant (or with `revoke`, take back) what maintctl's everyday commands need, in one
    transaction. `maintctl migrate` stays a job for the owner."""
    if role in API_ROLES or role.startswith("pg_") or role.lower() == "public":
        raise ConfigError(
            f"refusing to grant maintenance to {role!r}: use a role of its own, "
            "e.g. create role maintctl_runner login"
        )
    if not db.fetch_value(conn, "role_exists", {"role": role}):
        raise ConfigError(
            f"role {role!r} does not exist; create it first, e.g. create role {role} login"
        )
    owner = db.fetch_value(conn, "maintenance_owner")
    statements = sql.SQL(read_sql("grants/revoke.sql" if revoke else "grants/grant.sql"))
    stats = sql.SQL(read_sql("grants/revoke_stats.sql" if revoke else "grants/grant_stats.sql"))
    refused = None
    maintain = int(db.fetch_value(conn, "server_version_num")) >= MAINTAIN_SERVER_VERSION
    names = {
        "role": sql.Identifier(role),
        "app": sql.Identifier(settings.app_schema),
        "owner": sql.Identifier(owner),
    }
    tables = table_privileges(settings)
    policy = policy_name(role)
    with_policy: list[str] = []
    with db.transaction(conn, settings):
        if revoke:
            conn.execute(statements.format(**names))
        for table, privileges in tables.items():
            # From 17, MAINTAIN too: run --vacuum as the role can VACUUM (ANALYZE) the table.
            given = privileges + (("MAINTAIN",) if maintain else ())
            granted = {
                "privileges": sql.SQL(", ").join(sql.SQL(p) for p in given),
                "table": sql.Identifier(settings.app_schema, table),
                "role": names["role"],
            }
            if revoke:
                db.execute_composed(conn, "revoke_table", granted)
            else:
                db.execute_composed(conn, "grant_table", granted)
            if _row_security_policy(conn, settings, table, role, policy, revoke=revoke):
                with_policy.append(table)
        if not revoke:
            conn.execute(statements.format(**names))
        # Granting a predefined role needs a superuser or CREATEROLE (ADMIN OPTION from 16 on):
        # without it the rest is still granted, and the gate is blind for that role.
        try:
            with conn.transaction():
                conn.execute(stats.format(role=names["role"]))
        except InsufficientPrivilege as exc:
            refused = db.first_line(exc)
    return GrantResult(
        role,
        revoke,
        settings.app_schema,
        maintain and not revoke,
        stats_refused=refused,
        tables=tuple(tables),
        policy=policy,
        policy_tables=tuple(with_policy),
    )


def policy_name(role: str) -> str:
    """The name of the policy grant creates for the role: maintctl_<role>, cut to 63 bytes."""
    return f"maintctl_{role}".encode()[:63].decode(errors="ignore")


def _row_security_policy(
    conn: db.Connection, settings: Settings, table: str, role: str, policy: str, *, revoke: bool
) -> bool:
    """On a table with Row Level Security, the role's policy letting it see and change every row:
    without one, every rule there would find no row and report 0, forever. True when created
    (with `revoke`: the policy is dropped from every table, True when there was one).

    Creating a policy needs the table's owner (or a superuser), as the grants on it do; grant is
    one transaction, so a refusal (exit 77) leaves nothing half done."""
    names = {
        "policy": sql.Identifier(policy),
        "table": sql.Identifier(settings.app_schema, table),
        "role": sql.Identifier(role),
    }
    params = {"schema": settings.app_schema, "table": table, "policy": policy}
    existed = bool(db.fetch_value(conn, "policy_exists", params))
    if existed:  # grant again: created anew, as grant makes it
        db.execute_composed(conn, "drop_role_policy", names)
    if revoke:
        return existed
    if not db.fetch_value(conn, "row_security_enabled", params):
        return False
    db.execute_composed(conn, "create_role_policy", names)
    return True


def table_privileges(settings: Settings) -> dict[str, tuple[str, ...]]:
    """What the rules do to each application table (maintctl/rules/), by table."""
    held: dict[str, list[str]] = {}
    for need in all_needs(policy_of(settings)):
        held.setdefault(need.table, [])
        held[need.table] += [p for p in need.privileges if p not in held[need.table]]
    # A privilege keyword from the rules' definitions, never from the policy: they are SQL text.
    assert all(p in PRIVILEGES for found in held.values() for p in found)
    return {table: tuple(p for p in PRIVILEGES if p in found) for table, found in held.items()}
