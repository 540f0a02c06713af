"""One non-dry run at a time, across hosts and through a transaction-mode pooler: the run lease.

The lease is a row (`maintenance.run_lease`), not a session-level advisory lock, so it needs no
session that outlives a transaction. A run takes it only when it is free, renews it inside every
batch's transaction and releases it at the end; a killed run's lease lapses after
`MAINTCTL_RUN_LEASE`. The SQL and the reasoning are in `sql/migrations/0004_run_lease.sql`.
"""

from __future__ import annotations

import os
import socket
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from maintctl import db, ledger
from maintctl.errors import ConfigError, LeaseLost
from maintctl.settings import Settings

# A competitor that finds the lease being taken right now (the taker's transaction has not
# committed yet) looks again for this long to name the new holder; well under the 2 s in which
# it must give up.
HOLDER_WAIT_SECONDS = 1.0
# Triggers put the row back when it is deleted (0010_run_lease_row.sql); only a row removed behind
# their back (triggers disabled) is missing.
RUN_LEASE_MISSING = (
    "maintenance.run_lease has no row, so no run can take the lease: as the owner, "
    "insert into maintenance.run_lease default values"
)


@dataclass(frozen=True)
class LeaseHolder:
    run_id: int | None
    host: str | None
    started_at: datetime | None
    live: bool

    def sentence(self) -> str:
        """Why this run is skipped, naming the holder when the lease row knows it."""
        where = ""
        if self.host is not None and self.started_at is not None:
            started = self.started_at.astimezone(UTC)
            where = f" (host {self.host}, started {started:%Y-%m-%d %H:%M:%S} UTC)"
        return f"another maintenance run is in progress{where}"


@dataclass(frozen=True)
class Heartbeat:
    """A run's sign of life, given inside each of its transactions. A guarded run renews the
    lease (and fails the batch if it lost it); a dry run only keeps its ledger row alive."""

    run_id: int
    lease: timedelta
    guarded: bool

    def lease_parameters(self) -> dict[str, object] | None:
        """What a batch needs to renew the lease in its own statements (db.transaction's
        renew_lease, the rule_step query); None for a dry run, which holds none."""
        return {"lease_run_id": self.run_id, "lease": self.lease} if self.guarded else None

    def beat(self, conn: db.Connection) -> None:
        params = {"run_id": self.run_id, "lease": self.lease}
        if not self.guarded:
            db.execute(conn, "touch_run", params)
        elif not db.fetch_value(conn, "renew_run_lease", params):
            raise LeaseLost


def start_guarded_run(
    conn: db.Connection, settings: Settings, *, command: str
) -> ledger.RunStart | LeaseHolder:
    """Take the lease and open the run's ledger row in one transaction, or say who holds it.

    Never waits on the holder: SKIP LOCKED in the take, and at most HOLDER_WAIT_SECONDS of
    looking again when the lease is being handed over right now.
    """
    deadline = time.monotonic() + HOLDER_WAIT_SECONDS
    take = {"host": socket.gethostname(), "pid": os.getpid(), "lease": settings.run_lease}
    while True:
        with db.transaction(conn, settings):
            if db.fetch_value(conn, "take_run_lease", take):
                # Whoever held it before is gone: its ledger row, if still 'running', says so.
                db.execute(conn, "mark_abandoned_runs")
                start = ledger.start_run(conn, settings, command=command, dry_run=False)
                db.execute(conn, "attach_run_lease", {"run_id": start.id})
                return start
        holders = db.fetch_all(conn, "run_lease_holder", {}, LeaseHolder)
        if not holders:
            raise ConfigError(RUN_LEASE_MISSING)
        holder = holders[0]
        if holder.live or time.monotonic() >= deadline:
            return holder
        time.sleep(0.1)


def release(conn: db.Connection, run_id: int) -> None:
    """Free the lease at the end of the run. A run that cannot (its process died) leaves a lease
    that lapses by itself after MAINTCTL_RUN_LEASE."""
    db.fetch_value(conn, "release_run_lease", {"run_id": run_id})
