"""The health gate: before each batch, one catalog query reads how far the standbys are behind in
replay (pg_stat_replication, by bytes and by time), how much WAL the replication slots retain
(pg_replication_slots) and where the WAL stands (pg_current_wal_insert_lsn()). Over a limit,
the task waits and looks again; after MAINTCTL_THROTTLE_WAIT of waiting in one stretch it
stops, and the next run carries on. Under MAINTCTL_MAX_WAL_RATE, the gate sleeps as long as it
takes for the task's WAL so far to stay under the rate. The gate also counts what the task
cost: the WAL it wrote, the time it waited, and the peak standby lag it saw.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import timedelta
from typing import TYPE_CHECKING

from maintctl.durations import format_duration
from maintctl.sizes import format_size

if TYPE_CHECKING:
    from maintctl.db import Connection
    from maintctl.guard import Heartbeat
    from maintctl.settings import Settings

# While over a limit, the gate looks again this often (one catalog query each time).
POLL_SECONDS = 1.0
# A task waiting on the gate still renews the run lease, at least this often (the lease lasts
# MAINTCTL_RUN_LEASE, 60 s by default).
BEAT_FRACTION = 4

BLIND_SENTENCE = (
    "the health gate cannot see the standbys' replay lag: this role may not read "
    "pg_stat_replication (grant it pg_monitor or pg_read_all_stats; maintctl grant does)"
)


@dataclass(frozen=True)
class Health:
    """One reading of the gate's query (sql/queries.sql, health_gate)."""

    wal_position: int  # bytes since 0/0
    sees_standbys: bool
    standbys: int
    bytes_standby: str | None
    lag_bytes: int | None
    time_standby: str | None
    lag_ms: int | None
    slot: str | None
    slot_bytes: int | None

    @property
    def blind(self) -> bool:
        """Standbys are connected but this role cannot read how far behind they are."""
        return self.standbys > 0 and not self.sees_standbys


def read_health(conn: Connection) -> Health:
    from maintctl import db

    return db.fetch_one(conn, "health_gate", {}, Health)


def over_limit(health: Health, settings: Settings) -> str | None:
    """What is over its limit, naming the standby or slot and how much; None when all is well."""
    limit = settings.max_replica_lag
    if isinstance(limit, int) and health.lag_bytes is not None and health.lag_bytes > limit:
        return (
            f"standby {health.bytes_standby!r} is {format_size(health.lag_bytes)} behind in replay"
            f" (MAINTCTL_MAX_REPLICA_LAG {format_size(limit)})"
        )
    if isinstance(limit, timedelta) and health.lag_ms is not None:
        lag = timedelta(milliseconds=health.lag_ms)
        if lag > limit:
            return (
                f"standby {health.time_standby!r} is {lag.total_seconds():.1f} s behind in replay"
                f" (MAINTCTL_MAX_REPLICA_LAG {format_duration(limit)})"
            )
    slot_limit = settings.max_slot_lag
    if slot_limit is not None and health.slot_bytes is not None and health.slot_bytes > slot_limit:
        return (
            f"replication slot {health.slot!r} retains {format_size(health.slot_bytes)} of WAL"
            f" (MAINTCTL_MAX_SLOT_LAG {format_size(slot_limit)})"
        )
    return None


def describe(health: Health, settings: Settings) -> str:
    """What the gate sees, for doctor: the standbys and slots, and whether a run would wait."""
    standbys = f"{health.standbys} standby" + ("s" if health.standbys != 1 else "")
    if health.lag_bytes is not None:
        standbys += f", the furthest {format_size(health.lag_bytes)} behind in replay"
    slots = (
        f"slot {health.slot!r} retains {format_size(health.slot_bytes)}"
        if health.slot is not None and health.slot_bytes is not None
        else "no replication slot"
    )
    reason = over_limit(health, settings)
    verdict = f"; a run now would wait: {reason}" if reason else ""
    return f"{standbys}; {slots}{verdict}"


