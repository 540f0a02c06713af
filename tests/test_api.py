"""maintctl as a library: `Maintenance` returns typed results, and its run's document is what
`maintctl run --json` prints."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from maintctl.api import Maintenance
from maintctl.errors import ConfigError
from tests.conftest import Cli
from tests.data import Conn, count, load_sample

# What differs between two runs of the same data.
CLOCK_KEYS = {"timestamp", "runId", "durationMs"}


def comparable(document: dict[str, object]) -> dict[str, object]:
    tasks = [
        {k: v for k, v in task.items() if k not in ("durationMs", "cutoff", "batchSize")}
        for task in document["tasks"]  # type: ignore[attr-defined]
    ]
    return {**{k: v for k, v in document.items() if k not in CLOCK_KEYS}, "tasks": tasks}


def test_a_run_through_the_api_is_the_cli_s_run(cli: Cli, conn: Conn, db_url: str) -> None:
    load_sample(conn)
    maintenance = Maintenance.from_environment(database_url=db_url)

    dry = maintenance.run(dry_run=True)
    through_cli = json.loads(cli("run", "--dry-run", "--json").stdout)
    status = maintenance.status()
    real = maintenance.run()

    assert comparable(maintenance.run_document(dry)) == comparable(through_cli)
    assert status.counts == {"stuck": 15, "temp": 289, "compact": 210, "raw": 250}
    assert [(r.task, r.rows) for r in real.tasks] == list(status.counts.items())
    assert real.exit_code == 0
    assert maintenance.history(1)[0].id == real.run_id
    assert (
        count(conn, "select count(*) from temp_uploads where created_at < now() - interval '1 day'")
        == 0
    )


def test_one_rule_by_name_or_command_and_an_unknown_one_refused(db_url: str) -> None:
    maintenance = Maintenance.from_environment(database_url=db_url)

    chosen = maintenance.rules(["purge-temp", "stuck"])
    report = maintenance.run(chosen, command="purge-temp", dry_run=True)

    assert [rule.name for rule in chosen] == ["temp", "stuck"]
    assert [result.task for result in report.tasks] == ["temp", "stuck"]
    with pytest.raises(ConfigError, match=r"no rule named 'purge-tmp' .*did you mean purge-temp"):
        maintenance.rules(["purge-tmp"])


def test_disabled_maintenance_is_a_skipped_report_without_a_connection() -> None:
    maintenance = Maintenance.from_environment(
        database_url="postgresql://nobody@127.0.0.1:1/none", enabled=False
    )

    report = maintenance.run()

    assert report.skipped == "maintenance is disabled (MAINTCTL_ENABLED=false)"
    assert int(report.exit_code) == 75


def test_a_run_through_the_api_archives_what_it_removes_to_maintctl_archive(
    conn: Conn, db_url: str, tmp_path: Path
) -> None:
    # The archive is the run's, not the CLI's: Maintenance.run opens MAINTCTL_ARCHIVE itself.
    load_sample(conn)
    archive = tmp_path / "archive"
    maintenance = Maintenance.from_environment(database_url=db_url, archive=str(archive))

    maintenance.run(dry_run=True)
    assert not archive.exists()
    real = maintenance.run()

    manifest = json.loads((archive / f"run-{real.run_id}" / "manifest.json").read_text())
    assert {f["table"]: f["rows"] for f in manifest["files"]} == {
        "import_runs": 15,
        "temp_uploads": 289,
        "import_jobs": 210,
        "raw_import_items": 250,
    }


def test_the_api_s_run_keeps_to_the_row_limit_and_forces_past_the_anomaly_guard(
    conn: Conn, db_url: str
) -> None:
    def add_old_uploads(how_many: int) -> None:
        conn.execute(
            "insert into temp_uploads (created_at, storage_path) "
            "select now() - interval '2 days', 'uploads/' || n from generate_series(1, %s) n",
            [how_many],
        )

    guarded = Maintenance.from_environment(database_url=db_url, anomaly_factor=2)
    temp = guarded.rules(["temp"])
    for _ in range(3):
        add_old_uploads(100)
        assert guarded.run(temp, command="purge-temp").tasks[0].rows == 100
    add_old_uploads(2500)

    refused = guarded.run(temp, command="purge-temp")
    limited = Maintenance.from_environment(database_url=db_url, anomaly_factor=2, max_rows=1000)
    forced = limited.run(temp, command="purge-temp", force=True)

    assert (refused.tasks[0].status, refused.tasks[0].rows) == ("failed", 0)
    assert (forced.tasks[0].status, forced.tasks[0].rows) == ("stopped", 1000)
    assert forced.tasks[0].remaining == 1500
