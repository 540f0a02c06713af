"""The archive of the run in progress: what each batch removed goes to the run's writer, inside
the batch's still-open transaction, before it commits."""

from __future__ import annotations

from datetime import datetime
from typing import TYPE_CHECKING

from maintctl import db
from maintctl.archive.format import Column, Destination, RunWriter
from maintctl.settings import Settings

if TYPE_CHECKING:
    from maintctl.rules import Rule
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

    def parameter(self, rule: Rule) -> list[str]:
        """The step's p_archive: for a rule that updates, the columns whose old values it keeps
        under the policy's names; for one that deletes, none (its rows go whole)."""
        from maintctl.rules.generate import column_names, policy_of

        policy = policy_of(self.settings)
        return [name for key in rule.archived for name in column_names(rule, key, policy)]

    def table_of(self, rule: Rule) -> str:
        """The application table the rule changes, under the policy's names."""
        from maintctl.rules.generate import policy_of, table_name

        return table_name(rule, rule.table(rule.changes), policy_of(self.settings))

    def record(self, conn: db.Connection, rule: Rule, step: Step) -> None:
        """Make the rows `step` removed durable in the archive (its batch has not committed)."""
        if step.archive_action is None or not step.archive_rows:
            return
        table = self.table_of(rule)
        carried = set(step.archive_columns or ())
        columns = [c for c in self.columns(conn, table) if c.name in carried]
        self.writer.write(table, step.archive_action, columns, step.archive_rows.split("\n"))

    def columns(self, conn: db.Connection, table: str) -> list[Column]:
        """The table's columns as the catalog describes them, looked up once per run."""
        if table not in self._columns:
            params = {"schema": self.settings.app_schema, "table": table}
            self._columns[table] = db.fetch_all(conn, "archive_table_columns", params, Column)
        return self._columns[table]

    def close(self, finished_at: datetime) -> None:
        self.writer.close(finished_at)
