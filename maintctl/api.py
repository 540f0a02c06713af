"""maintctl as a Python library: `Maintenance`, the object under the CLI (as sqlite-utils'
`Database` is under its CLI). It takes typed options and returns typed results; the CLI parses,
calls it, renders and exits, and `maintctl serve` calls the same methods.

    from maintctl.api import Maintenance

    maintenance = Maintenance.from_environment()          # MAINTCTL_*, .env, maintctl.toml
    report = maintenance.run(dry_run=True)                # a RunReport
    document = maintenance.run_document(report)           # what `maintctl run --json` prints
    print(maintenance.status().counts)                    # {"stuck": 0, "temp": 12, ...}
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from maintctl.errors import ConfigError

if TYPE_CHECKING:
    from maintctl.archive import Destination
    from maintctl.db import Connection
    from maintctl.grants import GrantResult
    from maintctl.ledger import PauseState, RunRecord
    from maintctl.log import Notify
    from maintctl.migrations import MigrateResult
    from maintctl.policy import ConfigReport
    from maintctl.rules import Rule
    from maintctl.runner import RunReport
    from maintctl.settings import Settings
    from maintctl.status import Check, StatusReport
    from maintctl.tasks import ProgressCallback


class Maintenance:
    """Everything maintctl does to one database, under one set of settings."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings

    @classmethod
    def from_environment(cls, **settings: Any) -> Maintenance:
        """Settings from the keyword arguments (Settings fields), the environment, `.env` and the
        policy file, refused as the CLI refuses them (a MaintctlError with its exit code)."""
        from maintctl.settings import load_settings

        return cls(load_settings(settings, {}))

    # --- the rules ---------------------------------------------------------------------------

    def rules(self, names: Sequence[str] | None = None) -> tuple[Rule, ...]:
        """The rules a run applies, in order: the four the policy keeps, then its [[purge]] ones;
        or those named (by rule name, command, or [[purge]] name)."""
        from maintctl.policy import nearest
        from maintctl.rules.generate import policy_of

        applied = policy_of(self.settings).rules
        if names is None:
            return applied
        by_name = {key: rule for rule in applied for key in (rule.name, rule.command)}
        chosen = []
        for name in names:
            if name not in by_name:
                raise ConfigError(f"no rule named {name!r} in this policy{nearest(name, by_name)}")
            chosen.append(by_name[name])
        return tuple(chosen)

    # --- connections -------------------------------------------------------------------------

    @contextmanager
    def connect(self, *, migrated: bool = True, writes: bool = True) -> Iterator[Connection]:
        """A connection whose driver errors become maintctl's; with `migrated`, refused (exit 78)
        when the maintenance schema is missing, stale or generated from another policy; with
        `writes` (every command but status and history), on a hot standby or a read-only
        session."""
        from maintctl import db, migrations

        conn = db.connect(self.settings)
        try:
            with db.database_errors(conn):
                if writes:
                    migrations.ensure_writable(conn)
                if migrated:
                    migrations.ensure_migrated(conn, self.settings)
                yield conn
        finally:
            conn.close()

    # --- commands ----------------------------------------------------------------------------

    def run(
        self,
        rules: Sequence[Rule] | None = None,
        *,
        command: str = "run",
        dry_run: bool = False,
        max_runtime: timedelta | None = None,
        vacuum: bool = False,
        force: bool = False,
        notify: Notify | None = None,
        on_batch: ProgressCallback | None = None,
        on_connected: Callable[[Connection], None] | None = None,
        after: Callable[[Connection, RunReport], None] | None = None,
        archive: Destination | None = None,
    ) -> RunReport:
        """A maintenance run of `rules` (default: every rule the policy applies): disabled by
        MAINTCTL_ENABLED=false, paused or leased elsewhere it is skipped and says why. The report
        is what `maintctl run --json` prints (run_document). `on_connected` and `after` hear of
        the connection before and after the run (the CLI logs it and writes --emit-paths). What
        the run removes is archived (not on a dry run) to `archive`, else to MAINTCTL_ARCHIVE
        when set, checked writable before the database is touched (docs/archive.md). `force`
        lets a rule past the anomaly guard (maintctl.limits)."""
        from maintctl import runner
        from maintctl.archive import opened

        chosen = tuple(rules) if rules is not None else self.rules()
        if not self.settings.enabled:
            return runner.disabled_report(dry_run)
        destination = None if dry_run else archive if archive is not None else self.archive()
        with opened(destination), self.connect() as conn:
            if on_connected is not None:
                on_connected(conn)
            report = runner.run_maintenance(
                conn,
                self.settings,
                chosen,
                command=command,
                dry_run=dry_run,
                max_runtime=max_runtime,
                notify=notify,
                on_batch=on_batch,
                vacuum=vacuum,
                archive=destination,
                force=force,
            )
            if after is not None:
                after(conn, report)
        return report

    def archive(self) -> Destination | None:
        """The archive MAINTCTL_ARCHIVE (or --archive) names: a directory or a postgresql:// URL;
        None when it is not set."""
        from maintctl.archive import open_destination

        if self.settings.archive is None:
            return None
        return open_destination(self.settings.archive.get_secret_value())

    @staticmethod
    def run_document(report: RunReport) -> dict[str, Any]:
        """The run's JSON document, as `maintctl run --json` prints it."""
        from maintctl.render import run_json

        return run_json(report)

    def status(
        self,
        *,
        max_age: timedelta | None = None,
        exact: bool = False,
        max_age_text: str | None = None,
    ) -> StatusReport:
        """What is waiting. `max_age_text`: --max-age as the user wrote it, echoed back."""
        from maintctl.status import get_status

        with self.connect(writes=False) as conn:
            return get_status(conn, self.settings, max_age, exact=exact, max_age_text=max_age_text)

    def doctor(self) -> list[Check]:
        """Doctor's checks, in order; it stops after the first that fails."""
        from maintctl.status import run_doctor

        return run_doctor(self.settings)

    def migrate(self) -> MigrateResult:
        from maintctl.migrations import migrate

        with self.connect(migrated=False) as conn:
            return migrate(conn, self.settings)

    def history(
        self,
        limit: int = 20,
        *,
        since_time: datetime | None = None,
        since_age: timedelta | None = None,
    ) -> list[RunRecord]:
        from maintctl import ledger

        with self.connect(writes=False) as conn:
            return ledger.history(conn, limit, since_time=since_time, since_age=since_age)

    def pause(self, reason: str | None = None) -> tuple[PauseState, bool]:
        """The pause switch on, and whether this changed it (already paused: who, when and why
        stay as they were)."""
        return self._set_pause(paused=True, reason=reason)

    def resume(self) -> tuple[PauseState, bool]:
        """The pause switch off, and whether this changed it."""
        return self._set_pause(paused=False, reason=None)

    def _set_pause(self, *, paused: bool, reason: str | None) -> tuple[PauseState, bool]:
        from maintctl import ledger

        with self.connect() as conn:
            return ledger.set_pause(conn, paused=paused, reason=reason)

    def grant(self, role: str, *, revoke: bool = False) -> GrantResult:
        from maintctl.grants import grant_role

        with self.connect() as conn:
            return grant_role(conn, self.settings, role, revoke=revoke)

    def config(self, flags: dict[str, Any] | None = None) -> ConfigReport:
        """The policy as resolved, each value with where it came from (`flags`: what was given on
        the command line, by Settings field)."""
        from maintctl.policy import describe

        return describe(self.settings, flags or {})
