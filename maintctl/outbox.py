"""The storage outbox: the file of every temp upload maintctl deleted, recorded by the statement
that deleted the row, until a storage cleaner takes it (docs/storage-outbox.md).

`write_run_paths` reports what one run deleted; `drain` is the hand-over: it makes a file of the
whole outbox durable first and only then clears the entries it wrote, so a crash at any point can
hand a path over twice but never lose one.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import IO, Any

from maintctl import db
from maintctl.durations import iso_timestamp
from maintctl.errors import UsageError
from maintctl.settings import Settings

STDOUT = "-"


@dataclass(frozen=True)
class OutboxEntry:
    run_id: int  # 0: deleted outside a recorded run
    upload_id: int
    storage_path: str
    size_bytes: int | None
    deleted_at: datetime

    def as_line(self) -> str:
        """One JSON line for the storage cleaner."""
        record: dict[str, Any] = {
            "path": self.storage_path,
            "sizeBytes": self.size_bytes,
            "uploadId": self.upload_id,
            "runId": self.run_id or None,
            "deletedAt": iso_timestamp(self.deleted_at),
        }
        return json.dumps(record, ensure_ascii=False) + "\n"


@dataclass(frozen=True)
class DrainResult:
    file: str
    paths: int
    size_bytes: int


def _entries(
    conn: db.Connection, settings: Settings, run_id: int | None, limit: int | None = None
) -> Iterator[OutboxEntry]:
    """The outbox in id order (one run's entries, or all), read a chunk per short statement."""
    after: tuple[int, int] = (0, 0)
    handed = 0
    while limit is None or handed < limit:
        size = settings.batch_size if limit is None else min(settings.batch_size, limit - handed)
        params = {"run_id": run_id, "after_run": after[0], "after_upload": after[1], "limit": size}
        with db.transaction(conn, settings):
            if run_id is None:
                chunk = db.fetch_all(conn, "outbox_entries", params, OutboxEntry)
            else:
                chunk = db.fetch_all(conn, "outbox_run_entries", params, OutboxEntry)
        yield from chunk
        handed += len(chunk)
        if len(chunk) < size:
            return
        after = (chunk[-1].run_id, chunk[-1].upload_id)


def write_run_paths(
    conn: db.Connection, settings: Settings, run_id: int | None, target: str
) -> int:
    """Write the files deleted by one run as JSON lines to `target` ('-': stdout); how many."""
    entries = _entries(conn, settings, run_id) if run_id is not None else iter(())
    if target == STDOUT:
        return _write(entries, sys.stdout)
    path = Path(target)
    temporary = _temporary(path)
    try:
        with temporary.open("x", encoding="utf-8") as out:
            written = _write(entries, out)
            _make_durable(out)
        temporary.replace(path)
    finally:
        temporary.unlink(missing_ok=True)
    _sync_directory(path.parent)
    return written


def drain(conn: db.Connection, settings: Settings, target: str, limit: int | None) -> DrainResult:
    """Hand the outbox over: write its entries (at most `limit`) to `target`, a new file, make it
    durable, then clear exactly the entries written. Refuses to overwrite an existing file (it
    may be a hand-over the storage cleaner has not taken yet)."""
    path = Path(target)
    if path.exists():
        raise UsageError(
            f"{target} already exists: let the storage cleaner take it first "
            "(drain-outbox never overwrites a file it may have handed over)"
        )
    if not path.parent.is_dir():
        raise UsageError(f"{path.parent} is not a directory")
    temporary = _temporary(path)
    keys: list[tuple[int, int]] = []
    size_bytes = 0
    try:
        with temporary.open("x", encoding="utf-8") as out:
            for entry in _entries(conn, settings, None, limit):
                out.write(entry.as_line())
                keys.append((entry.run_id, entry.upload_id))
                size_bytes += entry.size_bytes or 0
            _make_durable(out)
        try:
            os.link(temporary, path)  # unlike rename, never replaces a file that appeared meanwhile
        except FileExistsError:
            raise UsageError(f"{target} appeared while draining; nothing was cleared") from None
    finally:
        temporary.unlink(missing_ok=True)
    _sync_directory(path.parent)
    # The file is durable: only now do the entries leave the outbox, each by its exact key.
    for start in range(0, len(keys), settings.batch_size):
        chunk = keys[start : start + settings.batch_size]
        handed = {"run_ids": [key[0] for key in chunk], "upload_ids": [key[1] for key in chunk]}
        with db.transaction(conn, settings):
            db.execute(conn, "outbox_clear", handed)
    return DrainResult(str(path), len(keys), size_bytes)


def _write(entries: Iterator[OutboxEntry], out: IO[str]) -> int:
    written = 0
    for entry in entries:
        out.write(entry.as_line())
        written += 1
    return written


def _temporary(path: Path) -> Path:
    return path.with_name(f".{path.name}.{os.getpid()}.tmp")


def _make_durable(out: IO[str]) -> None:
    out.flush()
    os.fsync(out.fileno())


def _sync_directory(directory: Path) -> None:
    """The new name itself survives a power loss only once its directory is synced."""
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
