"""A directory archive: per run, `run-N/` holds one gzip-compressed JSON-lines file per table and,
written last, `manifest.json` (rows, bytes and sha256 of each file).

Each batch is one gzip member appended to its table's file and fsynced before `write` returns
(the file's first member starts with a header line naming the table, the action and the columns);
a new file's or run's name is made durable by syncing its directory. A file cut short by a kill
therefore reads as its whole batches followed by one truncated member, whose batch never
committed. gzip, from the standard library, rather than zstandard: no new dependency to pin and
ship, any machine can read the files (`zcat`), and at level 1 it costs less time than the fsync
that follows each batch (make bench shows the archive's cost).
"""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import json
import os
import shutil
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import IO, Any

from maintctl.archive.format import (
    FORMAT,
    ArchivedRun,
    ArchivedTable,
    ArchiveError,
    Column,
    RunSummary,
    VerifyReport,
)
from maintctl.durable import fsync_file, sync_directory
from maintctl.durations import iso_timestamp

MANIFEST = "manifest.json"
SUFFIX = ".jsonl.gz"
RUN_PREFIX = "run-"
COMPRESS_LEVEL = 1
READ_CHUNK = 1 << 20


class DamagedFile(Exception):
    """A file of the archive that does not read back as whole gzip members of JSON lines."""


def _encode(record: Any) -> str:
    return json.dumps(record, ensure_ascii=False, separators=(",", ":")) + "\n"


def _reason(exc: OSError) -> str:
    return exc.strerror or str(exc)


@dataclass
class _TableFile:
    path: Path
    out: IO[bytes]
    table: str
    action: str
    columns: list[Column]
    rows: int = 0
    size: int = 0
    digest: Any = field(default_factory=hashlib.sha256)

    def append(self, data: bytes) -> None:
        # Unbuffered: a write that stops short (a full disk) is seen here, not at a later flush.
        try:
            view = memoryview(data)
            while view:
                view = view[self.out.write(view) or 0 :]
            fsync_file(self.out)
        except OSError:
            # A batch half written rolls back: its bytes go too, so that the file stays whole
            # batches and matches what the manifest will say.
            with contextlib.suppress(OSError):
                os.ftruncate(self.out.fileno(), self.size)
                self.out.seek(self.size)
            raise
        self.digest.update(data)
        self.size += len(data)

    def entry(self) -> dict[str, Any]:
        return {
            "file": self.path.name,
            "table": self.table,
            "action": self.action,
            "columns": [column.as_record() for column in self.columns],
            "rows": self.rows,
            "bytes": self.size,
            "sha256": self.digest.hexdigest(),
        }


class DirectoryRunWriter:
    """The archive of one run in `run-N/`."""

    def __init__(self, archive: DirectoryArchive, run_id: int, source: dict[str, Any]) -> None:
        self.archive = archive
        self.run_id = run_id
        self.source = source
        self.directory = archive.root / f"{RUN_PREFIX}{run_id}"
        self.files: dict[str, _TableFile] = {}
        try:
            self.directory.mkdir()
            sync_directory(archive.root)
        except FileExistsError:
            raise ArchiveError(
                f"the archive {archive.describe()} already holds a run {run_id} "
                "(is it another database's archive?)"
            ) from None
        except OSError as exc:
            raise archive.cannot_write(exc) from None

    def write(self, table: str, action: str, columns: list[Column], rows: list[str]) -> None:
        try:
            found = self.files.get(table)
            lines = []
            if found is None:
                path = self.directory / f"{table}{SUFFIX}"
                found = _TableFile(path, path.open("xb", buffering=0), table, action, columns)
                self.files[table] = found
                sync_directory(self.directory)
                header = {
                    "format": FORMAT,
                    "runId": self.run_id,
                    "table": table,
                    "action": action,
                    "columns": [column.as_record() for column in columns],
                }
                lines.append(_encode(header))
            lines.extend(f"{row}\n" for row in rows)
            found.append(gzip.compress("".join(lines).encode(), COMPRESS_LEVEL, mtime=0))
            found.rows += len(rows)
        except OSError as exc:
            raise self.archive.cannot_write(exc) from None

    def close(self, finished_at: datetime) -> None:
        temporary = self.directory / f".{MANIFEST}.{os.getpid()}.tmp"
        try:
            for found in self.files.values():
                found.out.close()
                if found.size == 0:  # its only batch failed to write: nothing to list
                    found.path.unlink()
            manifest = {
                "format": FORMAT,
                "runId": self.run_id,
                **self.source,
                "finishedAt": iso_timestamp(finished_at),
                "files": [found.entry() for found in self.files.values() if found.size],
            }
            with temporary.open("x", encoding="utf-8") as out:
                json.dump(manifest, out, ensure_ascii=False, indent=2)
                out.write("\n")
                fsync_file(out)
            temporary.replace(self.directory / MANIFEST)
            sync_directory(self.directory)
        except OSError as exc:
            raise self.archive.cannot_write(exc) from None
        finally:
            with contextlib.suppress(OSError):
                temporary.unlink(missing_ok=True)


