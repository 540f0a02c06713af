"""Durations as operators write them (90s, 15m, 24h, 7d, 2w, 1d12h) and timestamps as the JSON
writes them (2026-01-01T03:00:00.000Z)."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta

_UNITS = {"w": 604800, "d": 86400, "h": 3600, "m": 60, "s": 1}
_DURATION = re.compile(r"(?:(\d+)w)?(?:(\d+)d)?(?:(\d+)h)?(?:(\d+)m)?(?:(\d+)s)?")
# Far beyond any sensible threshold, and still inside what timedelta and PostgreSQL hold.
MAX_DURATION = timedelta(days=36500)


def parse_duration(text: str) -> timedelta:
    """Parse `1d12h`-style text; raise ValueError with a reason for anything else, zero included."""
    cleaned = text.strip().lower()
    match = _DURATION.fullmatch(cleaned)
    if not cleaned or match is None:
        raise ValueError(f"{text!r} is not a duration (use e.g. 90s, 15m, 24h, 7d, 2w or 1d12h)")
    seconds = sum(
        int(amount) * factor
        for amount, factor in zip(match.groups(), _UNITS.values(), strict=True)
        if amount
    )
    if seconds == 0:
        raise ValueError(f"{text!r} is zero; a duration must be positive")
    # Compared before building the timedelta, which overflows past 999999999 days.
    if seconds > MAX_DURATION.total_seconds():
        raise ValueError(f"{text!r} is longer than 100 years")
    return timedelta(seconds=seconds)


def format_duration(duration: timedelta) -> str:
    """Write a duration back in the same notation: 1d12h, 90m -> 1h30m."""
    remaining = int(duration.total_seconds())
    parts = []
    for unit, factor in _UNITS.items():
        if unit == "w":
            continue  # 14d reads better than 2w in reports
        amount, remaining = divmod(remaining, factor)
        if amount:
            parts.append(f"{amount}{unit}")
    return "".join(parts) or "0s"


def iso_timestamp(moment: datetime) -> str:
    """UTC with milliseconds and a Z, as JavaScript's toISOString() writes it."""
    utc = moment.astimezone(UTC)
    return f"{utc:%Y-%m-%dT%H:%M:%S}.{utc.microsecond // 1000:03d}Z"
