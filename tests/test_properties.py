"""Property-based tests over random rows: `run` changes exactly the rows the rules of DESIGN.md
select and nothing else; a second run changes nothing; a dry run counts what the run then does;
compaction is idempotent and its summary fits 1 KB whatever the job held.

The expected rows are computed here, in Python, from the contract's rules and the server's now()
read before the rows are written. Every generated time keeps at least five minutes from every
cutoff, so the few seconds between that now() and the run's own cannot move a row across.
One database per test; each example empties the tables and writes its rows.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from psycopg.types.json import Jsonb

from tests.conftest import Cli
from tests.data import Conn, snapshot

HOUR = 3600
STUCK_AFTER, TEMP_UPLOAD_TTL, COMPACT_AFTER, RAW_ITEMS_TTL = (
    24 * HOUR,
    24 * HOUR,
    168 * HOUR,
    720 * HOUR,
)
CUTOFFS = sorted({STUCK_AFTER, TEMP_UPLOAD_TTL, COMPACT_AFTER, RAW_ITEMS_TTL})
MARGIN = 5 * 60
RUN_STATUSES = ("pending", "processing", "completed", "failed", "cancelled")
JOB_STATUSES = ("queued", "running", "completed", "failed", "cancelled")
FINISHED_JOB = ("completed", "failed", "cancelled")

EXAMPLES = settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


def _far_from_cutoffs(age: int) -> bool:
    return all(abs(age - cutoff) >= MARGIN for cutoff in CUTOFFS)


# Ages in seconds before the server's now(): near each cutoff (either side), recent (a few in the
# future, as a worker with a fast clock writes them), and long past.
AGES = st.one_of(
    st.builds(
        lambda cutoff, side, delta: cutoff + side * delta,
        st.sampled_from(CUTOFFS),
        st.sampled_from((-1, 1)),
        st.integers(MARGIN, 3 * HOUR),
    ),
    st.integers(-HOUR, 90 * 24 * HOUR),
).filter(_far_from_cutoffs)
MAYBE_AGE = st.one_of(st.none(), AGES)


@dataclass(frozen=True)
class Run:
    status: str
    created: int
    started: int | None
    heartbeat: int | None
    finished: int | None
    items: int


@dataclass(frozen=True)
class Job:
    status: str
    created: int
    finished: int | None
    compacted: int | None
    run: int | None  # index into the runs
    payload: Any
    result: Any
    log: str | None


# PostgreSQL's text and jsonb hold any character but NUL (and lone surrogates, which UTF-8 lacks).
TEXT = st.characters(codec="utf-8", exclude_characters="\x00")
JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers(-(10**12), 10**12) | st.text(TEXT, max_size=40),
    lambda children: (
        st.lists(children, max_size=4)
        | st.dictionaries(st.text(TEXT, max_size=50), children, max_size=6)
    ),
    max_leaves=12,
)
RESULTS = st.one_of(
    st.none(),
    st.dictionaries(st.text(TEXT, max_size=50), JSON_VALUES, max_size=16),
    st.fixed_dictionaries(
        {"error": st.text(TEXT, max_size=600), "rowsImported": st.integers(0, 9)}
    ),
    JSON_VALUES,
)
LOGS = st.one_of(st.none(), st.text(TEXT, max_size=800))

RUNS = st.builds(
    Run,
    status=st.sampled_from(RUN_STATUSES),
    created=AGES,
    started=MAYBE_AGE,
    heartbeat=MAYBE_AGE,
    finished=MAYBE_AGE,
    items=st.integers(0, 3),
)
JOBS = st.builds(
    Job,
    status=st.sampled_from(JOB_STATUSES),
    created=AGES,
    finished=MAYBE_AGE,
    compacted=st.one_of(st.none(), st.none(), AGES),
    run=st.one_of(st.none(), st.integers(0, 7)),
    payload=st.one_of(st.none(), st.just({"source": "s3://bucket/file.csv"})),
    result=RESULTS,
    log=LOGS,
)


@dataclass(frozen=True)
class Rows:
    runs: list[Run]
    temp_uploads: list[int]
    jobs: list[Job]
    batch_size: int


ROWS = st.builds(
    Rows,
    runs=st.lists(RUNS, max_size=8),
    temp_uploads=st.lists(AGES, max_size=6),
    jobs=st.lists(JOBS, max_size=6),
    batch_size=st.sampled_from((1, 2, 1000)),
)


def reset(conn: Conn) -> None:
    conn.execute(
        "truncate import_runs, raw_import_items, temp_uploads, import_jobs, maintenance.runs "
        "restart identity cascade"
    )


def server_now(conn: Conn) -> datetime:
    row = conn.execute("select now()").fetchone()
    assert row is not None
    moment: datetime = row[0]
    return moment


def write(conn: Conn, rows: Rows) -> datetime:
    """Write the rows with times relative to the server's now(), which it returns."""
    now = server_now(conn)

    def at(age: int | None) -> datetime | None:
        return None if age is None else now - timedelta(seconds=age)

    run_ids = []
    for run in rows.runs:
        found = conn.execute(
            "insert into import_runs (status, created_at, started_at, heartbeat_at, finished_at) "
            "values (%s, %s, %s, %s, %s) returning id",
            [run.status, at(run.created), at(run.started), at(run.heartbeat), at(run.finished)],
        ).fetchone()
        assert found is not None
        run_ids.append(found[0])
        conn.execute(
            "insert into raw_import_items (run_id, data) "
            "select %s, jsonb_build_object('n', n) from generate_series(1, %s) n",
            [found[0], run.items],
        )
    for age in rows.temp_uploads:
        conn.execute(
            "insert into temp_uploads (created_at, storage_path) values (%s, 'tmp/x')", [at(age)]
        )
    for job in rows.jobs:
        run_id = run_ids[job.run] if job.run is not None and job.run < len(run_ids) else None
        conn.execute(
            "insert into import_jobs "
            "(run_id, status, created_at, finished_at, compacted_at, payload, result, log) "
            "values (%s, %s, %s, %s, %s, %s, %s, %s)",
            [
                run_id,
                job.status,
                at(job.created),
                at(job.finished),
                at(job.compacted),
                None if job.payload is None else Jsonb(job.payload),
                None if job.result is None else Jsonb(job.result),
                job.log,
            ],
        )
    return now


