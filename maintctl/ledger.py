"""maintctl's memory in the database: the run ledger and the pause switch."""

from __future__ import annotations

import getpass
import os
import socket
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from psycopg.types.json import Jsonb

from maintctl import __version__, db
from maintctl.settings import Settings


@dataclass(frozen=True)
class RunRecord:
    id: int
    command: str
    status: str
    started_at: datetime
    finished_at: datetime | None
    host: str | None
    version: str | None
    dry_run: bool
    thresholds: dict[str, Any]
    tasks: list[dict[str, Any]]
    errors: list[str]
    skipped: str | None


@dataclass(frozen=True)
class RunStart:
    id: int
    started_at: datetime


@dataclass(frozen=True)
class PauseState:
    paused: bool
    reason: str | None
    paused_by: str | None
    paused_at: datetime | None


def whoami() -> str:
    """user@host of this process, for the ledger and the pause switch."""
    try:
        user = getpass.getuser()
    except (KeyError, OSError):  # a container's uid with no passwd entry
        user = str(os.getuid())
    return f"{user}@{socket.gethostname()}"


def start_run(
    conn: db.Connection,
    settings: Settings,
    *,
    command: str,
    dry_run: bool,
    status: str = "running",
    skipped: str | None = None,
) -> RunStart:
    thresholds: dict[str, Any] = dict(settings.thresholds_text())
    thresholds["batchSize"] = settings.batch_size
    return db.fetch_one(
        conn,
        "start_run",
        {
            "command": command,
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "version": __version__,
            "dry_run": dry_run,
            "thresholds": Jsonb(thresholds),
            "status": status,
            "skipped": skipped,
            "lease": settings.run_lease,
        },
        RunStart,
    )


def finish_run(
    conn: db.Connection,
    run_id: int,
    *,
    status: str,
    tasks: list[dict[str, Any]],
    errors: list[str],
) -> None:
    db.execute(
        conn,
        "finish_run",
        {"id": run_id, "status": status, "tasks": Jsonb(tasks), "errors": Jsonb(errors)},
    )


def record_tasks(conn: db.Connection, run_id: int, tasks: list[dict[str, Any]]) -> None:
    """The results of the tasks that have ended, while the run goes on."""
    db.execute(conn, "record_run_tasks", {"id": run_id, "tasks": Jsonb(tasks)})


def prune(conn: db.Connection, settings: Settings) -> None:
    db.execute(conn, "prune_runs", {"retention": settings.history_retention})


def history(
    conn: db.Connection,
    limit: int,
    *,
    since_time: datetime | None = None,
    since_age: timedelta | None = None,
) -> list[RunRecord]:
    """The newest runs first; with `since_*`, only those started since then (an age is
    measured on the database's clock)."""
    params = {"limit": limit, "since_time": since_time, "since_age": since_age}
    return db.fetch_all(conn, "history", params, RunRecord)


def last_run(conn: db.Connection) -> RunRecord | None:
    runs = history(conn, 1)
    return runs[0] if runs else None


def last_success(conn: db.Connection) -> datetime | None:
    value: datetime | None = db.fetch_value(conn, "last_successful_run")
    return value


def pause_state(conn: db.Connection) -> PauseState:
    return db.fetch_one(conn, "pause_state", {}, PauseState)


def set_pause(conn: db.Connection, *, paused: bool, reason: str | None) -> tuple[PauseState, bool]:
    """The pause switch set, and whether this changed it: pausing what is paused keeps who paused
    it, when and why; resuming what is not paused does nothing."""
    before = pause_state(conn)
    if before.paused == paused:
        return before, False
    state = db.fetch_one(
        conn,
        "set_pause",
        {"paused": paused, "reason": reason, "paused_by": whoami()},
        PauseState,
    )
    return state, True


def pause_sentence(state: PauseState) -> str:
    """Why maintenance is paused, in one line."""
    since = (
        f" since {state.paused_at.astimezone(UTC):%Y-%m-%d %H:%M UTC}" if state.paused_at else ""
    )
    by = f" by {state.paused_by}" if state.paused_by else ""
    why = f": {state.reason}" if state.reason else ""
    return f"maintenance is paused{since}{by}{why} (maintctl resume)"
