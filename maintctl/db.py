"""The one place maintctl talks to the driver: connecting, per-transaction limits, named queries,
and translating driver errors into maintctl's errors."""

from __future__ import annotations

import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from datetime import timedelta
from typing import Any, TypeVar

import psycopg
from psycopg import errors as pg_errors
from psycopg.conninfo import conninfo_to_dict
from psycopg.rows import TupleRow, class_row

from maintctl.errors import (
    ConfigError,
    DatabaseUnavailable,
    MaintctlError,
    PermissionDenied,
)
from maintctl.settings import Settings
from maintctl.sqlfiles import query

Connection = psycopg.Connection[TupleRow]
Row = TypeVar("Row")

APPLICATION_NAME = "maintctl"
_AUTH_FAILURES = (
    "password authentication failed",
    "no password supplied",
    "authentication failed",
    "pg_hba.conf rejects",
    "permission denied for database",
)


def milliseconds(duration: timedelta) -> str:
    return f"{int(duration.total_seconds() * 1000)}ms"


def first_line(exc: BaseException) -> str:
    """The driver's message without libpq's hints and continuation lines."""
    diag = getattr(exc, "diag", None)
    primary = diag.message_primary if diag is not None else None
    text = primary or str(exc).strip() or type(exc).__name__
    return text.splitlines()[0].strip()


def describe_target(settings: Settings) -> str:
    """Where maintctl connects, for messages: user@host:port/dbname, never the password."""
    conninfo = settings.database_url.get_secret_value() if settings.database_url else ""
    try:
        params = conninfo_to_dict(conninfo)
    except psycopg.ProgrammingError:
        return "the configured database"
    host = str(params.get("host") or "(libpq default host)")
    port, dbname, user = (str(params.get(key) or "") for key in ("port", "dbname", "user"))
    where = f"{host}:{port}" if port else host
    return f"{user + '@' if user else ''}{where}{'/' + str(dbname) if dbname else ''}"


def connect(settings: Settings) -> Connection:
    """An autocommit connection with maintctl's session limits.

    Retried with backoff for up to `connect_timeout` when the server does not answer; refused
    credentials and a missing database are not retried.
    """
    conninfo = settings.database_url.get_secret_value() if settings.database_url else ""
    try:
        conninfo_to_dict(conninfo)
    except psycopg.ProgrammingError:
        raise ConfigError(
            "the database URL is not a valid PostgreSQL connection string "
            "(expected postgresql://user@host:port/dbname or key=value pairs)"
        ) from None
    options = " ".join(
        f"-c {name}={milliseconds(value)}"
        for name, value in (
            ("lock_timeout", settings.lock_timeout),
            ("statement_timeout", settings.statement_timeout),
            ("idle_in_transaction_session_timeout", settings.statement_timeout),
        )
    )
    deadline = time.monotonic() + settings.connect_timeout.total_seconds()
    delay = 0.25
    while True:
        remaining = deadline - time.monotonic()
        try:
            return psycopg.connect(
                conninfo,
                autocommit=True,
                application_name=APPLICATION_NAME,
                connect_timeout=max(2, int(remaining)),
                options=options,
            )
        except psycopg.OperationalError as exc:
            reason = first_line(exc).removeprefix("connection failed: ")
            if any(marker in reason for marker in _AUTH_FAILURES) or (
                reason.startswith("role ") and "does not exist" in reason
            ):
                raise PermissionDenied(f"the database refused the connection: {reason}") from None
            if reason.startswith("database ") and "does not exist" in reason:
                raise DatabaseUnavailable(f"cannot connect: {reason}") from None
            if time.monotonic() + delay >= deadline:
                raise DatabaseUnavailable(
                    f"cannot connect to {describe_target(settings)}: {reason}"
                ) from None
            time.sleep(delay)
            delay = min(delay * 2, 2.0)


@contextmanager
def transaction(conn: Connection, settings: Settings) -> Iterator[None]:
    """One short transaction with the configured limits set inside it (poolers keep no session)."""
    with conn.transaction():
        conn.execute(
            query("set_transaction_timeouts"),
            {
                "lock_timeout": milliseconds(settings.lock_timeout),
                "statement_timeout": milliseconds(settings.statement_timeout),
                "idle_timeout": milliseconds(settings.statement_timeout),
            },
        )
        yield


def fetch_one(conn: Connection, name: str, params: Mapping[str, Any], row: type[Row]) -> Row:
    with conn.cursor(row_factory=class_row(row)) as cur:
        found = cur.execute(query(name), params).fetchone()
    if found is None:
        raise MaintctlError(f"query {name} returned no row")
    return found


def fetch_optional(
    conn: Connection, name: str, params: Mapping[str, Any], row: type[Row]
) -> Row | None:
    with conn.cursor(row_factory=class_row(row)) as cur:
        return cur.execute(query(name), params).fetchone()


def fetch_all(conn: Connection, name: str, params: Mapping[str, Any], row: type[Row]) -> list[Row]:
    with conn.cursor(row_factory=class_row(row)) as cur:
        return cur.execute(query(name), params).fetchall()


def fetch_value(conn: Connection, name: str, params: Mapping[str, Any] | None = None) -> Any:
    found = conn.execute(query(name), params or {}).fetchone()
    if found is None:
        raise MaintctlError(f"query {name} returned no row")
    return found[0]


def execute(conn: Connection, name: str, params: Mapping[str, Any] | None = None) -> None:
    conn.execute(query(name), params or {})


def connection_lost(conn: Connection, exc: psycopg.Error) -> bool:
    """Whether an error means the session is gone (server restart, terminated backend)."""
    return bool(conn.closed or conn.broken) or isinstance(
        exc, pg_errors.AdminShutdown | pg_errors.CrashShutdown | pg_errors.ConnectionException
    )


def translate(conn: Connection | None, exc: psycopg.Error) -> MaintctlError:
    """The maintctl error for a driver error met outside a task."""
    if isinstance(exc, pg_errors.InsufficientPrivilege):
        return PermissionDenied(f"permission denied: {first_line(exc)}")
    if conn is None or connection_lost(conn, exc):
        return DatabaseUnavailable(f"lost the connection to the database: {first_line(exc)}")
    return MaintctlError(f"database error: {first_line(exc)}")


@contextmanager
def database_errors(conn: Connection | None) -> Iterator[None]:
    """Turn any driver error inside the block into maintctl's error."""
    try:
        yield
    except psycopg.Error as exc:
        raise translate(conn, exc) from exc
