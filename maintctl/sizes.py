"""Sizes and rates as operators write them (`256MB`, `1GB`, `32MB/s`), with PostgreSQL's units:
kB, MB, GB, TB are powers of 1024, as in postgresql.conf."""

from __future__ import annotations

import re

_UNITS = {"b": 1, "kb": 1024, "mb": 1024**2, "gb": 1024**3, "tb": 1024**4}
_SIZE = re.compile(r"(\d+(?:\.\d+)?)\s*(b|kb|mb|gb|tb)?")
# Far beyond any WAL volume, and inside PostgreSQL's bigint.
MAX_SIZE = 1024**5


def looks_like_size(text: str) -> bool:
    """Whether the text names a size unit (1MB, 512kB, 100B) rather than a duration (90s, 1m)."""
    match = _SIZE.fullmatch(text.strip().lower())
    return match is not None and match.group(2) is not None


def parse_size(text: str) -> int:
    """`256MB` -> bytes; a bare number is bytes. ValueError with a reason for anything else."""
    match = _SIZE.fullmatch(text.strip().lower())
    if match is None:
        raise ValueError(f"{text!r} is not a size (use e.g. 512kB, 256MB or 1GB)")
    amount = float(match.group(1)) * _UNITS[match.group(2) or "b"]
    if amount < 1:
        raise ValueError(f"{text!r} is zero; use off to turn the limit off")
    if amount > MAX_SIZE:
        raise ValueError(f"{text!r} is larger than 1PB")
    return int(amount)


def parse_rate(text: str) -> int:
    """`32MB/s` -> bytes per second."""
    cleaned = text.strip().lower()
    if not cleaned.endswith("/s"):
        raise ValueError(f"{text!r} is not a rate (use e.g. 32MB/s)")
    return parse_size(cleaned.removesuffix("/s"))


def format_size(size: int | float) -> str:
    """Bytes as a person reads them: 950 B, 12.3 MB, 1.0 GB."""
    for unit, factor in (("TB", 1024**4), ("GB", 1024**3), ("MB", 1024**2), ("kB", 1024)):
        if abs(size) >= factor:
            return f"{size / factor:.1f} {unit}"
    return f"{int(size)} B"
