"""The one place maintctl talks to the driver: connecting, per-transaction limits, named queries,
and translating driver errors into maintctl's errors."""

from __future__ import annotations

import re
import signal
import threading
import time
from collections.abc import Iterator, Mapping
from contextlib import AbstractContextManager, contextmanager, suppress
from datetime import timedelta
from typing import Any, TypeVar

import psycopg
from psycopg import errors as pg_errors
from psycopg import pq, sql
from psycopg.conninfo import conninfo_to_dict
from psycopg.rows import TupleRow, class_row
from psycopg.types.json import Jsonb

from maintctl.errors import (
    BatchTimedOut,
    Busy,
    ConfigError,
    DatabaseUnavailable,
    LeaseLost,
    MaintctlError,
    PermissionDenied,
    TaskError,
)
from maintctl.settings import Settings
from maintctl.sqlfiles import query

Connection = psycopg.Connection[TupleRow]
Row = TypeVar("Row")

APPLICATION_NAME = "maintctl"
# libpq reports connection failures as text only (no SQLSTATE): what the server or libpq said.
_REFUSED = re.compile(
    r"password authentication failed|no password supplied|authentication failed|pg_hba\.conf"
    r'|permission denied for database|role ".*" does not exist'
)
_NO_DATABASE = re.compile(r'database ".*" does not exist')
_BAD_OPTION = re.compile(r"\binvalid\b.*\b(value|option)\b|\bunsupported\b|invalid port number")
# postgresql://user:password@host: everything up to the last @, for passwords with a raw "@".
_URL_PASSWORD = re.compile(r"^[a-z][a-z0-9+.-]*://[^:/?#@]*:(.+)@[^@]*$", re.IGNORECASE)


def milliseconds(duration: timedelta) -> str:
    return f"{int(duration.total_seconds() * 1000)}ms"


def first_line(exc: BaseException) -> str:
    """The driver's message without libpq's hints and continuation lines."""
    diag = getattr(exc, "diag", None)
    primary = diag.message_primary if diag is not None else None
    text = primary or str(exc).strip() or type(exc).__name__
    return text.splitlines()[0].strip()


def conninfo_params(conninfo: str) -> dict[str, str] | None:
    """libpq's reading of a URL or key=value string; None when it is malformed."""
    try:
        return {key: str(value) for key, value in conninfo_to_dict(conninfo).items()}
    except psycopg.ProgrammingError:
        return None


def passwords_in(conninfo: str) -> list[str]:
    """Every string of a connection string that may be a password, for redaction: libpq's reading,
    a URL password with an unescaped @ and its pieces, or the whole string when it is malformed."""
    params = conninfo_params(conninfo)
    if params is None:
        return [conninfo]
    found = [params.get("password", "")]
    if match := _URL_PASSWORD.match(conninfo):
        found += [match.group(1), *match.group(1).split("@")]
    return [secret for secret in found if secret]


def describe_target(settings: Settings, said: str = "") -> str:
    """Where maintctl connects, for messages: user@host:port/dbname, never the password, with
    libpq's defaults (PG* variables, then its compiled defaults) for what the URL leaves out.
    `said` is libpq's error, which names the socket when the host is libpq's default one."""
    from psycopg import pq

    params = conninfo_params(settings.conninfo())
    if params is None or "@" in params.get("host", ""):
        return "the configured database"
    defaults = {
        option.keyword.decode(): (option.val or option.compiled or b"").decode()
        for option in pq.Conninfo.get_defaults()
    }

    def given(key: str) -> str:
        return params.get(key) or defaults.get(key) or ""

    socket = re.search(r'socket "(.+)/\.s\.PGSQL\.\d+"', said)
    host = given("host") or given("hostaddr") or (socket.group(1) if socket else "")
    user = given("user")
    dbname = given("dbname") or user  # libpq's default database is the user's name
    where = f"{host or '(libpq default socket)'}:{given('port')}".removesuffix(":")
    return f"{user + '@' if user else ''}{where}{'/' + dbname if dbname else ''}"


