"""What every archive destination stores and answers, whatever it is made of."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import asdict, dataclass
from datetime import datetime, timedelta
from typing import Any, Protocol

from maintctl.errors import TaskError

# Bumped when a destination's layout changes in a way an older maintctl cannot read.
FORMAT = 1


class ArchiveError(TaskError):
    """The archive could not be written or read; nothing it should have held was removed."""


@dataclass(frozen=True)
class Column:
    """One column of an archived table, as the catalog described it when the rows were taken."""

    name: str
    type: str  # format_type(): "bigint", "timestamp with time zone", "character varying(20)"
    key: bool  # part of the primary key
    generated: bool  # a generated column: archived for reading, never inserted back
    identity: bool  # an identity column: put back with OVERRIDING SYSTEM VALUE

    def as_record(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_record(cls, record: dict[str, Any]) -> Column:
        return cls(**{name: record[name] for name in cls.__dataclass_fields__})


@dataclass(frozen=True)
class ArchivedTable:
    """The rows one task took from one table in one run, batch after batch."""

    table: str
    action: str  # delete: whole rows | compact, mark: the key and the values replaced
    columns: list[Column]
    batches: Iterator[list[str]]  # each batch: its rows, each the JSON text of one row


@dataclass(frozen=True)
class ArchivedRun:
    run_id: int
    complete: bool  # its manifest was written (the run ended); else only the durable batches
    tables: list[ArchivedTable]


@dataclass(frozen=True)
class RunSummary:
    """One run of an archive, as `archive verify` lists it."""

    run_id: int
    finished_at: datetime | None  # None: no manifest
    rows: dict[str, int]  # by table


@dataclass(frozen=True)
class VerifyReport:
    destination: str
    runs: list[RunSummary]
    problems: list[str]  # each one line naming the run and what is wrong

    @property
    def ok(self) -> bool:
        return not self.problems


class RunWriter(Protocol):
    def write(self, table: str, action: str, columns: list[Column], rows: list[str]) -> None:
        """Store one batch (each row the JSON text PostgreSQL made of it, so that no number
        loses a digit); on return it is durable (fsynced, or committed)."""

    def close(self, finished_at: datetime) -> None:
        """Write the run's manifest, last."""


class Destination(Protocol):
    def describe(self) -> str:
        """Where the archive is, for messages: never a password."""

    def check_writable(self) -> None:
        """Raise ArchiveError now, before any work, when no run could be archived here."""

    def open_run(self, run_id: int, source: dict[str, Any]) -> RunWriter: ...

    def read_run(self, run_id: int) -> ArchivedRun: ...

    def verify(self) -> VerifyReport: ...

    def prune(self, older_than: timedelta) -> list[int]:
        """Delete the runs that finished (or, without a manifest, started) longer ago; which."""

    def close(self) -> None:
        """Let go of what the archive holds open (a database connection)."""
