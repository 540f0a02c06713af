"""A database archive: another PostgreSQL database (a `postgresql://` URL) holding, in its schema
`maintctl_archive`, one row per run (`runs`, whose `manifest` is written last) and one row per
batch (`batches`: the rows as a jsonb array, their count and the sha256 of their text). Each
batch commits there before the source's batch commits. The URL's password is never printed.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import psycopg
from pydantic import SecretStr

from maintctl import db
from maintctl.archive.format import (
    ArchivedRun,
    ArchivedTable,
    ArchiveError,
    Column,
    RunSummary,
    VerifyReport,
)
from maintctl.settings import Settings

BATCHES_PER_READ = 10


@dataclass(frozen=True)
class _Run:
    run_id: int
    finished_at: datetime | None
    manifest: list[dict[str, Any]] | None


@dataclass(frozen=True)
class _Table:
    table_name: str
    action: str
    columns: list[dict[str, Any]]
    id: int


@dataclass(frozen=True)
class _Batch:
    id: int
    rows: list[str]  # each row's own text, as a directory archive keeps it


@dataclass(frozen=True)
class _Pruned:
    run_id: int


@dataclass(frozen=True)
class _Started:
    started: bool


@dataclass(frozen=True)
class _Checked:
    table_name: str
    rows: int
    batches: int
    damaged: int


class DatabaseArchive:
    def __init__(self, url: str) -> None:
        self.url = url
        self._conn: db.Connection | None = None
        # maintctl's own timeouts and connection retries, towards the archive database.
        self.settings = Settings(database_url=SecretStr(url))

    def describe(self) -> str:
        return f"database {db.describe_target(self.settings)}"

    def connection(self) -> db.Connection:
        """The archive database's connection (autocommit: each write commits at once)."""
        if self._conn is None or self._conn.closed:
            try:
                self._conn = db.connect(self.settings)
            except Exception as exc:
                message = getattr(exc, "message", type(exc).__name__)
                raise ArchiveError(
                    f"cannot reach the archive {self.describe()}: {message}"
                ) from None
        return self._conn

    def fail(self, exc: psycopg.Error) -> ArchiveError:
        return ArchiveError(
            f"cannot write the archive {self.describe()}: {db.first_line(exc)}; nothing was "
            "removed that is not archived"
        )

    def check_writable(self) -> None:
        conn = self.connection()
        try:
            with conn.transaction():
                db.execute(conn, "archive_db_schema")
        except psycopg.Error as exc:
            raise self.fail(exc) from None

    def open_run(self, run_id: int, source: dict[str, Any]) -> DatabaseRunWriter:
        return DatabaseRunWriter(self, run_id, source)

    def _ready(self) -> db.Connection:
        conn = self.connection()
        if not db.fetch_value(conn, "archive_db_ready"):
            raise ArchiveError(f"the archive {self.describe()} holds no maintctl archive")
        return conn

    def read_run(self, run_id: int) -> ArchivedRun:
        conn = self._ready()
        run = db.fetch_optional(conn, "archive_db_run", {"run_id": run_id}, _Run)
        if run is None:
            raise ArchiveError(f"run {run_id} is not in the archive {self.describe()}")
        tables = db.fetch_all(conn, "archive_db_tables", {"run_id": run_id}, _Table)
        tables.sort(key=lambda table: table.id)
        return ArchivedRun(
            run_id,
            run.finished_at is not None,
            [
                ArchivedTable(
                    table.table_name,
                    table.action,
                    [Column.from_record(column) for column in table.columns],
                    self._batches(run_id, table.table_name),
                )
                for table in tables
            ],
        )

    def _batches(self, run_id: int, table: str) -> Iterator[list[str]]:
        conn = self.connection()
        after = 0
        while True:
            params = {"run_id": run_id, "table": table, "after": after, "limit": BATCHES_PER_READ}
            chunk = db.fetch_all(conn, "archive_db_batches", params, _Batch)
            for batch in chunk:
                yield batch.rows
            if len(chunk) < BATCHES_PER_READ:
                return
            after = chunk[-1].id

    def verify(self) -> VerifyReport:
        conn = self._ready()
        runs, problems = [], []
        for run in db.fetch_all(conn, "archive_db_runs", {}, _Run):
            held = db.fetch_all(conn, "archive_db_check_batches", {"run_id": run.run_id}, _Checked)
            for table in held:
                if table.damaged:
                    problems.append(
                        f"run {run.run_id}: {table.table_name}: {table.damaged} batch(es) whose "
                        "rows no longer match their checksum"
                    )
            if run.manifest is None:
                problems.append(
                    f"run {run.run_id}: no manifest (the run was interrupted, or still runs)"
                )
                runs.append(RunSummary(run.run_id, None, {}))
                continue
            now = {table.table_name: table.rows for table in held}
            said = {entry["table"]: int(entry["rows"]) for entry in run.manifest}
            for name in sorted(set(now) | set(said)):
                if now.get(name, 0) != said.get(name, 0):
                    problems.append(
                        f"run {run.run_id}: {name}: {now.get(name, 0)} rows, the manifest "
                        f"says {said.get(name, 0)}"
                    )
            runs.append(RunSummary(run.run_id, run.finished_at, said))
        return VerifyReport(self.describe(), runs, problems)

    def prune(self, older_than: timedelta) -> list[int]:
        conn = self._ready()
        pruned = db.fetch_all(conn, "archive_db_prune", {"older_than": older_than}, _Pruned)
        return sorted(found.run_id for found in pruned)

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()


class DatabaseRunWriter:
    def __init__(self, archive: DatabaseArchive, run_id: int, source: dict[str, Any]) -> None:
        self.archive = archive
        self.run_id = run_id
        archive.check_writable()
        conn = archive.connection()
        params = {"run_id": run_id, "source": db.jsonb(source)}
        try:
            started = db.fetch_optional(conn, "archive_db_start_run", params, _Started)
        except psycopg.Error as exc:
            raise archive.fail(exc) from None
        if started is None:
            raise ArchiveError(
                f"the archive {archive.describe()} already holds a run {run_id} "
                "(is it another database's archive?)"
            )

    def write(self, table: str, action: str, columns: list[Column], rows: list[str]) -> None:
        conn = self.archive.connection()
        params = {
            "run_id": self.run_id,
            "table": table,
            "action": action,
            "columns": db.jsonb([column.as_record() for column in columns]),
            "rows": "[" + ",".join(rows) + "]",
        }
        try:
            # Committed when the block ends, under the configured lock and statement timeouts
            # (the source's batch waits for it with its transaction open).
            with db.transaction(conn, self.archive.settings):
                db.execute(conn, "archive_db_durable_commit")
                db.execute(conn, "archive_db_insert_batch", params)
        except psycopg.Error as exc:
            raise self.archive.fail(exc) from None

    def close(self, finished_at: datetime) -> None:
        conn = self.archive.connection()
        try:
            db.execute(
                conn, "archive_db_finish_run", {"run_id": self.run_id, "finished_at": finished_at}
            )
        except psycopg.Error as exc:
            raise self.archive.fail(exc) from None
