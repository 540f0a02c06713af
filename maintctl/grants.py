"""`maintctl grant ROLE`: a least-privilege role for `run`, `status`, `doctor` and `history`.

The statements are `sql/grants/grant.sql` and `revoke.sql`; maintctl fills in the role, the
application schema and the maintenance schema's owner, each quoted as an identifier.
"""

from __future__ import annotations

from dataclasses import dataclass

from psycopg import sql

from maintctl import db
from maintctl.errors import ConfigError
from maintctl.settings import Settings
from maintctl.sqlfiles import read_sql

# Supabase's API roles: the hardening takes everything away from them on every migrate, and
# granting them maintenance would hand it to every visitor of the API.
API_ROLES = ("anon", "authenticated")


# From PostgreSQL 17 a role can be granted MAINTAIN (VACUUM, ANALYZE); before, only the owner.
MAINTAIN_SERVER_VERSION = 170000


@dataclass(frozen=True)
class GrantResult:
    role: str
    revoked: bool
    app_schema: str
    can_vacuum: bool  # MAINTAIN granted (17+): run --vacuum works as the role


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
    files = ["grants/revoke.sql" if revoke else "grants/grant.sql"]
    maintain = int(db.fetch_value(conn, "server_version_num")) >= MAINTAIN_SERVER_VERSION
    if maintain:
        files.append("grants/revoke_maintain.sql" if revoke else "grants/maintain.sql")
    names = {
        "role": sql.Identifier(role),
        "app": sql.Identifier(settings.app_schema),
        "owner": sql.Identifier(owner),
    }
    with db.transaction(conn, settings):
        for name in files:
            conn.execute(sql.SQL(read_sql(name)).format(**names))
    return GrantResult(role, revoke, settings.app_schema, maintain and not revoke)
