"""A migrate that cannot finish changes nothing: it checks the database, the schema, the owner of
the application's tables and the maintenance schema's version before it creates anything."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from maintctl.sqlfiles import migrations
from tests.conftest import Cli, _create_database, _drop_database, make_cli, unique_name
from tests.data import Conn

# What a migrate could leave behind: every schema, relation, routine and column of the database
# and the privileges on them, outside the system catalogs.
CATALOG = """
select 'schema ' || nspname || ' ' || pg_get_userbyid(nspowner) || ' '
       || coalesce(nspacl::text, '')
  from pg_namespace where nspname not like 'pg\\_%' and nspname <> 'information_schema'
union all
select 'relation ' || c.oid::regclass::text || ' ' || c.relkind::text || ' '
       || coalesce(c.relacl::text, '')
  from pg_class c join pg_namespace n on n.oid = c.relnamespace
 where n.nspname not like 'pg\\_%' and n.nspname <> 'information_schema'
union all
select 'column ' || a.attrelid::regclass::text || '.' || a.attname
  from pg_attribute a join pg_class c on c.oid = a.attrelid
  join pg_namespace n on n.oid = c.relnamespace
 where a.attnum > 0 and not a.attisdropped
   and n.nspname not like 'pg\\_%' and n.nspname <> 'information_schema'
union all
select 'routine ' || p.oid::regprocedure::text
  from pg_proc p join pg_namespace n on n.oid = p.pronamespace
 where n.nspname not like 'pg\\_%' and n.nspname <> 'information_schema'
order by 1
"""


def catalog(url: str) -> list[str]:
    with psycopg.connect(url, autocommit=True) as conn:
        return [row[0] for row in conn.execute(CATALOG).fetchall()]


@pytest.fixture
def empty_db_url(server_url: str) -> Iterator[str]:
    """A database without the application's tables: the wrong database in the URL."""
    name = unique_name("empty")
    yield _create_database(server_url, name)
    _drop_database(server_url, name)


@pytest.fixture
def stranger(bare_db_url: str) -> Iterator[str]:
    """A login role that may create schemas in the database but owns none of its tables."""
    name = f"maintctl_stranger_{os.getpid()}"
    role = sql.Identifier(name)
    dbname = str(conninfo_to_dict(bare_db_url)["dbname"])
    with psycopg.connect(bare_db_url, autocommit=True) as conn:
        conn.execute(sql.SQL("create role {} login").format(role))
        conn.execute(
            sql.SQL("grant create on database {} to {}").format(sql.Identifier(dbname), role)
        )
        conn.execute(sql.SQL("grant usage on schema public to {}").format(role))
        conn.execute(sql.SQL("grant select on all tables in schema public to {}").format(role))
    try:
        yield name
    finally:
        with psycopg.connect(bare_db_url, autocommit=True) as conn:
            conn.execute(sql.SQL("drop owned by {}").format(role))
            conn.execute(sql.SQL("drop role {}").format(role))


def test_migrate_in_the_wrong_database_says_where_it_looked_and_creates_nothing(
    empty_db_url: str,
) -> None:
    before = catalog(empty_db_url)

    result = make_cli(empty_db_url)("migrate")

    assert result.exit_code == 78
    dbname = conninfo_to_dict(empty_db_url)["dbname"]
    assert result.stderr == (
        "maintctl: error: application tables not found: searched schema 'public' of database "
        f"'{dbname}' for import_runs, temp_uploads, import_jobs, raw_import_items and found none "
        "(set MAINTCTL_SCHEMA or --schema, or check the database in the URL)\n"
    )
    assert catalog(empty_db_url) == before


def test_migrate_as_a_role_that_does_not_own_the_tables_refuses_and_the_owner_can_migrate(
    bare_db_url: str, bare_cli: Cli, stranger: str
) -> None:
    before = catalog(bare_db_url)

    refused = make_cli(make_conninfo(bare_db_url, user=stranger))("migrate")

    assert refused.exit_code == 77
    assert refused.stderr.startswith(
        "maintctl: error: migrate must run as the owner of the application's tables: role "
        f"'{stranger}' does not own public.import_runs, public.temp_uploads, public.import_jobs, "
        "public.raw_import_items (owner "
    )
    assert refused.stderr.count("\n") == 1
    assert catalog(bare_db_url) == before
    # The owner is not locked out: nothing of the stranger's is in the way.
    assert bare_cli("migrate").exit_code == 0


