"""Rows for the tests, placed by the database clock: a minute inside or past a threshold."""

from __future__ import annotations

from typing import Any

import psycopg
from psycopg import sql

Conn = psycopg.Connection[Any]

# maintctl's own objects, as their owner would grant them to a second role.
MAINTENANCE_GRANTS = (
    "grant usage on schema maintenance to {}",
    "grant select, insert, update, delete on all tables in schema maintenance to {}",
    "grant execute on all routines in schema maintenance to {}",
    # ...but not the run lease's single row (doctor fails a role that could delete it).
    "revoke insert, delete on maintenance.run_lease from {}",
)
# On the application's tables, exactly what README, "Privileges", lists.
APPLICATION_GRANTS = (
    "grant select, update on import_runs, import_jobs to {}",
    "grant select, update, delete on temp_uploads, raw_import_items to {}",
)


def grant(conn: Conn, role: sql.Identifier, *grants: str) -> None:
    """Each `grant ... to {}` statement, for the role."""
    for statement in grants:
        conn.execute(sql.SQL(statement).format(role))


def add_run(conn: Conn, status: str, **ages: str | None) -> int:
    """An import run; each age is an interval before now(), e.g. created='25 hours'."""
    columns: list[sql.Composable] = [sql.Identifier("status")]
    placeholders: list[sql.Composable] = [sql.Placeholder()]
    values: list[Any] = [status]
    for column in ("created", "started", "heartbeat", "finished"):
        age = ages.get(column)
        if age is not None:
            columns.append(sql.Identifier(f"{column}_at"))
            placeholders.append(sql.SQL("now() - {}::interval").format(sql.Placeholder()))
            values.append(age)
    statement = sql.SQL("insert into import_runs ({}) values ({}) returning id").format(
        sql.SQL(", ").join(columns), sql.SQL(", ").join(placeholders)
    )
    row = conn.execute(statement, values).fetchone()
    assert row is not None
    return int(row[0])


def add_temp_upload(conn: Conn, age: str) -> int:
    row = conn.execute(
        "insert into temp_uploads (created_at, storage_path) values (now() - %s::interval, %s) "
        "returning id",
        [age, f"tmp/{age}.csv"],
    ).fetchone()
    assert row is not None
    return int(row[0])


def add_job(
    conn: Conn,
    status: str,
    *,
    created: str,
    finished: str | None = None,
    result: str | None = '{"rowsImported": 10, "rowsRejected": 1}',
    payload: str | None = '{"source": "s3://bucket/file.csv"}',
    log: str | None = "line 1\nline 2",
    run_id: int | None = None,
) -> int:
    row = conn.execute(
        "insert into import_jobs (run_id, status, created_at, finished_at, payload, result, log) "
        "values (%s, %s, now() - %s::interval, now() - %s::interval, %s, %s, %s) returning id",
        [run_id, status, created, finished, payload, result, log],
    ).fetchone()
    assert row is not None
    return int(row[0])


def add_items(conn: Conn, run_id: int, count: int) -> None:
    conn.execute(
        "insert into raw_import_items (run_id, data) "
        "select %s, jsonb_build_object('line', n) from generate_series(1, %s) n",
        [run_id, count],
    )


def one(conn: Conn, statement: str, params: list[Any]) -> Any:
    """The one value a statement returns."""
    row = conn.execute(statement, params).fetchone()
    assert row is not None
    return row[0]


def keys(conn: Conn, statement: str) -> set[Any]:
    """The first column of every row a statement returns."""
    return {row[0] for row in conn.execute(statement).fetchall()}


def count(conn: Conn, sql: str, params: Any = None) -> int:
    row = conn.execute(sql, params).fetchone()
    assert row is not None
    return int(row[0])


def snapshot(conn: Conn) -> dict[str, list[tuple[Any, ...]]]:
    """Every application row, to compare before and after (timestamps included)."""
    return {
        table: conn.execute(
            sql.SQL("select * from {} order by id").format(sql.Identifier(table))
        ).fetchall()
        for table in ("import_runs", "raw_import_items", "temp_uploads", "import_jobs")
    }


def load_sample(conn: Conn) -> None:
    """The demo's sample: rows past and inside every threshold."""
    from maintctl.sqlfiles import read_sql

    conn.execute(read_sql("demo_data.sql"))


def slow_down_deletes(conn: Conn, seconds: float) -> None:
    """Every temp upload delete takes this long (trigger `slow`): a purge that can be caught
    mid-run."""
    conn.execute(
        sql.SQL(
            "create function slow_delete() returns trigger language plpgsql as "
            "$$ begin perform pg_sleep({}); return old; end $$"
        ).format(sql.Literal(seconds))
    )
    conn.execute(
        "create trigger slow before delete on temp_uploads "
        "for each row execute function slow_delete()"
    )


def set_database_default(conn: Conn, setting: str, value: str) -> None:
    """A default for every later session of the test's database (maintctl's included)."""
    conn.execute(
        sql.SQL("alter database {} set {} = {}").format(
            sql.Identifier(conn.info.dbname), sql.Identifier(setting), sql.Literal(value)
        )
    )


def hold_run_lease(conn: Conn, host: str, lease: str = "1 hour") -> int:
    """Another run, on `host`, holding the run lease (as `maintctl run` takes it): its ledger row
    id."""
    taken = conn.execute(
        "select maintenance.take_run_lease(%s, 4242, %s::interval)", [host, lease]
    ).fetchone()
    assert taken == (True,), "the lease was free"
    row = conn.execute(
        "insert into maintenance.runs (command, host, pid) values ('run', %s, 4242) returning id",
        [host],
    ).fetchone()
    assert row is not None
    conn.execute("select maintenance.attach_run_lease(%s)", [row[0]])
    return int(row[0])
