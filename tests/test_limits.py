"""Limits on a run: --max-rows per task, and the anomaly guard that refuses a task far above what
the recent runs of the ledger saw (--force overrides; no history, no refusal)."""

from __future__ import annotations

import json
from typing import Any

import pytest

from tests.conftest import Cli
from tests.data import Conn, count


def add_old_uploads(conn: Conn, how_many: int) -> None:
    conn.execute(
        "insert into temp_uploads (created_at, storage_path) "
        "select now() - interval '2 days', 'uploads/' || n || '.csv' "
        "from generate_series(1, %s) n",
        [how_many],
    )


def purge(cli: Cli, *args: str, env: dict[str, str | None] | None = None) -> dict[str, Any]:
    result = cli("purge-temp", "--json", *args, env=env)
    document: dict[str, Any] = json.loads(result.stdout)
    document["exitCode"] = result.exit_code
    document["stderr"] = result.stderr
    return document


OLD = "select count(*) from temp_uploads"


def test_max_rows_stops_each_task_at_the_limit_and_the_next_runs_carry_on(
    cli: Cli, conn: Conn
) -> None:
    add_old_uploads(conn, 2500)

    first = purge(cli, "--max-rows", "1000", "--batch-size", "300")
    after_first = count(conn, OLD)
    second = purge(cli, "--max-rows", "1000", "--batch-size", "300")
    third = purge(cli, "--max-rows", "1000", "--batch-size", "300")

    (task,) = first["tasks"]
    assert first["exitCode"] == 0, first["stderr"]
    assert (task["status"], task["rows"], task["remaining"]) == ("stopped", 1000, 1500)
    assert task["error"] == "max rows reached (MAINTCTL_MAX_ROWS); the next run carries on"
    assert after_first == 1500
    assert (second["tasks"][0]["rows"], second["tasks"][0]["status"]) == (1000, "stopped")
    assert (third["tasks"][0]["rows"], third["tasks"][0]["status"]) == (500, "ok")
    assert count(conn, OLD) == 0


def test_max_rows_from_the_environment_and_a_limit_on_the_last_row_is_ok(
    cli: Cli, conn: Conn
) -> None:
    add_old_uploads(conn, 600)

    document = purge(cli, env={"MAINTCTL_MAX_ROWS": "600"})

    (task,) = document["tasks"]
    assert (task["status"], task["rows"], task["remaining"]) == ("ok", 600, None)
    assert count(conn, OLD) == 0


def test_max_rows_applies_to_each_task_of_a_run(cli: Cli, conn: Conn) -> None:
    add_old_uploads(conn, 50)
    conn.execute(
        "insert into import_runs (status, created_at, started_at) "
        "select 'processing', now() - interval '3 days', now() - interval '3 days' "
        "from generate_series(1, 30)"
    )

    result = cli("run", "--json", "--max-rows", "20")

    tasks = {task["task"]: task for task in json.loads(result.stdout)["tasks"]}
    assert result.exit_code == 0, result.stderr
    assert (tasks["stuck"]["rows"], tasks["stuck"]["status"]) == (20, "stopped")
    assert (tasks["temp"]["rows"], tasks["temp"]["status"]) == (20, "stopped")
    assert count(conn, OLD) == 30


def test_bad_max_rows_is_refused_and_changes_nothing(cli: Cli, conn: Conn) -> None:
    add_old_uploads(conn, 10)

    flag = cli("purge-temp", "--max-rows", "0")
    env = cli("purge-temp", env={"MAINTCTL_MAX_ROWS": "lots"})

    assert flag.exit_code == 2
    assert flag.stderr.startswith("maintctl: error: --max-rows: ")
    assert env.exit_code == 78
    assert env.stderr.startswith("maintctl: error: MAINTCTL_MAX_ROWS: ")
    assert count(conn, OLD) == 10


def build_history(cli: Cli, conn: Conn, runs: int, rows: int) -> None:
    for _ in range(runs):
        add_old_uploads(conn, rows)
        assert purge(cli)["tasks"][0]["rows"] == rows