def test_migrate_on_a_database_a_newer_maintctl_migrated_refuses_with_78(
    conn: Conn, cli: Cli
) -> None:
    newer = migrations()[-1].version + 1
    conn.execute(
        "insert into maintenance.schema_migrations (version, name, app_schema, maintctl_version) "
        "values (%s, 'from_the_future', 'public', '99.0')",
        (newer,),
    )
    url = conn.info.dsn
    before = catalog(url)

    result = cli("migrate")

    assert result.exit_code == 78
    assert result.stderr == (
        f"maintctl: error: the database was migrated by a newer maintctl (migration {newer}, "
        f"this maintctl knows up to {newer - 1}); upgrade maintctl\n"
    )
    assert catalog(url) == before


PURGE_AUDIT_LOG = """
[[purge]]
name = "audit-log"
table = "audit_log"
time_column = "created_at"
older_than = "90d"
"""
AUDIT_LOG = "create table audit_log (id bigint primary key, created_at timestamptz not null)"


def test_migrate_looks_for_the_tables_of_the_policy_s_purge_rules_too(
    bare_db_url: str, bare_cli: Cli, tmp_path: Path
) -> None:
    (tmp_path / "maintctl.toml").write_text(PURGE_AUDIT_LOG)
    before = catalog(bare_db_url)

    result = bare_cli("migrate")

    assert result.exit_code == 78
    dbname = conninfo_to_dict(bare_db_url)["dbname"]
    assert result.stderr == (
        "maintctl: error: application tables not found: searched schema 'public' of database "
        f"'{dbname}' for import_runs, temp_uploads, import_jobs, raw_import_items, audit_log and "
        "found not audit_log (set MAINTCTL_SCHEMA or --schema, or check the database in the URL)\n"
    )
    assert catalog(bare_db_url) == before


def test_migrate_must_own_a_purge_rule_s_table_as_well_as_the_four(
    bare_db_url: str, stranger: str, tmp_path: Path
) -> None:
    """The stranger owns the four tables, not the [[purge]] rule's: migrate, which indexes it,
    refuses and names only that one."""
    (tmp_path / "maintctl.toml").write_text(PURGE_AUDIT_LOG)
    role = sql.Identifier(stranger)
    with psycopg.connect(bare_db_url, autocommit=True) as conn:
        conn.execute(AUDIT_LOG)
        for table in ("import_runs", "temp_uploads", "import_jobs", "raw_import_items"):
            conn.execute(sql.SQL("alter table {} owner to {}").format(sql.Identifier(table), role))
    before = catalog(bare_db_url)

    refused = make_cli(make_conninfo(bare_db_url, user=stranger))("migrate")

    assert refused.exit_code == 77
    assert refused.stderr.startswith(
        "maintctl: error: migrate must run as the owner of the application's tables: role "
        f"'{stranger}' does not own public.audit_log (owner "
    )
    assert catalog(bare_db_url) == before
    # Without the [[purge]] rule the stranger owns every table the rules name; the rules'
    # indexes go into the schema, so it needs CREATE there too, and then migrates.
    (tmp_path / "maintctl.toml").unlink()
    no_create = make_cli(make_conninfo(bare_db_url, user=stranger))("migrate")
    assert no_create.exit_code == 77
    assert no_create.stderr == (
        f"maintctl: error: role '{stranger}' may not create in schema 'public', where the rules' "
        "indexes go (it needs CREATE on the schema); run maintctl migrate as the schema's owner, "
        "or grant it CREATE on the schema\n"
    )
    assert catalog(bare_db_url) == before
    with psycopg.connect(bare_db_url, autocommit=True) as conn:
        conn.execute(sql.SQL("grant create on schema public to {}").format(role))
    done = make_cli(make_conninfo(bare_db_url, user=stranger))("migrate")
    assert done.exit_code == 0, done.stderr


def test_migrate_with_nothing_to_do_is_not_refused_for_a_role_that_does_not_own_the_tables(
    bare_db_url: str, bare_cli: Cli, stranger: str
) -> None:
    assert bare_cli("migrate").exit_code == 0
    assert bare_cli("grant", stranger).exit_code == 0
    before = catalog(bare_db_url)

    again = make_cli(make_conninfo(bare_db_url, user=stranger))("migrate")

    assert again.exit_code == 0, again.stderr
    assert again.stdout == (
        f"nothing to do: all {len(migrations())} migrations were already applied "
        "(application schema 'public')\n"
    )
    assert catalog(bare_db_url) == before
