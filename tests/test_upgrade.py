"""An upgrade from a database migrated by the maintctl before rules were data gives the same schema
as a fresh install: 0001, 0003 and 0006 no longer touch the application's tables (the generated
rules build the column and the indexes), and 0008 drops what they superseded."""

from __future__ import annotations

import os
import subprocess
import sys
import tarfile
from io import BytesIO
from pathlib import Path
from typing import Any

import psycopg
import pytest

from tests.conftest import Cli, make_cli

ROOT = Path(__file__).resolve().parent.parent
# The last maintctl whose rules were SQL written by hand (main before issue 9).
BEFORE_RULES_AS_DATA = "459cfeda6f031957e08b1141282d6271aaa01780"
# The last maintctl whose generated steps returned no archive capture (issue 9, before 0012).
BEFORE_ARCHIVE_CAPTURE = "70cd39a"

CATALOG = """
select 'function', p.proname || '(' || pg_get_function_identity_arguments(p.oid) || ')',
       concat_ws(' | ', p.prokind, pg_get_function_result(p.oid), md5(p.prosrc),
                 array_to_string(p.proconfig, ','), array_to_string(p.proacl, ','))
from pg_proc p join pg_namespace n on n.oid = p.pronamespace where n.nspname = 'maintenance'
union all
select 'column', c.relname || '.' || a.attname,
       concat_ws(' | ', format_type(a.atttypid, a.atttypmod), a.attnotnull,
                 pg_get_expr(d.adbin, d.adrelid), a.attidentity)
from pg_attribute a
join pg_class c on c.oid = a.attrelid join pg_namespace n on n.oid = c.relnamespace
left join pg_attrdef d on d.adrelid = a.attrelid and d.adnum = a.attnum
where n.nspname in ('maintenance', 'public') and c.relkind in ('r', 'v', 'p')
  and a.attnum > 0 and not a.attisdropped
union all
select 'index', c.relname,
       concat_ws(' | ', pg_get_indexdef(i.indexrelid), i.indisvalid,
                 obj_description(i.indexrelid, 'pg_class'))
from pg_index i join pg_class c on c.oid = i.indexrelid
join pg_namespace n on n.oid = c.relnamespace where n.nspname in ('maintenance', 'public')
union all
select 'relation', c.relname,
       concat_ws(' | ', c.relkind, array_to_string(c.relacl, ','),
                 case when c.relkind = 'v' then pg_get_viewdef(c.oid) end,
                 array_to_string(c.reloptions, ','))
from pg_class c join pg_namespace n on n.oid = c.relnamespace
where n.nspname = 'maintenance' and c.relkind in ('r', 'v', 'S')
union all
select 'constraint', conrelid::regclass::text || '.' || conname, pg_get_constraintdef(oid)
from pg_constraint where connamespace in ('maintenance'::regnamespace, 'public'::regnamespace)
order by 1, 2
"""


def catalog(url: str) -> list[tuple[Any, ...]]:
    with psycopg.connect(url) as conn:
        return conn.execute(CATALOG).fetchall()


def old_maintctl(tmp_path: Path, commit: str = BEFORE_RULES_AS_DATA) -> Path:
    """The maintctl of `commit`, unpacked from git."""
    archive = subprocess.run(
        ["git", "-C", str(ROOT), "archive", commit, "maintctl", "sql"],
        capture_output=True,
        check=False,
    )
    if archive.returncode != 0:
        pytest.skip(f"no git history with {commit[:7]}: {archive.stderr!r}")
    target = tmp_path / "before"
    with tarfile.open(fileobj=BytesIO(archive.stdout)) as unpacked:
        unpacked.extractall(target, filter="data")
    return target


def since(version: int) -> list[str]:
    """What migrate says it applies of the migrations from `version` on."""
    from maintctl.sqlfiles import migrations

    return [f"applied {m.version:04d}_{m.name}" for m in migrations() if m.version >= version]


