"""The archive: every removed row is durable in the archive before its batch commits, verify
re-reads it, restore puts a run back (docs/archive.md). A real server, a real second database
for the database archive, real maintctl processes killed with SIGKILL."""

from __future__ import annotations

import gzip
import hashlib
import json
import re
import resource
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import psycopg
import pytest
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict

from tests.conftest import Cli, _create_database, _drop_database, unique_name
from tests.data import Conn, count, load_sample, slow_down_deletes, snapshot
from tests.test_commands import cron_environment, maintctl_command
from tests.test_policy_file import load_both_sides, renamed, renamed_url  # noqa: F401 (fixtures)
from tests.test_purge_rules import add_entries, audited  # noqa: F401 (a fixture)

REMOVING = {
    "import_runs": "mark",
    "temp_uploads": "delete",
    "import_jobs": "compact",
    "raw_import_items": "delete",
}


@pytest.fixture
def archive_db_url(server_url: str) -> Iterator[str]:
    """A second, empty database on the same server, to archive into."""
    name = unique_name("archive")
    params = conninfo_to_dict(_create_database(server_url, name))
    password = f":{params['password']}" if params.get("password") else ""
    user = str(params.get("user", "postgres"))
    host = str(params.get("host", "127.0.0.1"))
    port = str(params.get("port", 5432))
    if host.startswith("/"):  # a Unix socket directory (the embedded server): in the query
        yield f"postgresql://{user}{password}@/{name}?host={quote(host, safe='')}&port={port}"
    else:
        yield f"postgresql://{user}{password}@{host}:{port}/{name}"
    _drop_database(server_url, name)


def last_run_id(conn: Conn) -> int:
    return count(conn, "select max(id) from maintenance.runs")


def archived_lines(path: Path) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """A table file of a directory archive read with the standard library alone: its header and
    rows. Whole lines only: a file cut by a kill ends in a truncated member."""
    lines: list[str] = []
    try:
        with gzip.open(path, "rt", encoding="utf-8") as source:
            lines.extend(source)
    except EOFError:
        pass
    parsed = []
    for line in lines:
        try:
            parsed.append(json.loads(line))
        except ValueError:
            break  # the half line a kill left
    return parsed[0], parsed[1:]


def removed_by_the_run(
    before: dict[str, list[Any]], after: dict[str, list[Any]]
) -> dict[str, set[int]]:
    """The ids each rule took: gone from the table, or (compact, stuck) changed."""
    gone = {}
    for table in ("temp_uploads", "raw_import_items"):
        gone[table] = {row[0] for row in before[table]} - {row[0] for row in after[table]}
    for table in ("import_jobs", "import_runs"):
        still = {row[0]: row for row in after[table]}
        gone[table] = {row[0] for row in before[table] if still[row[0]] != row}
    return gone