def gzip_members(path: Path) -> Iterator[bytes]:
    """The uncompressed data of each whole gzip member of a file, in order. DamagedFile for a
    member cut short (after the whole ones before it) or one that does not decompress."""
    with path.open("rb") as source:
        member = zlib.decompressobj(wbits=31)
        pieces: list[bytes] = []
        pending = b""
        started = False
        while True:
            chunk = pending or source.read(READ_CHUNK)
            pending = b""
            if not chunk:
                if started:
                    raise DamagedFile("truncated compressed stream")
                return
            try:
                pieces.append(member.decompress(chunk))
            except zlib.error as exc:
                raise DamagedFile(f"corrupt compressed data ({exc})") from None
            started = True
            if member.eof:
                yield b"".join(pieces)
                pieces, pending, started = [], member.unused_data, False
                member = zlib.decompressobj(wbits=31)


def read_batches(path: Path) -> tuple[dict[str, Any], Iterator[list[str]]]:
    """A table file's header and its batches of rows (DamagedFile past the last whole batch)."""
    members = gzip_members(path)
    try:
        first = next(members)
    except StopIteration:
        raise DamagedFile("empty file") from None
    header_line, _, rest = first.partition(b"\n")
    try:
        header = json.loads(header_line)
    except ValueError:
        raise DamagedFile("its first line is not the archive's header") from None

    def batches() -> Iterator[list[str]]:
        yield _rows(rest)
        for data in members:
            yield _rows(data)

    return header, batches()


def _rows(data: bytes) -> list[str]:
    try:
        return [line for line in data.decode().splitlines() if line]
    except UnicodeDecodeError:
        raise DamagedFile("a line is not UTF-8 text") from None


