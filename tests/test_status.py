"""`status`, the maintenance_status view, `history`, `pause` and `resume`."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.conftest import Cli, table_rows
from tests.data import Conn, load_sample

STATUS_KEYS = {
    "stuckRuns",
    "oldTempUploads",
    "oldRawItems",
    "oldImportJobs",
    "paused",
    "pause",
    "thresholds",
    "lastRun",
    "lastSuccessAt",
    "countLimit",
    "storageOutbox",
}


def view(conn: Conn) -> tuple[int, ...]:
    row = conn.execute(
        "select stuck_runs, old_temp_uploads, old_raw_items, old_import_jobs "
        "from maintenance.maintenance_status"
    ).fetchone()
    assert row is not None
    return tuple(row)


def test_status_json_agrees_with_the_view(cli: Cli, conn: Conn) -> None:
    load_sample(conn)

    result = cli("status", "--json")

    assert result.exit_code == 0, result.stderr
    document = json.loads(result.stdout)
    assert set(document) == STATUS_KEYS
    counts = (
        document["stuckRuns"],
        document["oldTempUploads"],
        document["oldRawItems"],
        document["oldImportJobs"],
    )
    assert counts == view(conn) == (15, 289, 250, 210)
    assert document["thresholds"] == {
        "stuckAfter": "1d",
        "tempUploadTtl": "1d",
        "compactAfter": "7d",
        "rawItemsTtl": "30d",
    }
    assert document["paused"] is False
    assert document["lastRun"] is None


def test_status_uses_the_configured_thresholds(cli: Cli, conn: Conn) -> None:
    load_sample(conn)

    document = json.loads(cli("status", "--json", env={"MAINTCTL_TEMP_UPLOAD_TTL": "2d"}).stdout)

    # One upload every 10 minutes over 72 hours: those past 48 hours.
    assert document["oldTempUploads"] == 145
    assert document["thresholds"]["tempUploadTtl"] == "2d"
    assert view(conn)[1] == 289


def test_status_counts_drop_to_zero_after_a_run(cli: Cli, conn: Conn) -> None:
    load_sample(conn)
    run = json.loads(cli("run", "--json").stdout)

    document = json.loads(cli("status", "--json").stdout)

    assert view(conn) == (0, 0, 0, 0)
    assert document["lastRun"]["id"] == run["runId"]
    assert document["lastRun"]["status"] == "succeeded"
    assert document["lastSuccessAt"] is not None


def test_status_for_people(cli: Cli, conn: Conn) -> None:
    load_sample(conn)

    result = cli("status")

    assert result.exit_code == 0
    assert table_rows(result.stdout) == [
        ["Runs stuck in processing", "1d", "15"],
        ["Old temp uploads", "1d", "289"],
        ["Import jobs to compact", "7d", "210"],
        ["Raw items of failed runs", "30d", "250"],
    ]
    assert result.stdout.splitlines()[-2:] == [
        "Last run: none yet",
        "Last successful full run finished: never",
    ]


def test_status_max_age_is_a_dead_mans_switch(cli: Cli, conn: Conn) -> None:
    never = cli("status", "--max-age", "26h", "--json")
    assert never.exit_code == 1
    assert json.loads(never.stdout)["stale"] is True

    assert cli("run", "--dry-run").exit_code == 0
    dry_only = cli("status", "--max-age", "26h")
    assert dry_only.exit_code == 1, "a dry run is not a successful run"
    assert "STALE: no successful full run in the last 26h" in dry_only.stdout, "as written"
    assert "Last run: #1 run (dry run) succeeded, started " in dry_only.stdout

    assert cli("purge-temp").exit_code == 0
    assert cli("status", "--max-age", "26h").exit_code == 1, "one task is not a full run"

    assert cli("run").exit_code == 0
    fresh = cli("status", "--max-age", "26h", "--json")
    assert fresh.exit_code == 0
    assert json.loads(fresh.stdout)["stale"] is False

    conn.execute("update maintenance.runs set finished_at = now() - interval '27 hours'")
    assert cli("status", "--max-age", "26h").exit_code == 1


def test_history_lists_runs_newest_first(cli: Cli, conn: Conn) -> None:
    load_sample(conn)
    cli("run", "--dry-run")
    cli("run")
    cli("purge-temp")

    result = cli("history", "--json")

    assert result.exit_code == 0
    runs = json.loads(result.stdout)
    assert [(r["command"], r["dryRun"], r["status"]) for r in runs] == [
        ("purge-temp", False, "succeeded"),
        ("run", False, "succeeded"),
        ("run", True, "succeeded"),
    ]
    assert runs[1]["tasks"][1]["rows"] == 289
    assert runs[1]["thresholds"]["stuckAfter"] == "1d"
    assert len(json.loads(cli("history", "--limit", "1", "--json").stdout)) == 1
    rows = table_rows(cli("history").stdout)
    assert [row[2:4] for row in rows] == [
        ["purge-temp", "succeeded"],
        ["run", "succeeded"],
        ["run (dry)", "succeeded"],
    ]
    assert [row[5] for row in rows] == ["temp 0", "15/289/210/250", "15/289/210/250"]


def test_a_run_left_running_by_a_dead_process_shows_as_abandoned(cli: Cli, conn: Conn) -> None:
    conn.execute(
        "insert into maintenance.runs (command, host, backend_pid) values ('run', 'gone', 0)"
    )

    shown = json.loads(cli("history", "--json").stdout)
    assert shown[0]["status"] == "abandoned"

    cli("run")
    row = conn.execute("select status from maintenance.runs where host = 'gone'").fetchone()
    assert row == ("abandoned",)


def test_pause_and_resume_say_who_and_why(cli: Cli) -> None:
    paused = cli("pause", "--reason", "restoring a backup", "--json")

    assert paused.exit_code == 0
    state = json.loads(paused.stdout)
    assert state["paused"] is True
    assert state["reason"] == "restoring a backup"
    assert "@" in state["pausedBy"]
    assert paused.stderr == ""
    assert state["changed"] is True
    people = cli("pause", "--reason", "another reason")
    assert people.stdout.startswith("maintenance is already paused since ")
    assert people.stdout.rstrip().endswith(": restoring a backup (maintctl resume)"), "kept"
    status = json.loads(cli("status", "--json").stdout)
    assert status["paused"] is True
    assert status["pause"]["reason"] == "restoring a backup"
    paused_line = cli("status").stdout.splitlines()[-3]
    assert paused_line.startswith("Paused: maintenance is paused since ")
    assert paused_line.endswith("restoring a backup (maintctl resume)")

    resumed = cli("resume")
    assert resumed.stdout == "maintenance resumed\n"
    assert cli("resume").stdout == "maintenance is not paused\n"
    assert json.loads(cli("resume", "--json").stdout) == {
        "paused": False,
        "reason": None,
        "pausedBy": None,
        "pausedAt": None,
        "changed": False,
    }
    assert json.loads(cli("status", "--json").stdout)["paused"] is False


def test_ledger_prunes_itself(cli: Cli, conn: Conn) -> None:
    conn.execute(
        "insert into maintenance.runs (command, status, started_at, finished_at) "
        "values ('run', 'succeeded', now() - interval '91 days', now() - interval '91 days'), "
        "       ('run', 'succeeded', now() - interval '89 days', now() - interval '89 days')"
    )

    cli("run")

    ages = conn.execute(
        "select count(*) filter (where started_at < now() - interval '90 days'), count(*) "
        "from maintenance.runs"
    ).fetchone()
    assert ages == (0, 2)


def test_the_storage_outbox_backlog_is_in_status_the_metrics_and_doctor(
    cli: Cli, conn: Conn, tmp_path: Path
) -> None:
    load_sample(conn)
    assert cli("purge-temp").exit_code == 0  # 289 files into the outbox
    conn.execute("update maintenance.storage_outbox set deleted_at = now() - interval '2 days'")
    metrics = tmp_path / "status.prom"

    document = json.loads(cli("status", "--json", "--metrics-file", str(metrics)).stdout)
    people = cli("status").stdout
    doctor = json.loads(cli("doctor", "--json").stdout)
    assert cli("drain-outbox", str(tmp_path / "handover.jsonl")).exit_code == 0
    drained = json.loads(cli("status", "--json").stdout)

    assert document["storageOutbox"]["paths"] == 289
    assert document["storageOutbox"]["oldestDeletedAt"].endswith("Z")
    assert "Storage outbox: 289 file(s) waiting for maintctl drain-outbox since " in people
    assert "maintctl_storage_outbox_paths 289.0" in metrics.read_text()
    line = next(c for c in doctor["checks"] if c["check"] == "storage outbox")
    assert line["verdict"] == "warn"
    assert line["detail"].startswith("289 file(s) waiting for maintctl drain-outbox, the oldest ")
    assert drained["storageOutbox"] == {"paths": 0, "oldestDeletedAt": None}


@pytest.mark.parametrize("shift", ["-59 minutes", "59 minutes"])
def test_the_demo_counts_hold_for_an_hour_either_side_of_every_threshold(
    conn: Conn, shift: str
) -> None:
    load_sample(conn)
    query = (
        "select stuck_runs, old_temp_uploads, old_raw_items, old_import_jobs "
        "from maintenance.pending_counts(%(s)s::interval + '24h', %(s)s::interval + '24h', "
        "%(s)s::interval + '7d', %(s)s::interval + '30d')"
    )

    at_defaults = conn.execute(query, {"s": "0"}).fetchone()
    shifted = conn.execute(query, {"s": shift}).fetchone()

    assert at_defaults == (15, 289, 250, 210)
    assert shifted == at_defaults, "no demo row within an hour of a threshold"
