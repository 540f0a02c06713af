"""The storage outbox: the file of every temp upload maintctl deleted, recorded by the statement
that deleted the row, until a storage cleaner takes it (docs/storage-outbox.md).

`write_run_paths` reports what one run deleted; `drain` is the hand-over: it makes a file of the
whole outbox durable first and only then clears the entries it wrote, so a crash at any point can
hand a path over twice but never lose one.
"""

from __future__ import annotations

import json
import os
import re
import stat
import sys
from collections.abc import Iterator
from contextlib import suppress
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import IO, Any

from maintctl import db, streams
from maintctl.durable import fsync_file, sync_directory
from maintctl.durations import iso_timestamp
from maintctl.errors import UsageError
from maintctl.settings import Settings

STDOUT = "-"


def check_target(target: str, flag: str) -> None:
    """Refuse, before any work, a file that exists (last night's may not be taken yet) or that
    cannot be created where it is asked for."""
    if target == STDOUT:
        return
    if Path(target).exists():
        raise UsageError(
            f"{flag}: {target} already exists: name a new file, e.g. with the date in it "
            "(maintctl never overwrites a list of paths that may not have been taken yet)"
        )
    directory = Path(target).parent
    if not directory.is_dir():
        raise UsageError(f"{flag}: {directory} is not a directory")
    if not os.access(directory, os.W_OK | os.X_OK):
        raise UsageError(f"{flag}: cannot create files in {directory}")


# The text of an integer key (0, 42, -7): no sign but minus, no leading zero.
INTEGER = re.compile(r"-?(0|[1-9][0-9]*)")
# Outbox rows read per statement; each holds up to a batch of files.
ROWS_PER_READ = 20


def upload_key(text: str) -> int | str:
    """An upload's key as the storage cleaner gets it: an integer key as a number, any other
    (uuid, text) as the string the outbox holds."""
    return int(text) if INTEGER.fullmatch(text) else text


@dataclass(frozen=True)
class OutboxBatch:
    """One outbox row: the files of the uploads one batch deleted."""

    id: int
    run_id: int | None
    deleted_at: datetime
    upload_ids: list[str]  # each upload's key as text (its column may be of any type)
    storage_paths: list[str]
    size_bytes: list[int | None]

    def lines(self) -> Iterator[str]:
        """One JSON line per file, for the storage cleaner."""
        deleted_at = iso_timestamp(self.deleted_at)
        for upload_id, path, size in zip(
            self.upload_ids, self.storage_paths, self.size_bytes, strict=True
        ):
            record: dict[str, Any] = {
                "path": path,
                "sizeBytes": size,
                "uploadId": upload_key(upload_id),
                "runId": self.run_id,
                "deletedAt": deleted_at,
            }
            yield json.dumps(record, ensure_ascii=False) + "\n"


@dataclass(frozen=True)
class DrainResult:
    file: str
    paths: int
    size_bytes: int


def _batches(conn: db.Connection, settings: Settings, run_id: int | None) -> Iterator[OutboxBatch]:
    """The outbox in id order (one run's rows, or all), a few rows per short statement."""
    after = 0
    while True:
        params = {"run_id": run_id, "after": after, "limit": ROWS_PER_READ}
        with db.transaction(conn, settings):
            if run_id is None:
                chunk = db.fetch_all(conn, "outbox_batches", params, OutboxBatch)
            else:
                chunk = db.fetch_all(conn, "outbox_run_batches", params, OutboxBatch)
        yield from chunk
        if len(chunk) < ROWS_PER_READ:
            return
        after = chunk[-1].id