class DirectoryArchive:
    def __init__(self, dest: str) -> None:
        self.root = Path(dest)

    def describe(self) -> str:
        return str(self.root)

    def cannot_write(self, exc: OSError) -> ArchiveError:
        return ArchiveError(
            f"cannot write the archive {self.root}: {_reason(exc)}; nothing was removed "
            "that is not archived"
        )

    def check_writable(self) -> None:
        probe = self.root / f".maintctl-probe-{os.getpid()}"
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            with probe.open("xb") as out:
                out.write(b"probe")
                fsync_file(out)
        except OSError as exc:
            raise self.cannot_write(exc) from None
        finally:
            with contextlib.suppress(OSError):
                probe.unlink(missing_ok=True)

    def close(self) -> None:
        """Nothing stays open between the batches' writes but the run's files (closed by the
        run's writer)."""

    def open_run(self, run_id: int, source: dict[str, Any]) -> DirectoryRunWriter:
        return DirectoryRunWriter(self, run_id, source)

    def _run_dirs(self) -> list[tuple[int, Path]]:
        if not self.root.is_dir():
            raise ArchiveError(f"the archive {self.root} is not a directory")
        found = []
        for path in self.root.iterdir():
            number = path.name.removeprefix(RUN_PREFIX)
            if path.is_dir() and path.name.startswith(RUN_PREFIX) and number.isdigit():
                found.append((int(number), path))
        return sorted(found)

    def _manifest(self, directory: Path) -> dict[str, Any] | None:
        try:
            document: dict[str, Any] = json.loads((directory / MANIFEST).read_text("utf-8"))
        except FileNotFoundError:
            return None
        return document

    def read_run(self, run_id: int) -> ArchivedRun:
        directory = self.root / f"{RUN_PREFIX}{run_id}"
        if not directory.is_dir():
            raise ArchiveError(f"run {run_id} is not in the archive {self.root}")
        manifest = self._manifest(directory)
        paths = (
            [directory / entry["file"] for entry in manifest["files"]]
            if manifest is not None
            else sorted(directory.glob(f"*{SUFFIX}"))
        )
        tables = []
        for path in paths:
            try:
                header, batches = read_batches(path)
            except (DamagedFile, OSError) as exc:
                raise ArchiveError(f"run {run_id}: {path.name}: {exc}") from None
            tables.append(
                ArchivedTable(
                    table=header["table"],
                    action=header["action"],
                    columns=[Column.from_record(column) for column in header["columns"]],
                    batches=_whole_batches(batches, manifest is not None, run_id, path.name),
                )
            )
        return ArchivedRun(run_id, manifest is not None, tables)

    def verify(self) -> VerifyReport:
        runs, problems = [], []
        for run_id, directory in self._run_dirs():
            manifest = None
            try:
                manifest = self._manifest(directory)
            except ValueError:
                problems.append(f"run {run_id}: {MANIFEST} is not valid JSON")
            if manifest is None:
                if not any(p.startswith(f"run {run_id}:") for p in problems):
                    problems.append(
                        f"run {run_id}: no {MANIFEST} (the run was interrupted, or still runs)"
                    )
                runs.append(RunSummary(run_id, None, {}))
                continue
            rows: dict[str, int] = {}
            listed = set()
            for entry in manifest["files"]:
                listed.add(entry["file"])
                rows[entry["table"]] = entry["rows"]
                problems.extend(
                    f"run {run_id}: {entry['file']}: {problem}"
                    for problem in _check_file(directory / entry["file"], entry)
                )
            problems.extend(
                f"run {run_id}: {path.name} is not in the manifest"
                for path in sorted(directory.glob(f"*{SUFFIX}"))
                if path.name not in listed
            )
            finished = datetime.fromisoformat(manifest["finishedAt"].replace("Z", "+00:00"))
            runs.append(RunSummary(run_id, finished, rows))
        return VerifyReport(str(self.root), runs, problems)

    def prune(self, older_than: timedelta) -> list[int]:
        limit = datetime.now(UTC) - older_than
        pruned = []
        for run_id, directory in self._run_dirs():
            try:
                manifest = self._manifest(directory)
                stamp = manifest["finishedAt"].replace("Z", "+00:00") if manifest else None
            except ValueError:
                stamp = None
            when = (
                datetime.fromisoformat(stamp)
                if stamp
                else datetime.fromtimestamp(directory.stat().st_mtime, UTC)
            )
            if when < limit:
                shutil.rmtree(directory)
                pruned.append(run_id)
        if pruned:
            sync_directory(self.root)
        return pruned


def _whole_batches(
    batches: Iterator[list[str]], complete: bool, run_id: int, name: str
) -> Iterator[list[str]]:
    """A run with a manifest must read whole; one without (interrupted) ends at its last whole
    batch: a batch cut short was being written when the run died, so it never committed."""
    try:
        yield from batches
    except DamagedFile as exc:
        if complete:
            raise ArchiveError(
                f"run {run_id}: {name}: {exc} (run maintctl archive verify)"
            ) from None


def _check_file(path: Path, entry: dict[str, Any]) -> list[str]:
    """What is wrong with one file of a manifest: each problem a phrase."""
    if not path.is_file():
        return ["missing"]
    problems = []
    size = path.stat().st_size
    if size != entry["bytes"]:
        problems.append(f"{size} bytes, the manifest says {entry['bytes']}")
    digest = hashlib.sha256()
    with path.open("rb") as source:
        while chunk := source.read(READ_CHUNK):
            digest.update(chunk)
    if digest.hexdigest() != entry["sha256"]:
        problems.append("wrong checksum (sha256 differs from the manifest)")
    rows = 0
    try:
        _, batches = read_batches(path)
        rows = sum(len(batch) for batch in batches)
    except DamagedFile as exc:
        problems.append(str(exc))
    else:
        if rows != entry["rows"]:
            problems.append(f"{rows} rows, the manifest says {entry['rows']}")
    return problems