def coalesce(*ages: int | None) -> int:
    return next(age for age in ages if age is not None)


@dataclass(frozen=True)
class Expected:
    stuck: set[int]  # import_runs ids (1-based, in insertion order)
    temp: set[int]
    compact: set[int]
    raw_runs: set[int]


def expected(rows: Rows) -> Expected:
    """The rules of DESIGN.md, in the order `run` applies them."""
    stuck = {
        index + 1
        for index, run in enumerate(rows.runs)
        if run.status == "processing"
        and coalesce(run.heartbeat, run.started, run.created) > STUCK_AFTER
    }
    temp = {index + 1 for index, age in enumerate(rows.temp_uploads) if age > TEMP_UPLOAD_TTL}
    compact = {
        index + 1
        for index, job in enumerate(rows.jobs)
        if job.status in FINISHED_JOB
        and job.compacted is None
        and coalesce(job.finished, job.created) > COMPACT_AFTER
    }
    # A run the stuck task just failed ended now: its items are not old.
    raw_runs = {
        index + 1
        for index, run in enumerate(rows.runs)
        if run.status == "failed"
        and coalesce(run.finished, run.started, run.created) > RAW_ITEMS_TTL
    }
    return Expected(stuck, temp, compact, raw_runs)


def run_json(cli: Cli, *args: str) -> dict[str, Any]:
    result = cli("run", "--json", *args)
    assert result.exit_code == 0, result.stderr
    document: dict[str, Any] = json.loads(result.stdout)
    assert document["errors"] == []
    return document