def describe_connection(conn: Connection) -> str:
    """Where this connection went, as libpq resolved it: user@host:port/dbname."""
    info = conn.info
    return f"{info.user}@{info.host}:{info.port}/{info.dbname}"


def server_version(conn: Connection) -> str:
    """The server's version as it reported it at connection time (no query)."""
    version = conn.info.parameter_status("server_version") or "unknown"
    return version.split()[0]  # "15.8", without a packager's " (Debian 15.8-1)"


def connect(settings: Settings) -> Connection:
    """An autocommit connection named `maintctl`.

    Retried with backoff for up to `connect_timeout` while the server does not answer; refused
    credentials, a missing database and an invalid option are not retried. Timeouts are set in
    each transaction (see `transaction`), not at connect time, so poolers see a plain startup.
    """
    conninfo = settings.conninfo()
    if conninfo_params(conninfo) is None:
        raise ConfigError(
            "the database URL is not a valid PostgreSQL connection string "
            "(expected postgresql://user@host:port/dbname or key=value pairs)"
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
                # A statement prepared on one server session is unknown on the next one that a
                # transaction-mode pooler (PgBouncer) hands out: never prepare.
                prepare_threshold=None,
            )
        except psycopg.OperationalError as exc:
            # 'connection failed: connection to server at "h", port 5432 failed: FATAL:  why'
            said = first_line(exc)
            reason = re.sub(r"^.*failed:\s*(FATAL:\s*)?", "", said)
            target = describe_target(settings, said)
            if _REFUSED.search(reason):
                raise PermissionDenied(
                    f"the database refused the connection to {target}: {reason}"
                ) from None
            if _NO_DATABASE.search(reason):
                raise DatabaseUnavailable(f"cannot connect to {target}: {reason}") from None
            if _BAD_OPTION.search(reason):
                raise ConfigError(
                    f"the database URL has an invalid option ({target}): {reason}"
                ) from None
            if time.monotonic() + delay >= deadline:
                raise DatabaseUnavailable(f"cannot connect to {target}: {reason}") from None
            time.sleep(delay)
            delay = min(delay * 2, 2.0)


@contextmanager
def transaction(
    conn: Connection,
    settings: Settings,
    *,
    asynchronous_commit: bool = False,
    one_snapshot: bool = False,
    renew_lease: Mapping[str, Any] | None = None,
) -> Iterator[None]:
    """One short transaction with the configured limits set inside it (poolers keep no session).
    With `asynchronous_commit` (a batch's), its COMMIT does not wait for the WAL flush. With
    `one_snapshot`, it is REPEATABLE READ: every statement sees the rows as its first did, and a
    row changed meanwhile by another transaction fails the one that would change it too
    (SnapshotConflict, see `snapshot_conflicts`). With `renew_lease` (a batch's: lease_run_id
    and lease), the run lease is renewed by the statement that sets the limits, and LeaseLost
    raised when another run took it over."""
    if renew_lease is not None:
        limits = query("begin_batch_renewing_lease")
    elif asynchronous_commit:
        limits = query("set_batch_transaction_limits")
    else:
        limits = query("set_transaction_timeouts")
    previous = conn.isolation_level
    if one_snapshot:
        conn.isolation_level = psycopg.IsolationLevel.REPEATABLE_READ
    try:
        with conn.transaction():
            set_limits = conn.execute(
                limits,
                {
                    "lock_timeout": milliseconds(settings.lock_timeout),
                    "statement_timeout": milliseconds(settings.statement_timeout),
                    "idle_timeout": milliseconds(settings.statement_timeout),
                    **(renew_lease or {}),
                },
            )
            if renew_lease is not None:
                found = set_limits.fetchone()
                if found is None or not found[-1]:
                    raise LeaseLost
            yield
    finally:
        # A connection that broke inside keeps its error: setting it would raise another.
        if one_snapshot and not (conn.closed or conn.broken):
            conn.isolation_level = previous


