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
from maintctl.sizes import looks_like_size, parse_rate, parse_size

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


def _off(value: Any) -> bool:
    return isinstance(value, str) and value.strip().lower() == "off"


def _replica_lag(value: Any) -> Any:
    """A standby's replay lag: a duration (30s) or a size (256MB); off."""
    if _off(value):
        return None
    if isinstance(value, str):
        if looks_like_size(value):
            return parse_size(value)
        try:
            return parse_duration(value)
        except ValueError:
            raise ValueError(
                f"{value!r} is neither a duration (e.g. 30s, 5m) nor a size (e.g. 256MB); or off"
            ) from None
    return _duration(value)


def _size(value: Any) -> Any:
    if _off(value):
        return None
    return parse_size(value) if isinstance(value, str) else value


def _rate(value: Any) -> Any:
    if _off(value):
        return None
    return parse_rate(value) if isinstance(value, str) else value


def _factor(value: Any) -> Any:
    if _off(value):
        return None
    return value


def _above_one(value: float | None) -> float | None:
    if value is not None and value <= 1:
        raise ValueError(f"{value:g} is not above 1; use off to turn the guard off")
    return value


Duration = Annotated[timedelta, BeforeValidator(_duration)]
Timeout = Annotated[Duration, AfterValidator(_timeout)]
# The health gate (README, "Kind to production"): each limit can be turned off.
ReplicaLagLimit = Annotated[timedelta | int | None, BeforeValidator(_replica_lag)]
SizeLimit = Annotated[Annotated[int, Field(ge=1)] | None, BeforeValidator(_size)]
RateLimit = Annotated[Annotated[int, Field(ge=1)] | None, BeforeValidator(_rate)]
Factor = Annotated[float | None, BeforeValidator(_factor), AfterValidator(_above_one)]


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
    # The health gate, read before each batch (maintctl.health): a replay lag (a duration or a
    # size in bytes), the WAL a slot retains, the run's WAL rate in bytes per second; None is off.
    max_replica_lag: ReplicaLagLimit = timedelta(seconds=30)
    max_slot_lag: SizeLimit = 1024**3
    max_wal_rate: RateLimit = None
    throttle_wait: Duration = timedelta(minutes=5)
    # Limits on a run: the most rows one task touches, and the anomaly guard's factor over the
    # largest count of the recent runs in the ledger (maintctl.limits).
    max_rows: int | None = Field(default=None, ge=1)
    anomaly_factor: Factor = 10.0
    # Running in production (docs/production.md): the step log, monitoring and alerting.
    log_format: Literal["text", "json"] = "text"
    metrics_file: Path | None = None
    healthcheck_url: SecretStr | None = None
    healthcheck_timeout: Duration = timedelta(seconds=10)

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