def test_an_upgrade_from_the_hand_written_rules_gives_a_fresh_install_s_catalog(
    bare_db_url: str, db_url: str, tmp_path: Path
) -> None:
    before = old_maintctl(tmp_path)
    old = subprocess.run(
        [sys.executable, "-c", "from maintctl.cli import main; main()", "migrate"],
        env={**os.environ, "PYTHONPATH": str(before), "MAINTCTL_DATABASE_URL": bare_db_url},
        cwd=tmp_path,
        capture_output=True,
        text=True,
        check=False,
    )
    assert old.returncode == 0, old.stderr
    assert "0008" not in old.stdout
    upgraded: Cli = make_cli(bare_db_url)

    result = upgraded("migrate")

    assert result.exit_code == 0, result.stderr
    assert result.stdout.splitlines()[: len(since(8)) + 1] == [
        *since(8),
        "installed the rules' steps, counts and indexes, generated from the policy",
    ]
    fresh = catalog(db_url)
    assert len([row for row in fresh if row[0] == "function"]) >= 30
    assert [row[1] for row in fresh if row[0] == "index" and row[1].startswith("maintctl_")] == [
        "maintctl_import_jobs_compactable_key",
        "maintctl_import_runs_failed",
        "maintctl_import_runs_processing",
        "maintctl_raw_import_items_run_id_id",
        "maintctl_temp_uploads_created_at_id",
    ]
    assert catalog(bare_db_url) == fresh


def old_migrate(before: Path, url: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", "from maintctl.cli import main; main()", "migrate"],
        env={**os.environ, "PYTHONPATH": str(before), "MAINTCTL_DATABASE_URL": url},
        cwd=cwd,
        capture_output=True,
        text=True,
        check=False,
    )


def test_an_upgrade_from_steps_without_the_archive_capture_gives_a_fresh_install_s_catalog(
    bare_db_url: str, db_url: str, tmp_path: Path
) -> None:
    # The generated steps of issue 9 took no p_archive: left beside their successors, every call
    # by the old arguments (the pg_cron procedure's) would be ambiguous. 0012 drops them.
    old = old_migrate(old_maintctl(tmp_path, BEFORE_ARCHIVE_CAPTURE), bare_db_url, tmp_path)
    assert old.returncode == 0, old.stderr
    assert "0012" not in old.stdout
    upgraded: Cli = make_cli(bare_db_url)

    result = upgraded("migrate")

    assert result.exit_code == 0, result.stderr
    assert result.stdout.splitlines()[: len(since(9)) + 1] == [
        *since(9),
        "installed the rules' steps, counts and indexes, generated from the policy",
    ]
    assert catalog(bare_db_url) == catalog(db_url)
    with psycopg.connect(bare_db_url, autocommit=True) as conn:
        conn.execute("call maintenance.run_maintenance_cleanup()")
        steps = conn.execute(
            "select count(*) from pg_proc where proname = 'rule_step'"
            " and pronamespace = 'maintenance'::regnamespace"
        ).fetchone()
    assert steps == (1,)


def test_an_upgrade_drops_a_purge_rule_s_old_step_too(bare_db_url: str, tmp_path: Path) -> None:
    with psycopg.connect(bare_db_url, autocommit=True) as conn:
        conn.execute("create table audit_log (id bigint primary key, logged_at timestamptz)")
    (tmp_path / "maintctl.toml").write_text(
        '[[purge]]\nname = "audit"\ntable = "audit_log"\ntime_column = "logged_at"\n'
        'key = "id"\nolder_than = "90d"\n'
    )
    old = old_migrate(old_maintctl(tmp_path, BEFORE_ARCHIVE_CAPTURE), bare_db_url, tmp_path)
    assert old.returncode == 0, old.stderr
    upgraded: Cli = make_cli(bare_db_url)

    result = upgraded("migrate", "--config", str(tmp_path / "maintctl.toml"))

    assert result.exit_code == 0, result.stderr
    with psycopg.connect(bare_db_url) as conn:
        found = conn.execute(
            "select pg_get_function_identity_arguments(oid) from pg_proc"
            " where proname = 'purge_audit_step'"
        ).fetchall()
    assert len(found) == 1
    assert "p_cutoffs jsonb, p_archive text[], OUT rows integer" in found[0][0]
