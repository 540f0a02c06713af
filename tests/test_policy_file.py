"""The policy file (maintctl.toml) against a schema of its own: other table and column names in
another schema, each rule on both sides of its threshold, through the real CLI and the pg_cron
procedure; discovery, precedence and every refusal."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest

from maintctl.api import Maintenance
from tests.conftest import Cli, _create_database, _drop_database, make_cli, unique_name
from tests.data import Conn, count

# An import system of its own: the same four kinds of rows under other names.
RENAMED_SCHEMA = """
create schema imports;
create table imports.batches (
  batch_id   bigint generated always as identity primary key,
  state      text not null,
  queued_at  timestamptz not null default now(),
  began_at   timestamptz,
  last_ping  timestamptz,
  ended_at   timestamptz,
  failure    text
);
create table imports.batch_rows (
  row_id     bigint generated always as identity primary key,
  batch      bigint not null references imports.batches (batch_id) on delete cascade,
  body       jsonb
);
create table imports.uploads (
  upload_id   bigint generated always as identity primary key,
  uploaded_at timestamptz not null default now(),
  object_key  text not null,
  bytes       bigint
);
create table imports.tasks (
  task_id    bigint generated always as identity primary key,
  state      text not null,
  queued_at  timestamptz not null default now(),
  done_at    timestamptz,
  input      jsonb,
  output     jsonb,
  trace      text
);
"""

POLICY = """
schema = "imports"

[rules.stuck]
table = "batches"
key = "batch_id"
status_column = "state"
running = ["working", "retrying"]
last_seen = ["last_ping", "began_at", "queued_at"]
finished_at = "ended_at"
error_column = "failure"
older_than = "6h"

[rules.temp]
table = "uploads"
key = "upload_id"
created_at = "uploaded_at"
storage_path = "object_key"
size_bytes = "bytes"
older_than = "2h"

[rules.compact]
table = "tasks"
key = "task_id"
status_column = "state"
finished = ["done", "failed"]
ended_at = ["done_at", "queued_at"]
clear = ["input", "trace"]
summary_column = "output"
older_than = "3d"