def test_the_anomaly_guard_refuses_a_task_far_above_its_recent_runs(cli: Cli, conn: Conn) -> None:
    build_history(cli, conn, 3, 200)  # the baseline is then MIN_BASELINE, 1,000 rows
    add_old_uploads(conn, 2500)

    refused = purge(cli, env={"MAINTCTL_ANOMALY_FACTOR": "2"})

    (task,) = refused["tasks"]
    assert refused["exitCode"] == 1
    assert task["status"] == "failed"
    assert task["error"] == (
        "refused: 2,500 rows eligible, 2x the most the last 3 runs saw (200; baseline 1,000), "
        "over MAINTCTL_ANOMALY_FACTOR 2; check the threshold, or run with --force"
    )
    assert task["rows"] == 0
    assert count(conn, OLD) == 2500
    assert "refused: 2,500 rows eligible" in refused["stderr"]

    forced = purge(cli, "--force", env={"MAINTCTL_ANOMALY_FACTOR": "2"})

    assert (forced["exitCode"], forced["tasks"][0]["rows"]) == (0, 2500)
    assert count(conn, OLD) == 0


def test_the_default_factor_of_ten_lets_ordinary_growth_through(cli: Cli, conn: Conn) -> None:
    build_history(cli, conn, 3, 200)
    add_old_uploads(conn, 9000)  # 9x the baseline of 1,000

    document = purge(cli)

    assert (document["exitCode"], document["tasks"][0]["rows"]) == (0, 9000)


def test_first_runs_without_history_and_a_guard_turned_off_are_not_refused(
    cli: Cli, conn: Conn
) -> None:
    add_old_uploads(conn, 5000)
    first = purge(cli, env={"MAINTCTL_ANOMALY_FACTOR": "2"})
    build_history(cli, conn, 3, 10)
    add_old_uploads(conn, 5000)
    off = purge(cli, env={"MAINTCTL_ANOMALY_FACTOR": "off"})

    assert (first["exitCode"], first["tasks"][0]["rows"]) == (0, 5000)
    assert (off["exitCode"], off["tasks"][0]["rows"]) == (0, 5000)


def test_a_dry_run_is_never_refused_and_does_not_count_as_history(cli: Cli, conn: Conn) -> None:
    add_old_uploads(conn, 5000)
    for _ in range(3):
        assert purge(cli, "--dry-run")["tasks"][0]["rows"] == 5000

    document = purge(cli, env={"MAINTCTL_ANOMALY_FACTOR": "2"})

    assert (document["exitCode"], document["tasks"][0]["rows"]) == (0, 5000)


def test_a_bad_anomaly_factor_is_refused(cli: Cli, conn: Conn) -> None:
    add_old_uploads(conn, 10)

    result = cli("purge-temp", env={"MAINTCTL_ANOMALY_FACTOR": "1"})

    assert result.exit_code == 78
    assert result.stderr == (
        "maintctl: error: MAINTCTL_ANOMALY_FACTOR: 1 is not above 1; "
        "use off to turn the guard off\n"
    )
    assert count(conn, OLD) == 10


@pytest.mark.parametrize(
    ("where", "value", "code", "message"),
    [
        ("--max-replica-lag", "soon", 2, "'soon' is neither a duration (e.g. 30s, 5m) nor a size"),
        ("MAINTCTL_MAX_REPLICA_LAG", "-1s", 78, "is neither a duration"),
        ("MAINTCTL_MAX_SLOT_LAG", "0", 78, "'0' is zero; use off to turn the limit off"),
        ("--max-slot-lag", "lots", 2, "'lots' is not a size (use e.g. 512kB, 256MB or 1GB)"),
        ("MAINTCTL_MAX_WAL_RATE", "32MB", 78, "'32MB' is not a rate (use e.g. 32MB/s)"),
        ("--throttle-wait", "0s", 2, "'0s' is zero; a duration must be positive"),
    ],
)
def test_bad_gate_settings_are_refused_and_change_nothing(
    cli: Cli, conn: Conn, where: str, value: str, code: int, message: str
) -> None:
    add_old_uploads(conn, 10)

    if where.startswith("--"):
        result = cli("purge-temp", where, value)
    else:
        result = cli("purge-temp", env={where: value})

    assert result.exit_code == code
    assert result.stderr.startswith(f"maintctl: error: {where}: ")
    assert message in result.stderr
    assert result.stderr.count("\n") == 1
    assert count(conn, OLD) == 10


def test_gate_limits_turned_off_or_given_in_any_unit_are_accepted(cli: Cli, conn: Conn) -> None:
    add_old_uploads(conn, 10)

    document = purge(
        cli,
        "--max-replica-lag",
        "256MB",
        "--max-slot-lag",
        "off",
        "--max-wal-rate",
        "1GB/s",
        "--throttle-wait",
        "1m",
        env={"MAINTCTL_MAX_REPLICA_LAG": "off", "MAINTCTL_MAX_SLOT_LAG": "512kB"},
    )

    assert (document["exitCode"], document["tasks"][0]["rows"]) == (0, 10), document["stderr"]