def test_a_run_with_a_directory_archive_keeps_every_removed_row_and_a_manifest(
    cli: Cli, conn: Conn, tmp_path: Path
) -> None:
    load_sample(conn)
    before = snapshot(conn)
    archive = tmp_path / "archive"

    result = cli("run", "--archive", str(archive), "--batch-size", "50", "--json")

    assert result.exit_code == 0, result.stderr
    after = snapshot(conn)
    removed = removed_by_the_run(before, after)
    run_dir = archive / f"run-{last_run_id(conn)}"
    manifest = json.loads((run_dir / "manifest.json").read_text())
    assert manifest["runId"] == last_run_id(conn)
    assert {entry["table"]: entry["rows"] for entry in manifest["files"]} == {
        table: len(ids) for table, ids in removed.items()
    }
    old_rows = {table: {row[0]: row for row in rows} for table, rows in before.items()}
    for entry in manifest["files"]:
        path = run_dir / entry["file"]
        assert entry["bytes"] == path.stat().st_size
        assert entry["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
        header, rows = archived_lines(path)
        assert header["table"] == entry["table"]
        assert header["action"] == entry["action"] == REMOVING[entry["table"]]
        assert {row["id"] for row in rows} == removed[entry["table"]]
        if entry["action"] == "delete":  # whole rows, every column
            names = [column["name"] for column in entry["columns"]]
            described = conn.execute(
                "select attname from pg_attribute where attrelid = %s::regclass "
                "and attnum > 0 and not attisdropped order by attnum",
                [entry["table"]],
            ).fetchall()
            assert names == [name for (name,) in described]
            assert all(sorted(row) == sorted(names) for row in rows)
        elif entry["action"] == "compact":  # the key and the replaced values, as they were
            jobs = old_rows["import_jobs"]
            assert sorted(rows[0]) == ["compacted_at", "id", "log", "payload", "result"]
            for row in rows:
                # import_jobs: id, run_id, status, created_at, finished_at, payload, result, log
                assert (row["payload"], row["result"], row["log"]) == (
                    jobs[row["id"]][5],
                    jobs[row["id"]][6],
                    jobs[row["id"]][7],
                )


def test_a_run_with_a_database_archive_commits_every_removed_row_there(
    cli: Cli, conn: Conn, archive_db_url: str
) -> None:
    load_sample(conn)
    before = snapshot(conn)

    result = cli("run", "--archive", archive_db_url)

    assert result.exit_code == 0, result.stderr
    removed = removed_by_the_run(before, snapshot(conn))
    run_id = last_run_id(conn)
    with psycopg.connect(archive_db_url) as archive:
        held = archive.execute(
            "select table_name, array_agg(r ->> 'id' order by r ->> 'id') "
            "from maintctl_archive.batches b cross join jsonb_array_elements(b.rows) r "
            "where run_id = %s group by table_name",
            [run_id],
        ).fetchall()
        manifest = archive.execute(
            "select manifest from maintctl_archive.runs where run_id = %s and finished_at "
            "is not null",
            [run_id],
        ).fetchone()
    assert {table: {int(i) for i in ids} for table, ids in held} == removed
    assert manifest is not None
    assert {entry["table"]: entry["rows"] for entry in manifest[0]} == {
        table: len(ids) for table, ids in removed.items()
    }
    assert cli("archive", "verify", archive_db_url).exit_code == 0


def test_verify_passes_then_names_a_flipped_byte_a_truncated_file_a_missing_one(
    cli: Cli, conn: Conn, tmp_path: Path
) -> None:
    load_sample(conn)
    archive = tmp_path / "archive"
    assert cli("run", "--archive", str(archive)).exit_code == 0
    run_dir = archive / f"run-{last_run_id(conn)}"

    passed = cli("archive", "verify", str(archive))
    assert passed.exit_code == 0, passed.stderr
    assert passed.stdout.endswith(f"{archive}: 1 run(s), ok\n")

    flipped = run_dir / "temp_uploads.jsonl.gz"
    data = bytearray(flipped.read_bytes())
    data[len(data) // 2] ^= 0x01
    flipped.write_bytes(bytes(data))
    truncated = run_dir / "raw_import_items.jsonl.gz"
    truncated.write_bytes(truncated.read_bytes()[:-20])
    (run_dir / "import_jobs.jsonl.gz").unlink()

    failed = cli("archive", "verify", str(archive))

    assert failed.exit_code == 1
    problems = failed.stderr.splitlines()
    run = f"maintctl: error: run {last_run_id(conn)}"
    assert f"{run}: temp_uploads.jsonl.gz: wrong checksum (sha256 differs from the manifest)" in (
        problems
    )
    assert f"{run}: raw_import_items.jsonl.gz: truncated compressed stream" in problems
    assert f"{run}: import_jobs.jsonl.gz: missing" in problems
    assert failed.stdout.endswith(f"{archive}: 1 run(s), {len(problems)} problem(s)\n")


def test_verify_names_a_run_without_a_manifest(cli: Cli, conn: Conn, tmp_path: Path) -> None:
    load_sample(conn)
    archive = tmp_path / "archive"
    assert cli("run", "--archive", str(archive)).exit_code == 0
    (archive / f"run-{last_run_id(conn)}" / "manifest.json").unlink()

    failed = cli("archive", "verify", str(archive), "--json")

    assert failed.exit_code == 1
    assert json.loads(failed.stdout)["problems"] == [
        f"run {last_run_id(conn)}: no manifest.json (the run was interrupted, or still runs)"
    ]


@pytest.mark.parametrize("kind", ["directory", "database"])
def test_restore_makes_the_tables_equal_to_before_the_run_and_a_second_restore_changes_nothing(
    cli: Cli, conn: Conn, tmp_path: Path, archive_db_url: str, kind: str
) -> None:
    # Types whose text a round trip through the client could change: numeric digits, floats,
    # bytes, naive timestamps, arrays.
    conn.execute(
        "alter table temp_uploads add column checksum numeric, add column ratio double precision,"
        " add column head bytea, add column seen timestamp, add column tags text[]"
    )
    load_sample(conn)
    conn.execute(
        "update temp_uploads set checksum = 12345678901234567890.123456789012345678901, "
        "ratio = 0.1, head = '\\x00ff10'::bytea, seen = '2026-01-02 03:04:05.123456', "
        "tags = array['a', 'b,c']"
    )
    before = snapshot(conn)
    archive = str(tmp_path / "archive") if kind == "directory" else archive_db_url
    assert cli("run", "--archive", archive).exit_code == 0
    run_id = str(last_run_id(conn))
    assert snapshot(conn) != before

    dry = cli("restore", "--run", run_id, "--archive", archive, "--dry-run", "--json")
    assert dry.exit_code == 0, dry.stderr
    assert json.loads(dry.stdout)["restored"] == 15 + 289 + 210 + 250
    assert snapshot(conn) != before

    first = cli("restore", "--run", run_id, "--archive", archive, "--json")

    assert first.exit_code == 0, first.stderr
    assert snapshot(conn) == before
    document = json.loads(first.stdout)
    assert {t["table"]: (t["restored"], t["present"]) for t in document["tables"]} == {
        "import_runs": (15, 0),
        "temp_uploads": (289, 0),
        "import_jobs": (210, 0),
        "raw_import_items": (250, 0),
    }
    assert (document["filesKept"], document["filesHandedOver"]) == (289, 0)
    assert count(conn, "select count(*) from maintenance.storage_outbox") == 0

    second = cli("restore", "--run", run_id, "--archive", archive, "--json")

    assert second.exit_code == 0, second.stderr
    assert snapshot(conn) == before
    assert {
        t["table"]: (t["restored"], t["present"]) for t in json.loads(second.stdout)["tables"]
    } == {
        "import_runs": (0, 15),
        "temp_uploads": (0, 289),
        "import_jobs": (0, 210),
        "raw_import_items": (0, 250),
    }


def test_restore_refuses_a_table_whose_columns_changed_and_changes_nothing(
    cli: Cli, conn: Conn, tmp_path: Path
) -> None:
    load_sample(conn)
    archive = str(tmp_path / "archive")
    assert cli("run", "--archive", archive).exit_code == 0
    conn.execute("alter table raw_import_items alter column error type varchar(200)")
    before = snapshot(conn)

    refused = cli("restore", "--run", str(last_run_id(conn)), "--archive", archive)

    assert refused.exit_code == 78
    assert refused.stderr == (
        f"maintctl: error: cannot restore run {last_run_id(conn)}: the columns of "
        "raw_import_items no longer match its archive (error was text, is character "
        "varying(200)); nothing was restored\n"
    )
    assert snapshot(conn) == before


def test_restored_uploads_whose_paths_were_drained_are_counted_as_handed_over(
    cli: Cli, conn: Conn, tmp_path: Path
) -> None:
    load_sample(conn)
    archive = str(tmp_path / "archive")
    assert cli("purge-temp", "--archive", archive).exit_code == 0
    assert cli("drain-outbox", str(tmp_path / "to-clean.jsonl")).exit_code == 0

    restored = cli("restore", "--run", str(last_run_id(conn)), "--archive", archive, "--json")

    assert restored.exit_code == 0, restored.stderr
    document = json.loads(restored.stdout)
    assert (document["filesKept"], document["filesHandedOver"]) == (0, 289)
    text = cli("restore", "--run", str(last_run_id(conn)), "--archive", archive)
    assert "temp_uploads: put back 0 of 289 deleted rows; 289 were there again" in text.stdout


def test_an_unwritable_archive_stops_the_task_before_it_deletes_anything(
    cli: Cli, conn: Conn, tmp_path: Path
) -> None:
    load_sample(conn)
    before = snapshot(conn)
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    target = blocker / "archive"

    result = cli("purge-temp", "--archive", str(target))

    assert result.exit_code == 1
    assert result.stderr == (
        f"maintctl: error: cannot write the archive {target}: Not a directory; nothing was "
        "removed that is not archived\n"
    )
    assert snapshot(conn) == before


def test_an_archive_that_fails_mid_run_rolls_its_batch_back(
    cli: Cli, conn: Conn, archive_db_url: str
) -> None:
    assert cli("run", "--archive", archive_db_url).exit_code == 0  # creates the archive's tables
    with psycopg.connect(archive_db_url, autocommit=True) as archive:
        archive.execute(
            "create function full_disk() returns trigger language plpgsql as "
            "$$ begin raise exception 'could not extend file: No space left on device'; end $$"
        )
        archive.execute(
            "create trigger full_disk before insert on maintctl_archive.batches "
            "for each row execute function full_disk()"
        )
    load_sample(conn)
    before = snapshot(conn)

    result = cli("purge-temp", "--archive", archive_db_url, "--quiet")
    assert result.exit_code == 1
    failed_task = result.stderr.splitlines()[0]
    assert re.fullmatch(
        # The WAL is the server's, which other sessions may write meanwhile.
        r"maintctl: error: temp: failed, 0 rows in 0 batch\(es\), \d+ ms"
        r"(, [\d.]+ [kMG]?B of WAL)?: cannot write the "
        r"archive database postgres@\S+:\d+/maintctl_archive_\w+: could not extend "
        r"file: No space left on device; nothing was removed that is not archived",
        failed_task,
    ), failed_task
    assert snapshot(conn) == before


def test_the_archive_database_password_is_never_printed(cli: Cli, conn: Conn) -> None:
    load_sample(conn)
    before = snapshot(conn)

    url = "postgresql://keeper:s3cret-Pa55@127.0.0.1:1/archive"

    from_env = cli("run", env={"MAINTCTL_CONNECT_TIMEOUT": "1s", "MAINTCTL_ARCHIVE": url})
    from_flag = cli("run", "--archive", url, env={"MAINTCTL_CONNECT_TIMEOUT": "1s"})

    for result in (from_env, from_flag):
        assert result.exit_code == 1
        assert "s3cret-Pa55" not in result.stdout + result.stderr
    assert from_env.stderr == (
        "maintctl: error: cannot reach the archive database keeper@127.0.0.1:1/archive: "
        "cannot connect to keeper@127.0.0.1:1/archive: Connection refused\n"
    )
    assert from_flag.stderr == (
        "maintctl: warning: the password in --archive is visible to other users (ps); use "
        "MAINTCTL_ARCHIVE or ~/.pgpass instead\n" + from_env.stderr
    )
    assert snapshot(conn) == before


def test_prune_removes_the_runs_older_than_the_retention_and_run_applies_it(
    cli: Cli, conn: Conn, tmp_path: Path
) -> None:
    load_sample(conn)
    archive = tmp_path / "archive"
    assert cli("run", "--archive", str(archive)).exit_code == 0
    old = last_run_id(conn)
    manifest = archive / f"run-{old}" / "manifest.json"
    document = json.loads(manifest.read_text())
    document["finishedAt"] = "2026-01-01T03:00:00.000Z"
    manifest.write_text(json.dumps(document))
    assert cli("run", "--archive", str(archive)).exit_code == 0
    new = last_run_id(conn)

    kept = cli("archive", "prune", str(archive), "--older-than", "3650d", "--json")
    assert json.loads(kept.stdout) == {"pruned": []}

    result = cli("run", "--archive", str(archive), env={"MAINTCTL_ARCHIVE_RETENTION": "30d"})

    assert result.exit_code == 0, result.stderr
    assert f"archive: pruned run(s) {old}" in result.stderr
    assert sorted(path.name for path in archive.iterdir()) == [
        f"run-{new}",
        f"run-{last_run_id(conn)}",
    ]


def archived_ids(archive: Path) -> set[int]:
    ids: set[int] = set()
    for path in archive.glob("run-*/temp_uploads.jsonl.gz"):
        _, rows = archived_lines(path)
        ids.update(row["id"] for row in rows)
    return ids


@pytest.mark.parametrize(
    ("batches_done", "then_wait"),
    [(0, 0.0), (1, 0.05), (1, 0.19), (2, 0.21), (3, 0.3), (4, 0.0)],
)
def test_sigkill_of_a_real_purge_never_loses_a_row_and_restore_brings_all_back(
    cli: Cli, db_url: str, conn: Conn, tmp_path: Path, batches_done: int, then_wait: float
) -> None:
    conn.execute(
        "insert into temp_uploads (created_at, storage_path, size_bytes) "
        "select now() - interval '2 days', 'f' || n, n from generate_series(1, 12) n"
    )
    before = snapshot(conn)
    everything = {row[0] for row in before["temp_uploads"]}
    slow_down_deletes(conn, 0.1)  # a batch of two spends 0.2 s in its DELETE
    archive = tmp_path / "archive"
    process = subprocess.Popen(
        [*maintctl_command(), "purge-temp", "--batch-size", "2", "--archive", str(archive)],
        env=cron_environment(db_url),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 30
    while count(conn, "select count(*) from temp_uploads") > 12 - 2 * batches_done:
        assert time.monotonic() < deadline, "the purge never got going"
        time.sleep(0.01)
    time.sleep(then_wait)
    process.send_signal(signal.SIGKILL)
    process.wait(timeout=10)
    time.sleep(0.3)  # the killed session's backend rolls its batch back

    left = {row[0] for row in snapshot(conn)["temp_uploads"]}
    assert left | archived_ids(archive) == everything
    conn.execute("drop trigger slow on temp_uploads")
    if count(conn, "select count(*) from maintenance.runs") == 0:  # killed before it began
        assert left == everything
        return

    restored = cli("restore", "--run", str(last_run_id(conn)), "--archive", str(archive))

    assert restored.exit_code == 0, restored.stderr
    assert snapshot(conn) == before


def test_a_restore_while_maintenance_runs_warns_that_the_next_run_removes_the_rows_again(
    cli: Cli, conn: Conn, tmp_path: Path
) -> None:
    load_sample(conn)
    archive = str(tmp_path / "archive")
    assert cli("purge-temp", "--archive", archive).exit_code == 0
    run_id = str(last_run_id(conn))
    assert cli("pause", "--reason", "restoring run " + run_id).exit_code == 0
    quiet = cli("restore", "--run", run_id, "--archive", archive)
    assert quiet.exit_code == 0
    assert quiet.stderr == ""
    assert cli("resume").exit_code == 0
    assert cli("purge-temp", "--archive", archive).exit_code == 0

    warned = cli("restore", "--run", str(last_run_id(conn)), "--archive", archive)

    assert warned.exit_code == 0
    assert warned.stderr == (
        "maintctl: warning: maintenance is not paused: the next run removes these rows again "
        "unless their rule or threshold changed (maintctl pause, until it has)\n"
    )


def test_restore_refuses_a_run_the_archive_does_not_hold_and_needs_an_archive(
    cli: Cli, tmp_path: Path
) -> None:
    archive = tmp_path / "archive"
    archive.mkdir()

    unknown = cli("restore", "--run", "99", "--archive", str(archive))
    unnamed = cli("restore", "--run", "99")

    assert unknown.exit_code == 1
    assert unknown.stderr == f"maintctl: error: run 99 is not in the archive {archive}\n"
    assert unnamed.exit_code == 2
    assert (
        unnamed.stderr == "maintctl: error: name the archive: DEST, --archive or MAINTCTL_ARCHIVE\n"
    )


def test_a_dry_run_writes_no_archive(cli: Cli, conn: Conn, tmp_path: Path) -> None:
    load_sample(conn)
    archive = tmp_path / "archive"

    result = cli("run", "--dry-run", "--archive", str(archive))

    assert result.exit_code == 0, result.stderr
    assert not archive.exists()


def test_verify_of_a_database_archive_names_a_damaged_batch_and_a_run_without_manifest(
    cli: Cli, conn: Conn, archive_db_url: str
) -> None:
    load_sample(conn)
    assert cli("run", "--archive", archive_db_url).exit_code == 0
    first = last_run_id(conn)
    load_sample(conn)
    assert cli("run", "--archive", archive_db_url).exit_code == 0
    second = last_run_id(conn)
    assert cli("archive", "verify", archive_db_url).exit_code == 0
    with psycopg.connect(archive_db_url, autocommit=True) as archive:
        archive.execute(
            "update maintctl_archive.batches "
            "set rows = jsonb_set(rows, '{0,storage_path}', '\"elsewhere.csv\"') "
            "where id = (select min(id) from maintctl_archive.batches "
            "where run_id = %s and table_name = 'temp_uploads')",
            [first],
        )
        archive.execute(
            "update maintctl_archive.runs set manifest = null, finished_at = null "
            "where run_id = %s",
            [second],
        )

    failed = cli("archive", "verify", archive_db_url, "--json")

    assert failed.exit_code == 1
    assert json.loads(failed.stdout)["problems"] == [
        f"run {first}: temp_uploads: 1 batch(es) whose rows no longer match their checksum",
        f"run {second}: no manifest (the run was interrupted, or still runs)",
    ]
    pruned = cli("archive", "prune", archive_db_url, "--older-than", "1h", "--json")
    assert json.loads(pruned.stdout) == {"pruned": []}


def test_a_run_stopped_by_sigterm_leaves_a_manifest_and_restore_brings_everything_back(
    cli: Cli, db_url: str, conn: Conn, tmp_path: Path
) -> None:
    conn.execute(
        "insert into temp_uploads (created_at, storage_path, size_bytes) "
        "select now() - interval '2 days', 'f' || n, n from generate_series(1, 20) n"
    )
    before = snapshot(conn)
    slow_down_deletes(conn, 0.1)
    archive = tmp_path / "archive"
    process = subprocess.Popen(
        [*maintctl_command(), "purge-temp", "--batch-size", "2", "--archive", str(archive)],
        env=cron_environment(db_url),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 30
    while count(conn, "select count(*) from temp_uploads") > 16:
        assert time.monotonic() < deadline, "the purge never got going"
        time.sleep(0.01)
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=30)
    assert process.returncode == 143, stderr
    conn.execute("drop trigger slow on temp_uploads")

    verified = cli("archive", "verify", str(archive))
    restored = cli("restore", "--run", str(last_run_id(conn)), "--archive", str(archive))

    assert verified.exit_code == 0, verified.stderr
    assert restored.exit_code == 0, restored.stderr
    assert snapshot(conn) == before


def test_restore_of_rows_whose_parent_is_gone_fails_whole_and_says_why(
    cli: Cli, conn: Conn, tmp_path: Path
) -> None:
    load_sample(conn)
    archive = str(tmp_path / "archive")
    assert cli("purge-raw", "--archive", archive).exit_code == 0
    run_dir = tmp_path / "archive" / f"run-{last_run_id(conn)}"
    _, rows = archived_lines(run_dir / "raw_import_items.jsonl.gz")
    conn.execute("delete from import_runs where id = %s", [rows[0]["run_id"]])
    before = snapshot(conn)

    result = cli("restore", "--run", str(last_run_id(conn)), "--archive", archive)

    assert result.exit_code == 1
    assert result.stderr.startswith(f"maintctl: error: cannot restore run {last_run_id(conn)}: ")
    assert "violates foreign key constraint" in result.stderr
    assert result.stderr.endswith("; nothing was restored\n")
    assert snapshot(conn) == before


def _file_size_limit(limit: int) -> Callable[[], None]:
    def apply() -> None:
        # Past the limit a write fails with EFBIG, as on a full disk (and SIGXFSZ is ignored,
        # as it is by anything that handles the error).
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    return apply


@pytest.mark.parametrize("limit", [4000, 260])  # after some batches; at the very first
def test_an_archive_that_fills_up_mid_run_fails_the_task_and_keeps_whole_batches(
    cli: Cli, db_url: str, conn: Conn, tmp_path: Path, limit: int
) -> None:
    conn.execute(
        "insert into temp_uploads (created_at, storage_path, size_bytes) "
        "select now() - interval '2 days', 'uploads/2026/11/' || n || '.csv', n "
        "from generate_series(1, 200) n"
    )
    before = snapshot(conn)
    everything = {row[0] for row in before["temp_uploads"]}
    archive = tmp_path / "archive"

    completed = subprocess.run(
        [*maintctl_command(), "purge-temp", "--batch-size", "5", "--archive", str(archive)],
        # No bytecode caches: the size limit would cut them short for every later import.
        env={**cron_environment(db_url), "PYTHONDONTWRITEBYTECODE": "1"},
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
        preexec_fn=_file_size_limit(limit),
    )

    assert completed.returncode == 1, completed.stderr
    assert "cannot write the archive" in completed.stderr
    assert "File too large" in completed.stderr
    left = {row[0] for row in snapshot(conn)["temp_uploads"]}
    table_file = archive / f"run-{last_run_id(conn)}" / "temp_uploads.jsonl.gz"
    if limit > 1000:
        assert 0 < len(left) < 200
        _, rows = archived_lines(table_file)
        assert left | {row["id"] for row in rows} == everything
    else:  # the first batch could not be archived: nothing went, no file is left
        assert left == everything
        assert not table_file.exists()
    assert cli("archive", "verify", str(archive)).exit_code == 0
    restored = cli("restore", "--run", str(last_run_id(conn)), "--archive", str(archive))
    assert restored.exit_code == 0, restored.stderr
    assert snapshot(conn) == before


def test_the_archive_database_commits_synchronously_whatever_its_default(
    cli: Cli, conn: Conn, archive_db_url: str
) -> None:
    assert cli("run", "--archive", archive_db_url).exit_code == 0  # creates the archive's tables
    with psycopg.connect(archive_db_url, autocommit=True) as archive:
        name = psycopg.sql.Identifier(str(conninfo_to_dict(archive_db_url)["dbname"]))
        archive.execute(
            psycopg.sql.SQL("alter database {} set synchronous_commit = off").format(name)
        )
        archive.execute("create table seen (setting text)")
        archive.execute(
            "create function note_commit_mode() returns trigger language plpgsql as $$ begin "
            "insert into seen values (current_setting('synchronous_commit')); return new; end $$"
        )
        archive.execute(
            "create trigger note_commit_mode after insert on maintctl_archive.batches "
            "for each row execute function note_commit_mode()"
        )
    load_sample(conn)

    assert cli("purge-temp", "--archive", archive_db_url).exit_code == 0

    with psycopg.connect(archive_db_url) as archive:
        settings = {row[0] for row in archive.execute("select setting from seen")}
    assert settings == {"on"}


def imports_snapshot(conn: Conn) -> dict[str, list[Any]]:
    """Every row of the renamed schema's tables (tests/test_policy_file.py), whole."""
    tables = ("batches", "batch_rows", "uploads", "tasks")
    return {
        table: conn.execute(
            sql.SQL("select * from {} order by 1").format(sql.Identifier("imports", table))
        ).fetchall()
        for table in tables
    }


def test_a_renamed_schema_is_archived_under_the_policy_s_names_and_restored_by_its_keys(
    request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    # Every rule archives what it removes whatever the policy calls its table and columns, and
    # restore finds them (and the outbox's table, the keys) through the rules and the policy.
    # (The fixtures of tests/test_policy_file.py, by name.)
    policy_cli: Cli = request.getfixturevalue("renamed")
    url: str = request.getfixturevalue("renamed_url")
    assert policy_cli("migrate").exit_code == 0
    archive = tmp_path / "archive"
    with psycopg.connect(url, autocommit=True) as conn:
        load_both_sides(conn)
        before = imports_snapshot(conn)

        result = policy_cli("run", "--archive", str(archive), "--json")

        assert result.exit_code == 0, result.stderr
        assert imports_snapshot(conn) != before
        run_id = last_run_id(conn)
        manifest = json.loads((archive / f"run-{run_id}" / "manifest.json").read_text())
        held = {f["table"]: (f["action"], f["rows"]) for f in manifest["files"]}
        assert held == {
            "batches": ("mark", 2),
            "uploads": ("delete", 1),
            "tasks": ("compact", 2),
            "batch_rows": ("delete", 3),
        }
        header, rows = archived_lines(archive / f"run-{run_id}" / "tasks.jsonl.gz")
        assert {c["name"] for c in header["columns"]} == {
            "task_id",
            "input",
            "trace",
            "output",
            "compacted_at",
        }
        assert sorted(row["task_id"] for row in rows) == [1, 2]

        restored = policy_cli("restore", "--run", str(run_id), "--archive", str(archive), "--json")

        assert restored.exit_code == 0, restored.stderr
        assert imports_snapshot(conn) == before
        assert json.loads(restored.stdout)["filesKept"] == 1
        assert count(conn, "select count(*) from maintenance.storage_outbox") == 0


def test_a_purge_rule_s_deleted_rows_are_archived_and_restored(
    request: pytest.FixtureRequest, conn: Conn, tmp_path: Path
) -> None:
    purging: Cli = request.getfixturevalue("audited")  # tests/test_purge_rules.py's
    add_entries(conn)
    before = conn.execute("select * from audit_log order by id").fetchall()
    archive = tmp_path / "archive"

    purged = purging("purge", "audit-log", "--archive", str(archive), "--batch-size", "1")

    assert purged.exit_code == 0, purged.stderr
    run_id = last_run_id(conn)
    _, rows = archived_lines(archive / f"run-{run_id}" / "audit_log.jsonl.gz")
    assert sorted((row["id"], row["level"]) for row in rows) == [(1, "info"), (2, "info")]
    assert count(conn, "select count(*) from audit_log") == 2

    restored = purging("restore", "--run", str(run_id), "--archive", str(archive), "--json")

    assert restored.exit_code == 0, restored.stderr
    assert conn.execute("select * from audit_log order by id").fetchall() == before
    assert json.loads(restored.stdout)["tables"][0]["restored"] == 2


def test_restore_matches_compacted_rows_by_the_rule_s_key_not_the_primary_key(
    cli: Cli, conn: Conn, tmp_path: Path
) -> None:
    # The policy walks import_jobs by another unique key than its primary key: the archive keeps
    # that key (the rule's), and restore puts the values back by it.
    conn.execute("alter table import_jobs add column uid bigint generated always as identity")
    conn.execute("alter table import_jobs add constraint import_jobs_uid unique (uid)")
    (tmp_path / "maintctl.toml").write_text('[rules.compact]\nkey = "uid"\n')
    assert cli("migrate").exit_code == 0
    load_sample(conn)
    before = snapshot(conn)
    archive = tmp_path / "archive"
    assert cli("compact", "--archive", str(archive)).exit_code == 0
    run_id = last_run_id(conn)
    header, _ = archived_lines(archive / f"run-{run_id}" / "import_jobs.jsonl.gz")
    assert "id" not in {column["name"] for column in header["columns"]}

    restored = cli("restore", "--run", str(run_id), "--archive", str(archive), "--json")

    assert restored.exit_code == 0, restored.stderr
    assert json.loads(restored.stdout)["tables"][0]["restored"] == 210
    assert snapshot(conn) == before