[rules.raw]
table = "batch_rows"
key = "row_id"
run_column = "batch"
run_ended_at = ["ended_at", "queued_at"]
older_than = "10d"
"""


@pytest.fixture
def renamed_url(server_url: str) -> Iterator[str]:
    """A database whose only application tables are those of RENAMED_SCHEMA."""
    name = unique_name("renamed")
    url = _create_database(server_url, name)
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(RENAMED_SCHEMA)
    yield url
    _drop_database(server_url, name)


@pytest.fixture
def renamed(renamed_url: str, tmp_path: Path) -> Cli:
    """The CLI in a directory whose ./maintctl.toml maps the rules onto RENAMED_SCHEMA."""
    (tmp_path / "maintctl.toml").write_text(POLICY)
    return make_cli(renamed_url)


def add(conn: Conn, statement: str, *params: Any) -> int:
    row = conn.execute(statement + " returning 1", params).fetchone()
    assert row is not None
    return 1


def load_both_sides(conn: Conn) -> None:
    """For each rule, rows a minute past its threshold and a minute inside it."""
    batches = (
        "insert into imports.batches (state, queued_at, began_at, last_ping, ended_at) "
        "values (%s, now() - %s::interval, now() - %s::interval, now() - %s::interval, "
        "now() - %s::interval)"
    )
    # stuck (6h): silent past it in either running status; inside it; a status not running.
    conn.execute(batches, ["working", "2 days", "2 days", "6 hours 1 minute", None])
    conn.execute(batches, ["retrying", "2 days", "6 hours 1 minute", None, None])
    conn.execute(batches, ["working", "2 days", "2 days", "5 hours 59 minutes", None])
    conn.execute(batches, ["queued", "2 days", None, None, None])
    # raw (10d): rows of a batch failed past it, and of one failed inside it.
    conn.execute(batches, ["failed", "20 days", "20 days", None, "10 days 1 minute"])
    conn.execute(batches, ["failed", "20 days", "20 days", None, "9 days 23 hours"])
    conn.execute(
        "insert into imports.batch_rows (batch, body) "
        "select b.batch_id, '{}'::jsonb from imports.batches b, generate_series(1, 3) "
        "where b.state = 'failed'"
    )
    # temp (2h)
    for age in ("2 hours 1 minute", "1 hour 59 minutes"):
        conn.execute(
            "insert into imports.uploads (uploaded_at, object_key, bytes) "
            "values (now() - %s::interval, %s, 10)",
            [age, f"tmp/{age}"],
        )
    # compact (3d): done past it, failed past it, done inside it, a status not finished.
    for state, age in (
        ("done", "3 days 1 minute"),
        ("failed", "4 days"),
        ("done", "2 days 23 hours"),
        ("running", "9 days"),
    ):
        conn.execute(
            "insert into imports.tasks (state, queued_at, done_at, input, output, trace) "
            "values (%s, now() - '10 days'::interval, now() - %s::interval, "
            "'{\"rows\": 100}', '{\"inserted\": 7}', 'line one\nlast line')",
            [state, age],
        )


def outcome(conn: Conn) -> dict[str, Any]:
    return {
        "batches": conn.execute(
            "select batch_id, state, ended_at is null, left(failure, 9) "
            "from imports.batches order by batch_id"
        ).fetchall(),
        "rows": conn.execute("select row_id, batch from imports.batch_rows order by 1").fetchall(),
        "uploads": conn.execute("select upload_id from imports.uploads order by 1").fetchall(),
        "tasks": conn.execute(
            "select task_id, state, input is null, trace is null, output, compacted_at is null "
            "from imports.tasks order by 1"
        ).fetchall(),
    }


def rows_of(report: dict[str, Any]) -> dict[str, int]:
    return {task["task"]: task["rows"] for task in report["tasks"]}


EXPECTED = {"stuck": 2, "temp": 1, "compact": 2, "raw": 3}


def test_a_renamed_schema_config_doctor_and_run_touch_exactly_the_rows_the_rules_select(
    renamed: Cli, renamed_url: str
) -> None:
    configured = json.loads(renamed("config", "--json").stdout)
    assert configured["values"]["rules.temp.created_at"] == {
        "value": "uploaded_at",
        "source": "file",
    }
    assert renamed("migrate").exit_code == 0
    assert renamed("doctor").exit_code == 0, renamed("doctor").stdout
    with psycopg.connect(renamed_url, autocommit=True) as conn:
        load_both_sides(conn)
        before = outcome(conn)

        dry = json.loads(renamed("run", "--dry-run", "--json").stdout)
        assert outcome(conn) == before
        result = renamed("run", "--json")
        assert result.exit_code == 0, result.stderr
        report = json.loads(result.stdout)
        again = json.loads(renamed("run", "--json").stdout)
        after = outcome(conn)
        status = json.loads(renamed("status", "--json").stdout)

    assert rows_of(dry) == rows_of(report) == EXPECTED
    assert (report["stuckRunsMarked"], report["importJobsCompacted"]) == (2, 2)
    assert rows_of(again) == {"stuck": 0, "temp": 0, "compact": 0, "raw": 0}
    assert [b[1] for b in after["batches"]] == [
        "failed",
        "failed",
        "working",
        "queued",
        "failed",
        "failed",
    ]
    assert after["batches"][0][3] == "Timed out"
    assert [r[1] for r in after["rows"]] == [6, 6, 6]  # the batch failed inside 10d keeps its
    assert after["uploads"] == [(2,)]
    compacted = [t for t in after["tasks"] if not t[5]]
    assert [t[0] for t in compacted] == [1, 2]
    assert all(t[2] and t[3] and t[4]["compacted"] for t in compacted)
    assert compacted[1][4]["lastLogLine"] == "last line"  # the failed one keeps its log's tail
    assert (status["stuckRuns"], status["oldTempUploads"], status["oldImportJobs"]) == (0, 0, 0)
    assert status["thresholds"]["stuckAfter"] == "6h"


def test_the_pg_cron_procedure_gives_the_cli_s_result_on_the_renamed_schema(
    renamed: Cli, renamed_url: str, server_url: str
) -> None:
    assert renamed("migrate").exit_code == 0
    twin_name = unique_name("renamed")
    twin_url = _create_database(server_url, twin_name)
    try:
        with (
            psycopg.connect(renamed_url, autocommit=True) as conn,
            psycopg.connect(twin_url, autocommit=True) as twin,
        ):
            twin.execute(RENAMED_SCHEMA)
            assert make_cli(twin_url)("migrate").exit_code == 0
            load_both_sides(conn)
            load_both_sides(twin)

            report = json.loads(renamed("run", "--json").stdout)
            # The file's thresholds are the CLI's; the procedure is given the same.
            summary = twin.execute(
                "call maintenance.run_maintenance_cleanup(stuck_after => '6h', "
                "temp_upload_ttl => '2h', compact_after => '3d', raw_items_ttl => '10d')"
            ).fetchone()

            assert summary is not None
            assert outcome(twin) == outcome(conn)
        assert rows_of(summary[0]) == rows_of(report) == EXPECTED
    finally:
        _drop_database(server_url, twin_name)


# The renamed schema with a threshold per status for compact and a [[purge]] rule with a where.
EVENTS = """
create table imports.events (
  event_id   bigint generated always as identity primary key,
  logged_at  timestamptz not null,
  level      text not null
);
"""
PER_STATUS_AND_PURGE = (
    POLICY.replace('finished = ["done", "failed"]\n', "").replace(
        'summary_column = "output"\nolder_than = "3d"',
        'summary_column = "output"\nolder_than = { done = "3d", failed = "5d" }',
    )
    + """
