"""A table one rule needs is missing (DESIGN.md, "Real databases"): the other rules run, the missing
one is reported by name (its task fails saying so, exit 1; doctor fails naming it), status answers
for the rest and names it; `enabled = false` in the policy file turns that rule off, and then
doctor is healthy and a run exits 0."""

from __future__ import annotations

import json
from pathlib import Path

from tests.conftest import Cli
from tests.data import Conn, add_run, add_temp_upload, count


def test_the_other_rules_run_and_the_missing_table_is_named(
    cli: Cli, conn: Conn, tmp_path: Path
) -> None:
    old = add_temp_upload(conn, "25 hours")
    stuck = add_run(conn, "processing", heartbeat="25 hours")
    conn.execute("drop table import_jobs")

    doctor = cli("doctor", "--json")
    status = cli("status", "--json")
    text = cli("status")
    dry = cli("run", "--dry-run", "--json")
    result = cli("run", "--json")

    assert doctor.exit_code == 78
    assert json.loads(doctor.stdout)["checks"][-1]["detail"] == (
        "missing in schema 'public': import_jobs"
    )
    assert status.exit_code == 0, status.stderr
    document = json.loads(status.stdout)
    assert (document["stuckRuns"], document["oldTempUploads"]) == (1, 1)
    assert document["oldImportJobs"] is None
    assert document["missingTables"] == {"compact": "import_jobs"}
    assert "Not counted: compact: table import_jobs is missing" in text.stdout
    assert json.loads(dry.stdout)["tasks"][1]["rows"] == 1
    assert result.exit_code == 1, result.stdout + result.stderr
    tasks = {task["task"]: task for task in json.loads(result.stdout)["tasks"]}
    assert {name: task["status"] for name, task in tasks.items()} == {
        "stuck": "ok",
        "temp": "ok",
        "compact": "failed",
        "raw": "ok",
    }
    assert tasks["compact"]["error"] == 'relation "public.import_jobs" does not exist'
    assert count(conn, "select count(*) from temp_uploads where id = %s", [old]) == 0
    failed = "select count(*) from import_runs where id = %s and status = 'failed'"
    assert count(conn, failed, [stuck]) == 1

    # The application has no import jobs: the policy file turns compact off.
    (tmp_path / "maintctl.toml").write_text("[rules.compact]\nenabled = false\n")
    add_temp_upload(conn, "26 hours")
    assert cli("migrate").exit_code == 0
    healthy = cli("doctor")
    again = cli("run", "--json")

    assert healthy.exit_code == 0, healthy.stdout
    assert again.exit_code == 0, again.stdout
    assert [task["task"] for task in json.loads(again.stdout)["tasks"]] == ["stuck", "temp", "raw"]
    assert count(conn, "select count(*) from temp_uploads") == 0
    assert "missingTables" not in json.loads(cli("status", "--json").stdout)
