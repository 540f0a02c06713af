"""The archive of the run in progress: what each batch removed goes to the run's writer, inside
the batch's still-open transaction, before it commits."""

from __future__ import annotations

from datetime import datetime
from typing import TYPE_CHECKING

from maintctl import db
from maintctl.archive.format import Column, Destination, RunWriter
from maintctl.settings import Settings

if TYPE_CHECKING:
    from maintctl.tasks import Step


class RunArchive:
    def __init__(self, destination: Destination, writer: RunWriter, settings: Settings) -> None:
        self.destination = destination
        self.writer = writer
        self.settings = settings
        self._columns: dict[str, list[Column]] = {}

    @classmethod
    def start(
        cls, conn: db.Connection, settings: Settings, destination: Destination, run_id: int
    ) -> RunArchive:
        """Open run `run_id` in the archive (ArchiveError when it cannot be written)."""
        database = db.fetch_value(conn, "archive_source")
        source = {
            "database": database,
            "schema": settings.app_schema,
            "target": db.describe_target(settings),
        }
        return cls(destination, destination.open_run(run_id, source), settings)

    def record(self, conn: db.Connection, step: Step) -> None:
        """Make the rows `step` removed durable in the archive (its batch has not committed)."""
        if step.archive_table is None or step.archive_action is None or not step.archive_rows:
            return
        carried = set(step.archive_columns or ())
        columns = [c for c in self.columns(conn, step.archive_table) if c.name in carried]
        self.writer.write(
            step.archive_table, step.archive_action, columns, step.archive_rows.split("\n")
        )

    def columns(self, conn: db.Connection, table: str) -> list[Column]:
        """The table's columns as the catalog describes them, looked up once per run."""
        if table not in self._columns:
            params = {"schema": self.settings.app_schema, "table": table}
            self._columns[table] = db.fetch_all(conn, "archive_table_columns", params, Column)
        return self._columns[table]

    def close(self, finished_at: datetime) -> None:
        self.writer.close(finished_at)