[[purge]]
name = "events"
table = "events"
key = "event_id"
time_column = "logged_at"
older_than = "7d"
where = "level <> 'security'"
"""
)


def moment(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def load_events(conn: Conn) -> None:
    """Events a minute past 7d (one kept by the where) and a minute inside it."""
    for level, age in (
        ("info", "7 days 1 minute"),
        ("security", "7 days 1 minute"),
        ("info", "6 days 23 hours 59 minutes"),
        ("debug", "30 days"),
    ):
        conn.execute(
            "insert into imports.events (logged_at, level) values (now() - %s::interval, %s)",
            [age, level],
        )


def events(conn: Conn) -> list[tuple[Any, ...]]:
    return conn.execute("select event_id, level from imports.events order by 1").fetchall()


def test_the_pg_cron_procedure_applies_per_status_thresholds_and_purge_rules_as_the_cli_does(
    renamed_url: str, server_url: str, tmp_path: Path
) -> None:
    (tmp_path / "maintctl.toml").write_text(PER_STATUS_AND_PURGE)
    cli = make_cli(renamed_url)
    twin_name = unique_name("renamed")
    twin_url = _create_database(server_url, twin_name)
    try:
        with (
            psycopg.connect(renamed_url, autocommit=True) as conn,
            psycopg.connect(twin_url, autocommit=True) as twin,
        ):
            conn.execute(EVENTS)
            twin.execute(RENAMED_SCHEMA + EVENTS)
            assert cli("migrate").exit_code == 0
            assert make_cli(twin_url)("migrate").exit_code == 0
            for db in (conn, twin):
                load_both_sides(db)
                load_events(db)

            result = cli("run", "--json")
            # No arguments: the procedure's defaults are the file's thresholds.
            summary = twin.execute("call maintenance.run_maintenance_cleanup()").fetchone()
            again = twin.execute("call maintenance.run_maintenance_cleanup()").fetchone()

            assert summary is not None
            assert again is not None
            assert outcome(twin) == outcome(conn)
            assert events(twin) == events(conn)
            kept = events(twin)
        (cli_run,) = json.loads(cli("history", "--json", "--limit", "1").stdout)
        (_, procedure_run) = json.loads(make_cli(twin_url)("history", "--json").stdout)
    finally:
        _drop_database(server_url, twin_name)

    assert result.exit_code == 0, result.stderr
    report = json.loads(result.stdout)
    # compact: done past 3d; failed at 4d is inside failed's 5d. purge: the old info and debug.
    expected = {"stuck": 2, "temp": 1, "compact": 1, "raw": 3, "events": 2}
    assert rows_of(summary[0]) == rows_of(report) == expected
    assert [task["task"] for task in summary[0]["tasks"]] == list(expected)
    assert rows_of(again[0]) == dict.fromkeys(expected, 0)
    assert [level for _, level in kept] == ["security", "info"]
    assert procedure_run["thresholds"] == cli_run["thresholds"]
    assert procedure_run["thresholds"]["compactAfterByStatus"] == {"done": "3d", "failed": "5d"}
    assert procedure_run["thresholds"]["purge"] == {"events": "7d"}
    # The same cutoffs, each taken a moment apart (per status: the latest, 3d for compact).
    gaps = [
        abs(moment(ours["cutoff"]) - moment(theirs["cutoff"]))
        for ours, theirs in zip(procedure_run["tasks"], cli_run["tasks"], strict=True)
    ]
    assert max(gaps) < timedelta(minutes=1)
    assert abs(moment(cli_run["tasks"][2]["cutoff"]) - moment(cli_run["startedAt"])) > timedelta(
        days=2, hours=23
    )


def test_a_threshold_given_to_the_procedure_is_every_status_s(
    renamed_url: str, tmp_path: Path
) -> None:
    (tmp_path / "maintctl.toml").write_text(PER_STATUS_AND_PURGE)
    cli = make_cli(renamed_url)
    with psycopg.connect(renamed_url, autocommit=True) as conn:
        conn.execute(EVENTS)
        assert cli("migrate").exit_code == 0
        load_both_sides(conn)

        summary = conn.execute(
            "call maintenance.run_maintenance_cleanup(compact_after => '3d')"
        ).fetchone()
        compacted_ids = conn.execute(
            "select task_id from imports.tasks where compacted_at is not null order by 1"
        ).fetchall()
    (run,) = json.loads(cli("history", "--json").stdout)

    assert summary is not None
    assert rows_of(summary[0])["compact"] == 2  # the failed job at 4d too, as with the flag
    assert compacted_ids == [(1,), (2,)]
    assert run["thresholds"]["compactAfter"] == "3d"
    assert "compactAfterByStatus" not in run["thresholds"]


def test_migrate_gives_the_procedure_the_file_s_new_thresholds(
    renamed_url: str, tmp_path: Path
) -> None:
    (tmp_path / "maintctl.toml").write_text(PER_STATUS_AND_PURGE)
    cli = make_cli(renamed_url)
    with psycopg.connect(renamed_url, autocommit=True) as conn:
        conn.execute(EVENTS)
        assert cli("migrate").exit_code == 0
        load_events(conn)
        (tmp_path / "maintctl.toml").write_text(
            PER_STATUS_AND_PURGE.replace('older_than = "7d"', 'older_than = "40d"')
        )

        unchanged = json.loads(cli("migrate", "--json").stdout)
        summary = conn.execute("call maintenance.run_maintenance_cleanup()").fetchone()

    assert unchanged["rulesInstalled"] is True  # the procedure's defaults were generated anew
    assert summary is not None
    assert rows_of(summary[0])["events"] == 0  # nothing is 40 days old


def test_a_policy_naming_a_column_that_does_not_exist_is_refused_before_migrate_changes_anything(
    renamed_url: str, tmp_path: Path
) -> None:
    (tmp_path / "maintctl.toml").write_text(POLICY.replace('"last_ping"', '"last_seen_at"'))
    cli = make_cli(renamed_url)

    refused = cli("migrate")

    assert refused.exit_code == 78
    assert refused.stderr == (
        "maintctl: error: in schema 'imports', missing: batches.last_seen_at (needed by stuck) "
        "(see maintctl config)\n"
    )
    with psycopg.connect(renamed_url) as conn:
        assert count(conn, "select count(*) from pg_namespace where nspname = 'maintenance'") == 0


def test_steps_generated_for_another_policy_are_refused_until_migrate(
    renamed: Cli, renamed_url: str, tmp_path: Path
) -> None:
    assert renamed("migrate").exit_code == 0
    with psycopg.connect(renamed_url, autocommit=True) as conn:
        load_both_sides(conn)
        before = outcome(conn)
        (tmp_path / "maintctl.toml").write_text(POLICY.replace('"object_key"', '"bytes"'))

        refused = renamed("run")

        assert outcome(conn) == before
    assert refused.exit_code == 78
    assert refused.stderr.endswith("run: maintctl migrate\n")


# --- discovery and precedence ---------------------------------------------------------------


def thresholds(cli: Cli, *args: str, env: dict[str, str | None] | None = None) -> dict[str, str]:
    result = cli("status", "--json", *args, env=env)
    assert result.exit_code == 0, result.stderr
    found: dict[str, str] = json.loads(result.stdout)["thresholds"]
    return found


FILE_THRESHOLDS = """
[rules.stuck]
older_than = "2d"
[rules.temp]
older_than = "3d"
[rules.compact]
older_than = "4d"
[rules.raw]
older_than = "5d"
"""
THRESHOLD_ENV = {
    "stuckAfter": "MAINTCTL_STUCK_AFTER",
    "tempUploadTtl": "MAINTCTL_TEMP_UPLOAD_TTL",
    "compactAfter": "MAINTCTL_COMPACT_AFTER",
    "rawItemsTtl": "MAINTCTL_RAW_ITEMS_TTL",
}


def test_every_threshold_flag_beats_env_beats_dotenv_beats_file_beats_default(
    cli: Cli, tmp_path: Path
) -> None:
    assert thresholds(cli) == {
        "stuckAfter": "1d",
        "tempUploadTtl": "1d",
        "compactAfter": "7d",
        "rawItemsTtl": "30d",
    }
    (tmp_path / "maintctl.toml").write_text(FILE_THRESHOLDS)
    from_file = thresholds(cli)
    assert from_file == {
        "stuckAfter": "2d",
        "tempUploadTtl": "3d",
        "compactAfter": "4d",
        "rawItemsTtl": "5d",
    }
    for key, variable in THRESHOLD_ENV.items():
        (tmp_path / ".env").write_text(f"{variable}=6d\n")
        assert thresholds(cli)[key] == "6d"
        assert thresholds(cli, env={variable: "8d"})[key] == "8d"
        (tmp_path / ".env").unlink()
    for command, key in (
        ("stuck", "stuckAfter"),
        ("purge-temp", "tempUploadTtl"),
        ("compact", "compactAfter"),
        ("purge-raw", "rawItemsTtl"),
    ):
        result = cli(
            command, "--dry-run", "--json", "--older-than", "9d", env={THRESHOLD_ENV[key]: "8d"}
        )
        assert result.exit_code == 0, result.stderr
        cutoff_days = json.loads(result.stdout)["tasks"][0]["cutoff"]
        assert cutoff_days is not None
        history = json.loads(cli("history", "--limit", "1", "--json").stdout)
        assert history[0]["thresholds"][key] == "9d"


def test_the_file_is_found_by_flag_then_variable_then_the_working_directory(
    cli: Cli, tmp_path: Path
) -> None:
    (tmp_path / "maintctl.toml").write_text('[rules.stuck]\nolder_than = "2d"\n')
    (tmp_path / "env.toml").write_text('[rules.stuck]\nolder_than = "3d"\n')
    (tmp_path / "flag.toml").write_text('[rules.stuck]\nolder_than = "4d"\n')

    assert thresholds(cli)["stuckAfter"] == "2d"
    assert thresholds(cli, env={"MAINTCTL_CONFIG": "env.toml"})["stuckAfter"] == "3d"
    flagged = thresholds(cli, "--config", "flag.toml", env={"MAINTCTL_CONFIG": "env.toml"})
    assert flagged["stuckAfter"] == "4d"
    shown = json.loads(cli("config", "--json", env={"MAINTCTL_CONFIG": "env.toml"}).stdout)
    assert (shown["file"], shown["foundBy"]) == ("env.toml", "MAINTCTL_CONFIG")
    assert shown["values"]["rules.stuck.older_than"] == {"value": "3d", "source": "file"}


# --- refusals: exit 78, one line, nothing changed ---------------------------------------------


@pytest.mark.parametrize(
    ("policy", "message"),
    [
        (
            '[rules.stuck]\nstatus_colum = "state"\n',
            "rules.stuck.status_colum: unknown key (did you mean status_column?)",
        ),
        ('schma = "imports"\n', "unknown key schma (did you mean schema?)"),
        (
            '[rules.purge_temp]\ntable = "x"\n',
            "rules.purge_temp: no such rule (did you mean temp?)",
        ),
        (
            '[rules.temp]\nolder_than = "soon"\n',
            "maintctl.toml: rules.temp.older_than: 'soon' is not a duration",
        ),
        ('[rules.temp]\ntable = ""\n', "a name cannot be empty"),
        ("[rules.temp\n", "not valid TOML"),
    ],
)
def test_a_bad_policy_file_exits_78_in_one_line_and_changes_nothing(
    cli: Cli, conn: Conn, tmp_path: Path, policy: str, message: str
) -> None:
    from tests.data import add_temp_upload

    add_temp_upload(conn, "25 hours")
    (tmp_path / "maintctl.toml").write_text(policy)

    result = cli("run")

    assert result.exit_code == 78
    assert result.stderr.startswith("maintctl: error: ")
    assert message in result.stderr
    assert result.stderr.count("\n") == 1
    assert count(conn, "select count(*) from temp_uploads") == 1
    assert count(conn, "select count(*) from maintenance.runs") == 0


def test_an_unknown_maintctl_variable_exits_78_naming_the_nearest(
    cli: Cli, conn: Conn, tmp_path: Path
) -> None:
    from tests.data import add_temp_upload

    add_temp_upload(conn, "25 hours")

    typo = cli("run", env={"MAINTCTL_TEMP_UPLOADS_TTL": "2d"})
    (tmp_path / ".env").write_text("MAINTCTL_BACH_SIZE=10\n")
    in_dotenv = cli("run")
    (tmp_path / ".env").unlink()
    known = cli("status", env={"MAINTCTL_TEST_DSN": "x", "MAINTCTL_BENCH_DSN": "y"})

    assert typo.exit_code == 78
    assert typo.stderr == (
        "maintctl: error: unknown variable MAINTCTL_TEMP_UPLOADS_TTL "
        "(did you mean MAINTCTL_TEMP_UPLOAD_TTL?)\n"
    )
    assert in_dotenv.exit_code == 78
    assert in_dotenv.stderr == (
        "maintctl: error: .env: unknown variable MAINTCTL_BACH_SIZE "
        "(did you mean MAINTCTL_BATCH_SIZE?)\n"
    )
    assert known.exit_code == 0
    assert count(conn, "select count(*) from temp_uploads") == 1


def test_a_missing_config_file_named_by_the_flag_exits_78(cli: Cli) -> None:
    result = cli("status", "--config", "nowhere.toml")

    assert result.exit_code == 78
    assert result.stderr.startswith("maintctl: error: --config: cannot read nowhere.toml")


# --- a threshold per status ---------------------------------------------------------------


def add_job(conn: Conn, status: str, ended: str) -> int:
    row = conn.execute(
        "insert into import_jobs (status, created_at, finished_at, payload, log) "
        "values (%s, now() - '60 days'::interval, now() - %s::interval, '{}', 'x') returning id",
        [status, ended],
    ).fetchone()
    assert row is not None
    return int(row[0])


def compacted(conn: Conn) -> list[int]:
    rows = conn.execute("select id from import_jobs where compacted_at is not null order by id")
    return [row[0] for row in rows.fetchall()]


PER_STATUS = """
[rules.compact]
older_than = { completed = "7d", failed = "30d" }
"""


def test_compaction_keeps_each_status_for_its_own_threshold(
    cli: Cli, conn: Conn, tmp_path: Path
) -> None:
    (tmp_path / "maintctl.toml").write_text(PER_STATUS)
    done_past = add_job(conn, "completed", "7 days 1 minute")
    add_job(conn, "completed", "6 days 23 hours")
    add_job(conn, "failed", "29 days 23 hours")  # past 7d, inside failed's 30d
    failed_past = add_job(conn, "failed", "30 days 1 minute")
    add_job(conn, "cancelled", "40 days")  # no longer a status the rule compacts
    assert cli("migrate").exit_code == 0  # the statuses changed: the steps are generated anew

    dry = json.loads(cli("compact", "--dry-run", "--json").stdout)
    status = json.loads(cli("status", "--json").stdout)
    real = json.loads(cli("compact", "--json").stdout)
    again = json.loads(cli("compact", "--json").stdout)

    assert dry["importJobsCompacted"] == real["importJobsCompacted"] == 2
    assert status["oldImportJobs"] == 2
    assert status["thresholds"]["compactAfterByStatus"] == {"completed": "7d", "failed": "30d"}
    assert again["importJobsCompacted"] == 0
    assert compacted(conn) == [done_past, failed_past]


def test_a_threshold_from_the_environment_is_every_status_s(
    cli: Cli, conn: Conn, tmp_path: Path
) -> None:
    (tmp_path / "maintctl.toml").write_text(PER_STATUS)
    assert cli("migrate").exit_code == 0
    add_job(conn, "completed", "10 days")
    add_job(conn, "failed", "10 days")

    result = cli("compact", "--json", env={"MAINTCTL_COMPACT_AFTER": "9d"})

    assert json.loads(result.stdout)["importJobsCompacted"] == 2
    overridden = cli("status", "--json", env={"MAINTCTL_COMPACT_AFTER": "9d"})
    assert "compactAfterByStatus" not in json.loads(overridden.stdout)["thresholds"]
    assert "compactAfterByStatus" in json.loads(cli("status", "--json").stdout)["thresholds"]


def test_a_rule_turned_off_is_neither_installed_nor_run_nor_counted(
    bare_cli: Cli, bare_db_url: str, tmp_path: Path
) -> None:
    with psycopg.connect(bare_db_url, autocommit=True) as conn:
        conn.execute("drop table temp_uploads")  # this application has no temp uploads
    (tmp_path / "maintctl.toml").write_text("[rules.temp]\nenabled = false\n")

    migrated = bare_cli("migrate")
    doctor = bare_cli("doctor")
    run = json.loads(bare_cli("run", "--json").stdout)
    status = json.loads(bare_cli("status", "--json").stdout)
    alone = bare_cli("purge-temp")
    with psycopg.connect(bare_db_url, autocommit=True) as conn:
        summary = conn.execute("call maintenance.run_maintenance_cleanup()").fetchone()

    assert migrated.exit_code == 0, migrated.stderr
    assert doctor.exit_code == 0, doctor.stdout
    assert [task["task"] for task in run["tasks"]] == ["stuck", "compact", "raw"]
    assert run["tempUploadsPurged"] == 0
    assert status["oldTempUploads"] is None
    assert alone.exit_code == 78
    assert alone.stderr == (
        "maintctl: error: rule temp is turned off in the policy file (rules.temp.enabled)\n"
    )
    assert summary is not None
    assert [task["task"] for task in summary[0]["tasks"]] == ["stuck", "compact", "raw"]


def test_uploads_without_files_are_purged_with_no_outbox(
    bare_cli: Cli, bare_db_url: str, tmp_path: Path
) -> None:
    with psycopg.connect(bare_db_url, autocommit=True) as conn:
        conn.execute("alter table temp_uploads drop column storage_path, drop column size_bytes")
        conn.execute(
            "insert into temp_uploads (created_at) select now() - interval '25 hours' "
            "from generate_series(1, 5)"
        )
        conn.execute("insert into temp_uploads (created_at) values (now() - interval '23 hours')")
    (tmp_path / "maintctl.toml").write_text("[rules.temp]\nstorage_path = false\n")

    migrated = bare_cli("migrate")
    doctor = bare_cli("doctor")
    dry = json.loads(bare_cli("purge-temp", "--dry-run", "--json").stdout)
    real = json.loads(bare_cli("purge-temp", "--json", "--batch-size", "2").stdout)
    shown = json.loads(bare_cli("config", "--json").stdout)["values"]["rules.temp.storage_path"]

    assert migrated.exit_code == 0, migrated.stderr
    assert doctor.exit_code == 0, doctor.stdout
    assert dry["tempUploadsPurged"] == real["tempUploadsPurged"] == 5
    assert shown == {"value": False, "source": "file"}
    with psycopg.connect(bare_db_url) as conn:
        assert count(conn, "select count(*) from temp_uploads") == 1
        assert count(conn, "select count(*) from maintenance.storage_outbox") == 0


def test_without_files_a_row_the_application_holds_is_skipped_and_left_for_the_next_run(
    bare_cli: Cli, bare_db_url: str, tmp_path: Path
) -> None:
    # With no outbox and no archive a batch is one plain DELETE counted by its row count; it too
    # gives up on a row the application holds within its short lock wait and takes the range
    # again skipping it (a plain DELETE would wait MAINTCTL_LOCK_TIMEOUT and fail the task).
    with psycopg.connect(bare_db_url, autocommit=True) as conn:
        conn.execute(
            "insert into temp_uploads (created_at, storage_path, size_bytes) "
            "select now() - interval '25 hours', 'f/' || n, n from generate_series(1, 9) n"
        )
        held = count(conn, "select min(id) + 4 from temp_uploads")
    (tmp_path / "maintctl.toml").write_text("[rules.temp]\nstorage_path = false\n")
    assert bare_cli("migrate").exit_code == 0

    with psycopg.connect(bare_db_url) as application:
        application.execute("select 1 from temp_uploads where id = %s for update", [held])
        first = json.loads(bare_cli("purge-temp", "--json", "--batch-size", "4").stdout)
        application.rollback()
    second = json.loads(bare_cli("purge-temp", "--json").stdout)

    assert (first["tasks"][0]["status"], first["tempUploadsPurged"]) == ("ok", 8)
    assert (second["tasks"][0]["status"], second["tempUploadsPurged"]) == ("ok", 1)
    with psycopg.connect(bare_db_url) as conn:
        assert count(conn, "select count(*) from temp_uploads") == 0
        assert count(conn, "select count(*) from maintenance.storage_outbox") == 0


def test_a_config_flag_lasts_one_command_in_a_process(cli: Cli, tmp_path: Path) -> None:
    # The Python API, maintctl serve and the tests run many commands in one process: a --config
    # given to one must not become the policy file of the next.
    policy = tmp_path / "elsewhere" / "policy.toml"
    policy.parent.mkdir()
    policy.write_text('schema = "other"\n')

    given = json.loads(cli("config", "--config", str(policy), "--json").stdout)
    after = Maintenance.from_environment().config({})

    assert (given["file"], given["values"]["schema"]["value"]) == (str(policy), "other")
    schema = next(resolved.value for resolved in after.values if resolved.key == "schema")
    assert (after.file, schema) == (None, "public")
