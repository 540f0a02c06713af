"""Whether a pooler in transaction mode (PgBouncer, Supabase's Supavisor on port 6543) sits
between maintctl and the server: runs are safe through one, `migrate` is not."""

from __future__ import annotations

from dataclasses import dataclass

from maintctl import db
from maintctl.errors import ConfigError
from maintctl.settings import Settings

PROBES = 3


@dataclass(frozen=True)
class ServerEndpoint:
    port: int
    backend_pid: int


@dataclass(frozen=True)
class PoolerProbe:
    dialled: str
    dialled_port: int
    server_port: int
    transaction_pooler: bool


def probe(conn: db.Connection, settings: Settings) -> PoolerProbe:
    """Two client connections that are open at once can share a server session (backend pid)
    only through a transaction-mode pooler, which hands an idle server session to whichever
    client starts the next transaction (PgBouncer: the most recently used one first). Without a
    pooler, or in session mode, each connection keeps its own. A server port other than the one
    dialled shows a pooler or proxy of some kind."""
    shared = False
    with db.connect(settings) as other:
        for _ in range(PROBES):
            mine = db.fetch_one(conn, "server_endpoint", {}, ServerEndpoint)
            theirs = db.fetch_one(other, "server_endpoint", {}, ServerEndpoint)
            shared = shared or mine.backend_pid == theirs.backend_pid
    return PoolerProbe(
        dialled=f"{conn.info.host}:{conn.info.port}",
        dialled_port=conn.info.port,
        server_port=mine.port,
        transaction_pooler=shared,
    )


def refuse_for_migrate(conn: db.Connection, settings: Settings) -> None:
    """`migrate` holds a session-level lock (one migrate at a time) and session settings (no
    statement timeout while it builds indexes): through a transaction-mode pooler the lock would
    be released on, or leak into, another client's server session, and so would the settings."""
    found = probe(conn, settings)
    if found.transaction_pooler:
        raise ConfigError(
            f"migrate needs a direct connection to the server, not the pooler in transaction mode "
            f"at {found.dialled} (it holds a session lock and session settings while it builds "
            f"indexes): use the server's own port ({found.server_port}), e.g. Supabase's direct "
            "connection or session pooler instead of the transaction pooler"
        )
