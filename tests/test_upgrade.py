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


def old_maintctl(tmp_path: Path) -> Path:
    """The maintctl of BEFORE_RULES_AS_DATA, unpacked from git."""
    archive = subprocess.run(
        ["git", "-C", str(ROOT), "archive", BEFORE_RULES_AS_DATA, "maintctl", "sql"],
        capture_output=True,
        check=False,
    )
    if archive.returncode != 0:
        pytest.skip(f"no git history with {BEFORE_RULES_AS_DATA[:7]}: {archive.stderr!r}")
    target = tmp_path / "before"
    with tarfile.open(fileobj=BytesIO(archive.stdout)) as unpacked:
        unpacked.extractall(target, filter="data")
    return target


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
    lines = result.stdout.splitlines()
    applied = [line for line in lines if line.startswith("applied ")]
    assert applied[0] == "applied 0008_rules_as_data"  # then the migrations after it
    assert lines[len(applied)] == (
        "installed the rules' steps, counts and indexes, generated from the policy"
    )
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
