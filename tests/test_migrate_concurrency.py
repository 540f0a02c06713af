"""`migrate` under concurrency: two at once apply every statement once, and the indexes on the
application's tables are built while the application keeps writing."""

from __future__ import annotations

import json
import time

import psycopg

from maintctl.sqlfiles import migrations as known_migrations
from tests.conftest import _create_database, _drop_database, unique_name
from tests.data import Conn, count
from tests.test_guard import launch, wait_all


def log_every_ddl_command(conn: Conn) -> None:
    """An event trigger notes each DDL command the database runs, with its object."""
    conn.execute("create table public.ddl_log (tag text, object text)")
    conn.execute(
        "create function public.log_ddl() returns event_trigger language plpgsql as $$ "
        "declare c record; begin for c in select * from pg_event_trigger_ddl_commands() loop "
        "insert into public.ddl_log values (c.command_tag, c.object_identity); end loop; end $$"
    )
    conn.execute(
        "create event trigger maintctl_test_ddl on ddl_command_end "
        "execute function public.log_ddl()"
    )


def ddl_of_migrate(url: str, processes: int) -> tuple[list[int], list[tuple[str, str, int]]]:
    """Starts that many `migrate` at once on a fresh database: how many migrations each applied,
    and every CREATE or ALTER the database ran, with how often."""
    with psycopg.connect(url, autocommit=True) as conn:
        log_every_ddl_command(conn)
        finished = wait_all([launch(url, "migrate", "--json") for _ in range(processes)])
        assert [f.code for f in finished] == [0] * processes, [f.stderr for f in finished]
        ddl = conn.execute(
            "select tag, coalesce(object, ''), count(*)::integer from public.ddl_log "
            "where tag like 'CREATE%%' or tag like 'ALTER%%' group by 1, 2 order by 1, 2"
        ).fetchall()
    return sorted(len(f.document["applied"]) for f in finished), ddl


def test_two_migrates_at_once_run_each_ddl_statement_once(
    bare_db_url: str, server_url: str, app_template: str
) -> None:
    alone_name = unique_name("bare")
    alone_url = _create_database(server_url, alone_name, template=app_template)
    try:
        _, alone = ddl_of_migrate(alone_url, 1)
    finally:
        _drop_database(server_url, alone_name)

    applied, together = ddl_of_migrate(bare_db_url, 2)

    assert applied == [0, len(known_migrations())], "one applied, the other found it done"
    assert together == alone, "two at once ran exactly the DDL that one runs"
    assert ("CREATE INDEX", "public.maintctl_temp_uploads_created_at_id", 1) in together


def test_indexes_are_built_while_the_application_writes(bare_db_url: str) -> None:
    with (
        psycopg.connect(bare_db_url) as application,
        psycopg.connect(bare_db_url, autocommit=True) as observer,
    ):
        # An import in progress: an open transaction that has written to import_runs. A plain
        # CREATE INDEX would queue for a SHARE lock behind it, and every later write behind that.
        application.execute("insert into import_runs (status) values ('processing')")
        process = launch(bare_db_url, "migrate", "--json")
        deadline = time.monotonic() + 60
        # It waits for that import's transaction: CONCURRENTLY for its snapshot (virtualxid),
        # a plain build for a SHARE lock on the table.
        while not count(
            observer,
            "select count(*) from pg_stat_activity where datname = current_database() "
            "and application_name = 'maintctl' and wait_event_type = 'Lock' "
            "and query ilike '%%create index%%import_runs%%'",
        ):
            assert process.poll() is None, process.communicate()
            assert time.monotonic() < deadline, "the index build never started"
            time.sleep(0.05)
        # Meanwhile the application's other writes go through.
        slowest = 0.0
        with psycopg.connect(bare_db_url, autocommit=True) as writer:
            writer.execute("set lock_timeout = '3s'")
            for _ in range(3):
                began = time.monotonic()
                writer.execute("insert into import_runs (status) values ('pending')")
                writer.execute(
                    "update import_runs set heartbeat_at = now() where status = 'pending'"
                )
                slowest = max(slowest, time.monotonic() - began)
        still_building = process.poll() is None
        application.commit()
        stdout, stderr = process.communicate(timeout=120)

        invalid = count(
            observer,
            "select count(*) from pg_index i join pg_class c on c.oid = i.indexrelid "
            "where c.relname like 'maintctl_%' and not i.indisvalid",
        )

    assert process.returncode == 0, stderr
    assert len(json.loads(stdout)["applied"]) == len(known_migrations())
    assert still_building, "the build waited for the open import, as CONCURRENTLY does"
    assert slowest < 0.5, f"an application write waited {slowest:.2f} s for the index build"
    assert invalid == 0
