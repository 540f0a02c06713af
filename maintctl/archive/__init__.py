"""The archive: every row a purge deletes and every value a compaction replaces, written and made
durable before the batch that removes it commits (docs/archive.md).

A destination is a directory (`maintctl.archive.directory`) or another PostgreSQL database
(`maintctl.archive.database`); both keep, per maintenance run, the batches the steps returned and a
manifest. `maintctl.archive.restore` puts a run back. Nothing here knows how a step selects its
rows: a step hands over its `removed` document (table, action, rows) and this package stores it.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from maintctl.archive.format import (
    ArchivedRun,
    ArchivedTable,
    ArchiveError,
    Column,
    Destination,
    RunWriter,
)

__all__ = [
    "ArchiveError",
    "ArchivedRun",
    "ArchivedTable",
    "Column",
    "Destination",
    "RunWriter",
    "open_destination",
    "opened",
]


def open_destination(dest: str) -> Destination:
    """The archive at `dest`: a postgresql:// URL is a database, anything else a directory."""
    if dest.startswith(("postgresql://", "postgres://")):
        from maintctl.archive.database import DatabaseArchive

        return DatabaseArchive(dest)
    from maintctl.archive.directory import DirectoryArchive

    return DirectoryArchive(dest)


@contextmanager
def opened(destination: Destination | None) -> Iterator[Destination | None]:
    """The archive checked writable before anything is touched, and closed afterwards."""
    if destination is None:
        yield None
        return
    try:
        destination.check_writable()
        yield destination
    finally:
        destination.close()