def write_run_paths(
    conn: db.Connection, settings: Settings, run_id: int | None, target: str
) -> int:
    """Write the files deleted by one run as JSON lines to `target` ('-': stdout); how many."""
    batches = _batches(conn, settings, run_id) if run_id is not None else iter(())
    if target == STDOUT:
        return _write(batches, streams.STDOUT)  # they stay in the outbox: a lost reader loses none
    path = Path(target)
    temporary = _temporary(path)
    try:
        with temporary.open("x", encoding="utf-8") as out:
            written = _write(batches, out)
            fsync_file(out)
        try:
            os.link(temporary, path)  # unlike rename, never replaces a file that appeared meanwhile
        except FileExistsError:
            raise UsageError(
                f"--emit-paths: {target} appeared during the run; the paths stay in the "
                "storage outbox (maintctl drain-outbox)"
            ) from None
    finally:
        temporary.unlink(missing_ok=True)
    sync_directory(path.parent)
    return written


def drain(conn: db.Connection, settings: Settings, target: str) -> DrainResult:
    """Hand the outbox over: write all its files to `target`, a new file ('-': stdout), make it
    durable, then clear exactly the outbox rows written. Refuses to overwrite an existing file
    (it may be a hand-over the storage cleaner has not taken yet). A write that fails clears
    nothing."""
    if target == STDOUT:
        return _drain_to_stdout(conn, settings)
    path = Path(target)
    if path.exists():
        raise UsageError(
            f"{target} already exists: let the storage cleaner take it first "
            "(drain-outbox never overwrites a file it may have handed over)"
        )
    check_target(target, "drain-outbox")
    temporary = _temporary(path)
    written = _Written()
    try:
        with temporary.open("x", encoding="utf-8") as out:
            written.add(out, _batches(conn, settings, None))
            fsync_file(out)
        try:
            os.link(temporary, path)  # unlike rename, never replaces a file that appeared meanwhile
        except FileExistsError:
            raise UsageError(f"{target} appeared while draining; nothing was cleared") from None
    except OSError as exc:
        raise UsageError(
            f"drain-outbox: cannot write {target}: {exc.strerror or exc}; nothing was cleared"
        ) from None
    finally:
        temporary.unlink(missing_ok=True)
    sync_directory(path.parent)
    return _clear(conn, settings, written, str(path))


def _drain_to_stdout(conn: db.Connection, settings: Settings) -> DrainResult:
    """The hand-over on stdout, to a cleaner reading the pipe: the outbox is cleared only once
    every line was written (and, when stdout is a file, made durable)."""
    written = _Written()
    try:
        written.add(sys.stdout, _batches(conn, settings, None))
        sys.stdout.flush()
        with suppress(OSError, ValueError):  # a pipe or a terminal: nothing to sync
            if stat.S_ISREG(os.fstat(sys.stdout.fileno()).st_mode):
                os.fsync(sys.stdout.fileno())
    except OSError as exc:
        streams.discard(sys.stdout)
        raise UsageError(
            f"drain-outbox: cannot write to stdout: {exc.strerror or exc}; nothing was cleared"
        ) from None
    return _clear(conn, settings, written, "stdout")


@dataclass
class _Written:
    """What a hand-over wrote: the outbox rows, their files and sizes."""

    ids: list[int] = field(default_factory=list)
    paths: int = 0
    size_bytes: int = 0

    def add(self, out: IO[str], batches: Iterator[OutboxBatch]) -> None:
        for batch in batches:
            out.writelines(batch.lines())
            self.ids.append(batch.id)
            self.paths += len(batch.upload_ids)
            self.size_bytes += sum(size or 0 for size in batch.size_bytes)


def _clear(conn: db.Connection, settings: Settings, written: _Written, file: str) -> DrainResult:
    # The file is durable: only now do its rows leave the outbox, each by its id.
    ids = written.ids
    for start in range(0, len(ids), settings.batch_size):
        with db.transaction(conn, settings):
            db.execute(conn, "outbox_clear", {"ids": ids[start : start + settings.batch_size]})
    return DrainResult(file, written.paths, written.size_bytes)


def _write(batches: Iterator[OutboxBatch], out: IO[str]) -> int:
    written = 0
    for batch in batches:
        out.writelines(batch.lines())
        written += len(batch.upload_ids)
    return written


def _temporary(path: Path) -> Path:
    return path.with_name(f".{path.name}.{os.getpid()}.tmp")