class SnapshotConflict(Exception):
    """A REPEATABLE READ transaction rolled back because another changed a row it was changing:
    the caller does the same work again in READ COMMITTED."""


@contextmanager
def snapshot_conflicts() -> Iterator[None]:
    """Around a `one_snapshot` transaction: a serialization failure raises SnapshotConflict
    (after the rollback)."""
    try:
        yield
    except pg_errors.SerializationFailure as exc:
        raise SnapshotConflict(first_line(exc)) from exc


@contextmanager
def statement_timeouts() -> Iterator[None]:
    """Around a transaction: a statement that ran into statement_timeout raises BatchTimedOut
    (after the rollback), so that the caller can try a smaller batch. A cancel for any other
    reason (an operator's pg_cancel_backend) stays an error."""
    try:
        yield
    except pg_errors.QueryCanceled as exc:
        if "statement timeout" not in first_line(exc):
            raise
        raise BatchTimedOut(first_line(exc)) from exc


@contextmanager
def interrupts_held() -> Iterator[None]:
    """SIGINT and SIGTERM wait until the block ends (in the main thread, where Python handles
    them): for a COMMIT and the bookkeeping of what it committed."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM})
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


def jsonb(value: Any) -> Jsonb | None:
    """A value sent as jsonb; None stays SQL null."""
    return None if value is None else Jsonb(value)


def fetch_one(conn: Connection, name: str, params: Mapping[str, Any], row: type[Row]) -> Row:
    return _fetch_one(conn, name, query(name), params, row)


def _fetch_one(
    conn: Connection,
    name: str,
    statement: str | sql.Composed,
    params: Mapping[str, Any],
    row: type[Row],
) -> Row:
    with conn.cursor(row_factory=class_row(row)) as cur:
        found = cur.execute(statement, params).fetchone()
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


def identifier(schema: str, name: str) -> sql.Identifier:
    """A schema-qualified name for a statement of `sql/queries.sql` that has {placeholders}."""
    return sql.Identifier(schema, name)


def execute_composed(
    conn: Connection,
    name: str,
    identifiers: Mapping[str, sql.Composable],
    params: Mapping[str, Any] | None = None,
) -> None:
    """A named statement whose {placeholders} are identifiers (DDL, VACUUM)."""
    conn.execute(_composed(name, identifiers), params or {})


def _composed(name: str, identifiers: Mapping[str, sql.Composable]) -> sql.Composed:
    return sql.SQL(query(name)).format(**identifiers)


def fetch_composed(
    conn: Connection,
    name: str,
    identifiers: Mapping[str, sql.Composable],
    params: Mapping[str, Any],
    row: type[Row],
) -> Row:
    """One row of a named query whose {placeholders} are identifiers."""
    return _fetch_one(conn, name, _composed(name, identifiers), params, row)


def fetch_composed_values(
    conn: Connection,
    name: str,
    identifiers: Mapping[str, sql.Composable],
    params: Mapping[str, Any],
) -> tuple[Any, ...]:
    """The one row of a named query whose {placeholders} are identifiers (or lists of them), as a
    tuple: for a query whose columns are built from a list."""
    found = conn.execute(_composed(name, identifiers), params).fetchone()
    if found is None:
        raise MaintctlError(f"query {name} returned no row")
    return tuple(found)


def vacuum(conn: Connection, table: sql.Composable) -> str | None:
    """VACUUM (ANALYZE) one table, outside any transaction, without a statement timeout. Returns
    the warning of a VACUUM that PostgreSQL skipped (it only warns when the role may not vacuum
    the table), else None."""
    warnings: list[str] = []

    def collect(diag: psycopg.errors.Diagnostic) -> None:
        if diag.severity_nonlocalized == "WARNING" and diag.message_primary:
            warnings.append(diag.message_primary)

    conn.add_notice_handler(collect)
    execute(conn, "allow_long_statements")
    try:
        execute_composed(conn, "vacuum_table", {"table": table})
    finally:
        conn.remove_notice_handler(collect)
        execute(conn, "reset_session_limits")
    return warnings[0] if warnings else None


def try_outside_transaction(
    conn: Connection, settings: Settings, name: str, identifiers: Mapping[str, sql.Composable]
) -> bool:
    """A statement that cannot run in a transaction block (DETACH PARTITION CONCURRENTLY), under
    the configured timeouts set for the session and reset afterwards. False when it gave up
    waiting (lock or statement timeout); other errors propagate."""
    conn.execute(
        query("set_session_timeouts"),
        {
            "lock_timeout": milliseconds(settings.lock_timeout),
            "statement_timeout": milliseconds(settings.statement_timeout),
        },
    )
    try:
        execute_composed(conn, name, identifiers)
    except (pg_errors.LockNotAvailable, pg_errors.QueryCanceled):
        return False
    finally:
        execute(conn, "reset_session_limits")
    return True


def try_in_transaction(
    conn: Connection, settings: Settings, name: str, identifiers: Mapping[str, sql.Composable]
) -> bool:
    """A DDL statement in its own short transaction with the configured timeouts; False when it
    gave up waiting (lock or statement timeout) and rolled back."""
    try:
        with transaction(conn, settings):
            execute_composed(conn, name, identifiers)
    except (pg_errors.LockNotAvailable, pg_errors.QueryCanceled):
        return False
    return True


def _connection_lost(conn: Connection | None, exc: psycopg.Error) -> bool:
    """Whether an error means the session is gone (server restart, terminated backend)."""
    return (
        conn is None
        or bool(conn.closed or conn.broken)
        or isinstance(
            exc, pg_errors.AdminShutdown | pg_errors.CrashShutdown | pg_errors.ConnectionException
        )
    )


def translate(conn: Connection | None, exc: psycopg.Error) -> MaintctlError:
    """The maintctl error, with its exit code, for a driver error."""
    line = first_line(exc)
    if isinstance(exc, pg_errors.InsufficientPrivilege):
        return PermissionDenied(f"permission denied: {line}")
    if isinstance(exc, pg_errors.LockNotAvailable):
        return Busy(f"gave up waiting for a lock after MAINTCTL_LOCK_TIMEOUT: {line}")
    if isinstance(exc, pg_errors.QueryCanceled):
        return Busy(f"a statement ran longer than MAINTCTL_STATEMENT_TIMEOUT: {line}")
    if isinstance(
        exc,
        pg_errors.UndefinedTable
        | pg_errors.UndefinedColumn
        | pg_errors.InvalidSchemaName
        | pg_errors.UndefinedFunction,
    ):
        return ConfigError(f"the database is not as maintctl expects: {line}")
    if _connection_lost(conn, exc):
        return DatabaseUnavailable(f"lost the connection to the database: {line}")
    return MaintctlError(f"database error: {line} (run again with --debug for the details)")


@contextmanager
def database_errors(conn: Connection | None) -> Iterator[None]:
    """Turn any driver error inside the block into maintctl's error."""
    try:
        yield
    except psycopg.Error as exc:
        raise translate(conn, exc) from exc


@contextmanager
def task_errors(conn: Connection) -> Iterator[None]:
    """Inside a task: a lost connection ends the run (DatabaseUnavailable); any other database
    error fails this task only (TaskError), and the run goes on with the next."""
    try:
        yield
    except psycopg.Error as exc:
        error = translate(conn, exc)
        if isinstance(error, DatabaseUnavailable):
            raise error from exc
        raise TaskError(first_line(exc)) from exc


def cancel_in_flight(conn: Connection) -> None:
    """After an interrupt that came between the driver's steps: stop the statement the server is
    still running, so that its batch rolls back now, not when the server notices we are gone."""
    with best_effort():
        if not conn.closed and conn.info.transaction_status == pq.TransactionStatus.ACTIVE:
            conn.cancel_safe(timeout=2.0)


def best_effort() -> AbstractContextManager[None]:
    """For cleanup while another exception is in flight: database failures are ignored."""
    return suppress(psycopg.Error, MaintctlError)