COUNTS = ("stuckRunsMarked", "tempUploadsPurged", "importJobsCompacted", "rawItemsPurged")


def counts(document: dict[str, Any]) -> dict[str, int]:
    return {key: document[key] for key in COUNTS}


@EXAMPLES
@given(rows=ROWS)
def test_run_changes_exactly_the_rows_the_rules_select(cli: Cli, conn: Conn, rows: Rows) -> None:
    reset(conn)
    started = write(conn, rows)
    want = expected(rows)
    before = snapshot(conn)
    batch = ("--batch-size", str(rows.batch_size))

    dry = run_json(cli, "--dry-run", *batch)
    assert snapshot(conn) == before, "a dry run changes nothing"
    real = run_json(cli, *batch)
    after = snapshot(conn)
    again = run_json(cli, *batch)

    raw_items = {row[0] for row in before["raw_import_items"] if row[1] in want.raw_runs}
    assert counts(real) == {
        "stuckRunsMarked": len(want.stuck),
        "tempUploadsPurged": len(want.temp),
        "importJobsCompacted": len(want.compact),
        "rawItemsPurged": len(raw_items),
    }
    assert counts(dry) == counts(real)
    assert counts(again) == dict.fromkeys(COUNTS, 0)
    assert snapshot(conn) == after, "a second run changes nothing"

    # import_runs: none deleted; the stuck ones failed now with a timeout message, no other change.
    assert [row[0] for row in after["import_runs"]] == [row[0] for row in before["import_runs"]]
    for old, new in zip(before["import_runs"], after["import_runs"], strict=True):
        if old[0] in want.stuck:
            assert new[:5] == (old[0], "failed", *old[2:5])
            assert new[5] >= started
            assert new[6].startswith("Timed out: no sign of life for more than 1d")
        else:
            assert new == old
    # temp_uploads and raw_import_items: exactly the selected rows are gone.
    assert after["temp_uploads"] == [
        row for row in before["temp_uploads"] if row[0] not in want.temp
    ]
    assert after["raw_import_items"] == [
        row for row in before["raw_import_items"] if row[0] not in raw_items
    ]
    # import_jobs: the selected ones lost payload and log, got a summary and compacted_at.
    for old, new in zip(before["import_jobs"], after["import_jobs"], strict=True):
        if old[0] in want.compact:
            assert new[:5] == old[:5]
            assert (new[5], new[7]) == (None, None)
            assert new[6] is None or new[6]["compacted"] is True
            assert new[8] is not None
            assert new[8] >= started
        else:
            assert new == old


@EXAMPLES
@given(
    jobs=st.lists(
        st.tuples(st.sampled_from(FINISHED_JOB), RESULTS, LOGS, st.one_of(st.none(), JSON_VALUES)),
        min_size=1,
        max_size=4,
    )
)
def test_compaction_is_idempotent_and_its_summary_fits_1kb(
    cli: Cli, conn: Conn, jobs: list[tuple[str, Any, str | None, Any]]
) -> None:
    reset(conn)
    for status, result, log, payload in jobs:
        conn.execute(
            "insert into import_jobs (status, created_at, finished_at, payload, result, log) "
            "values (%s, now() - interval '10 days', now() - interval '9 days', %s, %s, %s)",
            [
                status,
                None if payload is None else Jsonb(payload),
                None if result is None else Jsonb(result),
                log,
            ],
        )

    first = cli("compact", "--json")
    compacted = snapshot(conn)["import_jobs"]
    second = cli("compact", "--json")

    assert json.loads(first.stdout)["importJobsCompacted"] == len(jobs)
    assert json.loads(second.stdout)["importJobsCompacted"] == 0
    assert snapshot(conn)["import_jobs"] == compacted
    sizes = conn.execute(
        "select octet_length(result::text) from import_jobs where result is not null"
    ).fetchall()
    assert all(size <= 1024 for (size,) in sizes), sizes
    for row in compacted:
        assert (row[5], row[7]) == (None, None)
        assert row[6] is None or row[6]["compacted"] is True
