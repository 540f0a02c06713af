"""Application triggers written for the database's usual search_path (DESIGN.md, "Real
databases"): a trigger that names the application's tables without a schema fires in the steps'
DML as it would for the application, on each rule, while maintctl's own objects stay qualified."""

from __future__ import annotations

import json

from tests.conftest import Cli
from tests.data import Conn, add_items, add_job, add_run, add_temp_upload, count

# The application's audit trigger: its table named without a schema, as most are written.
TRIGGER = """
create table audit (what text, id bigint);
create function note_change() returns trigger language plpgsql as $$
begin
  insert into audit values (tg_table_name || ' ' || lower(tg_op), old.id);
  return case when tg_op = 'DELETE' then old else new end;
end $$;
create trigger note after update or delete on import_runs
  for each row execute function note_change();
create trigger note after delete on temp_uploads for each row execute function note_change();
create trigger note after update on import_jobs for each row execute function note_change();
create trigger note after delete on raw_import_items
  for each row execute function note_change();
"""


def test_application_triggers_find_their_unqualified_tables_in_every_step(
    cli: Cli, conn: Conn
) -> None:
    conn.execute(TRIGGER)
    stuck = add_run(conn, "processing", heartbeat="25 hours")
    failed = add_run(conn, "failed", finished="31 days")
    add_items(conn, failed, 2)
    upload = add_temp_upload(conn, "25 hours")
    job = add_job(conn, "completed", created="9 days", finished="8 days")

    result = cli("run", "--json")

    assert result.exit_code == 0, result.stdout + result.stderr
    assert [task["rows"] for task in json.loads(result.stdout)["tasks"]] == [1, 1, 1, 2]
    audit = conn.execute("select what, id from audit order by what, id").fetchall()
    items = [row[0] for row in conn.execute("select id from audit where what like 'raw%'")]
    assert audit == sorted(
        [
            ("import_jobs update", job),
            ("import_runs update", stuck),
            *[("raw_import_items delete", item) for item in items],
            ("temp_uploads delete", upload),
        ]
    )
    assert len(items) == 2
    assert count(conn, "select count(*) from raw_import_items") == 0
