"""maintctl's settings: flags beat the environment, the environment beats a `.env` file."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BeforeValidator,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
)
from pydantic_settings import BaseSettings, SettingsConfigDict

from maintctl.durations import format_duration, parse_duration
from maintctl.errors import ConfigError, UsageError

# A threshold under this is refused without --force: a typo must not fail live imports.
THRESHOLD_FLOOR = timedelta(hours=1)
THRESHOLDS = ("stuck_after", "temp_upload_ttl", "compact_after", "raw_items_ttl")
# PostgreSQL keeps lock_timeout and statement_timeout as milliseconds in a 32-bit integer, and
# libpq's connect_timeout in seconds: a longer timeout would fail at the server, not here.
MAX_TIMEOUT = timedelta(milliseconds=2**31 - 1)


def _duration(value: Any) -> Any:
    if isinstance(value, str):
        return parse_duration(value)
    if isinstance(value, timedelta) and value <= timedelta(0):
        raise ValueError(f"{value} is not positive")
    return value


def _timeout(value: timedelta) -> timedelta:
    if value > MAX_TIMEOUT:
        raise ValueError(
            f"{format_duration(value)} is longer than the {format_duration(MAX_TIMEOUT)} "
            "PostgreSQL allows for a timeout"
        )
    return value


Duration = Annotated[timedelta, BeforeValidator(_duration)]
Timeout = Annotated[Duration, AfterValidator(_timeout)]


class Settings(BaseSettings):
    """Everything maintctl can be told, with the defaults of DESIGN.md."""

    model_config = SettingsConfigDict(
        env_prefix="MAINTCTL_",
        env_file=".env",
        extra="ignore",
        populate_by_name=True,
        frozen=True,
    )

    database_url: SecretStr | None = Field(default=None, validation_alias="MAINTCTL_DATABASE_URL")
    # The application's own variable, used only when MAINTCTL_DATABASE_URL is set nowhere (flag,
    # environment or .env): maintctl's own name always wins, wherever it is set.
    fallback_database_url: SecretStr | None = Field(default=None, validation_alias="DATABASE_URL")
    app_schema: str = Field(
        default="public", min_length=1, max_length=63, validation_alias="MAINTCTL_SCHEMA"
    )
    enabled: bool = True
    stuck_after: Duration = timedelta(hours=24)
    temp_upload_ttl: Duration = timedelta(hours=24)
    compact_after: Duration = timedelta(days=7)
    raw_items_ttl: Duration = timedelta(days=30)
    batch_size: int = Field(default=5000, ge=1, le=1_000_000)
    lock_timeout: Timeout = timedelta(seconds=5)
    statement_timeout: Timeout = timedelta(seconds=60)
    connect_timeout: Timeout = timedelta(seconds=10)
    # How long a run's lease outlives its last sign of life: a killed run blocks the next one for
    # about this long at most (README, "One run at a time, crashes and faults").
    run_lease: Timeout = timedelta(seconds=60)
    history_retention: Duration = timedelta(days=90)
    # Running in production (docs/production.md): the step log, monitoring and alerting.
    log_format: Literal["text", "json"] = "text"
    metrics_file: Path | None = None
    healthcheck_url: SecretStr | None = None
    healthcheck_timeout: Duration = timedelta(seconds=10)
    # The archive (docs/archive.md): a directory, or the postgresql:// URL of another database
    # (a secret: it may carry a password); runs older than the retention are pruned by `run`.
    archive: SecretStr | None = None
    archive_retention: Duration | None = None

    @field_validator("healthcheck_url")
    @classmethod
    def _http_only(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None and not value.get_secret_value().startswith(("http://", "https://")):
            raise ValueError("must be an http:// or https:// URL")
        return value

    def conninfo(self) -> str:
        """The connection string; empty means libpq's PG* variables, service file and .pgpass."""
        url = self.database_url or self.fallback_database_url
        return url.get_secret_value() if url else ""

    def thresholds(self) -> dict[str, timedelta]:
        return {name: getattr(self, name) for name in THRESHOLDS}

    def thresholds_text(self) -> dict[str, str]:
        """The thresholds as the JSON and the ledger show them: {"stuckAfter": "1d", ...}."""
        return {_camel(name): format_duration(value) for name, value in self.thresholds().items()}


def _camel(name: str) -> str:
    head, *rest = name.split("_")
    return head + "".join(part.title() for part in rest)


def env_name(field: str) -> str:
    """The environment variable behind a setting, as messages name it."""
    special = {"app_schema": "MAINTCTL_SCHEMA", "fallback_database_url": "DATABASE_URL"}
    return special.get(field, f"MAINTCTL_{field.upper()}")


def load_settings(
    flags: dict[str, Any],
    flag_names: dict[str, str],
    *,
    floor: tuple[str, ...] = (),
    force: bool = False,
) -> Settings:
    """Build the settings from the given flags (None means not given), the environment and .env.

    A bad value given on the command line is a usage error (exit 2); one from the environment or
    .env is a configuration error (exit 78). Either message names where the value came from.
    The thresholds named in `floor` (those of the tasks about to run) are refused under an hour
    unless `force`.
    """
    given = {name: value for name, value in flags.items() if value is not None}

    def fail(field: str, reason: str) -> Exception:
        if field in given:
            return UsageError(f"{flag_names.get(field, field)}: {reason}")
        return ConfigError(f"{env_name(field)}: {reason}")

    try:
        settings = Settings(**given)
    except ValidationError as exc:
        error = exc.errors()[0]
        loc = str(error["loc"][0]) if error["loc"] else ""
        field = next(
            (name for name in Settings.model_fields if loc in (name, env_name(name))),
            loc,
        )
        reason = str(error["msg"]).removeprefix("Value error, ")
        raise fail(field, reason) from None
    if not force:
        for field in floor:
            value = getattr(settings, field)
            if value < THRESHOLD_FLOOR:
                raise fail(
                    field,
                    f"{format_duration(value)} is under the 1h floor "
                    "(add --force if you really mean it)",
                )
    return settings