class Gate:
    """The gate of one task: `check` before each batch, `finish` at the end."""

    def __init__(
        self,
        conn: Connection,
        settings: Settings,
        heartbeat: Heartbeat | None,
    ) -> None:
        self.conn = conn
        self.settings = settings
        self.heartbeat = heartbeat
        self.started = self._last_beat = time.monotonic()
        self.throttled_seconds = 0.0
        self.peak_lag_bytes: int | None = None
        self.peak_lag_ms: int | None = None
        first = self._read()
        self.start_position = first.wal_position
        self.position = first.wal_position

    @property
    def wal_bytes(self) -> int:
        return max(0, self.position - self.start_position)

    @property
    def throttled_ms(self) -> int:
        return int(self.throttled_seconds * 1000)

    def _read(self) -> Health:
        health = read_health(self.conn)
        self.position = health.wal_position
        if health.lag_bytes is not None:
            self.peak_lag_bytes = max(self.peak_lag_bytes or 0, health.lag_bytes)
        if health.lag_ms is not None:
            self.peak_lag_ms = max(self.peak_lag_ms or 0, health.lag_ms)
        return health

    def check(self) -> str | None:
        """Before a batch: wait while over a limit, pace to the WAL rate. Returns why the task
        must stop (it waited MAINTCTL_THROTTLE_WAIT in one stretch), or None to go on."""
        waiting_since: float | None = None
        wait = self.settings.throttle_wait.total_seconds()
        while True:
            health = self._read()
            reason = over_limit(health, self.settings) or self._too_fast(wait)
            now = time.monotonic()
            if reason is None:
                if waiting_since is not None:
                    self.throttled_seconds += now - waiting_since
                self._pace()
                return None
            waiting_since = now if waiting_since is None else waiting_since
            waited = now - waiting_since
            if waited >= wait:
                self.throttled_seconds += waited
                return (
                    f"{reason}; waited {format_duration(self.settings.throttle_wait)} "
                    "(MAINTCTL_THROTTLE_WAIT), the next run carries on"
                )
            self._wait(min(POLL_SECONDS, wait - waited))

    def finish(self) -> None:
        """At the end of the task: the WAL it wrote, paced like a batch (unless that would take
        longer than the throttle wait: the work is done)."""
        self._read()
        if self._too_fast(self.settings.throttle_wait.total_seconds()) is None:
            self._pace()

    def _too_fast(self, wait: float) -> str | None:
        """The WAL rate as a limit: pacing that would sleep longer than the throttle wait (the
        application itself writes more than the rate) stops the task like a lagging standby."""
        rate = self.settings.max_wal_rate
        if rate is None or self._ahead(rate) < wait:
            return None
        elapsed = time.monotonic() - self.started
        return (
            f"the server wrote {format_size(self.wal_bytes)} of WAL in {elapsed:.1f} s"
            f" (MAINTCTL_MAX_WAL_RATE {format_size(rate)}/s)"
        )

    def _ahead(self, rate: int) -> float:
        """How long the task must sleep for the WAL written since it started to fit the rate."""
        return self.wal_bytes / rate - (time.monotonic() - self.started)

    def _pace(self) -> None:
        """Under MAINTCTL_MAX_WAL_RATE: sleep until the task's WAL so far fits the rate."""
        rate = self.settings.max_wal_rate
        if rate is None:
            return
        ahead = self._ahead(rate)
        if ahead > 0:
            begun = time.monotonic()
            self._wait(ahead)
            self.throttled_seconds += time.monotonic() - begun

    def _wait(self, seconds: float) -> None:
        """Sleep outside any transaction, renewing the run lease on the way; a stop request
        (maintctl serve's SIGTERM, maintctl.tasks.stop_requested) ends it as SIGTERM would."""
        from maintctl import db
        from maintctl.errors import Terminated
        from maintctl.tasks import stop_requested

        every = self.settings.run_lease.total_seconds() / BEAT_FRACTION
        end = time.monotonic() + seconds
        while (left := end - time.monotonic()) > 0:
            if self.heartbeat is not None and time.monotonic() - self._last_beat >= every:
                with db.transaction(self.conn, self.settings):
                    self.heartbeat.beat(self.conn)
                self._last_beat = time.monotonic()
            if stop_requested.wait(min(left, every)):
                raise Terminated
