"""Files that survive a crash: flushed to disk, and their directory entry too."""

from __future__ import annotations

import os
from pathlib import Path
from typing import IO, Any


def fsync_file(out: IO[Any]) -> None:
    """The file's contents on disk, not only in Python's and the kernel's buffers."""
    out.flush()
    os.fsync(out.fileno())


def sync_directory(directory: Path) -> None:
    """A new or renamed name survives a power loss only once its directory is synced."""
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
