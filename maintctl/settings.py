"""maintctl's settings: flags beat the environment, the environment beats a `.env` file."""

from __future__ import annotations

import os
from datetime import timedelta
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    AliasChoices,
    BeforeValidator,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
)
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)

from maintctl.durations import format_duration, parse_duration
from maintctl.errors import ConfigError, UsageError
from maintctl.rules import RULES, RULES_BY_NAME, PolicyValue, Rule
from maintctl.sizes import looks_like_size, parse_rate, parse_size

# A threshold under this is refused without --force: a typo must not fail live imports.
THRESHOLD_FLOOR = timedelta(hours=1)
THRESHOLDS = tuple(rule.threshold for rule in RULES)
# PostgreSQL keeps lock_timeout and statement_timeout as milliseconds in a 32-bit integer, and
# libpq's connect_timeout in seconds: a longer timeout would fail at the server, not here.
MAX_TIMEOUT = timedelta(milliseconds=2**31 - 1)
# MAINTCTL_BATCH_SIZE left at its default: a table whose batches take a fraction of the time
# budget (maintctl.tasks.TARGET_BATCH_SECONDS) grows them past it, up to this many rows. At 5,000
# rows a batch of plain deletes took 3 ms, less than the batch's fixed round trips; set, the size
# is a ceiling, as before.
ADAPTIVE_BATCH_CEILING = 100_000


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
    # The zone in which the application writes timestamp-without-time-zone columns (policy file).
    naive_time_zone: str = Field(default="UTC", min_length=1)
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
    # maintctl serve (README, "HTTP trigger and dashboard"). Vercel sends its own CRON_SECRET as
    # `Authorization: Bearer`, so that name is read when MAINTCTL_CRON_SECRET is set nowhere.
    cron_secret: SecretStr | None = Field(
        default=None, validation_alias=AliasChoices("MAINTCTL_CRON_SECRET", "CRON_SECRET")
    )
    serve_max_runtime: Duration = timedelta(seconds=50)
    public_dashboard: bool = False
    # The archive (docs/archive.md): a directory, or the postgresql:// URL of another database
    # (a secret: it may carry a password); runs older than the retention are pruned by `run`.
    archive: SecretStr | None = None
    archive_retention: Duration | None = None
    # The [rules.NAME] tables of the policy file: the application's own table and column names
    # (maintctl.policy; the thresholds, older_than, go to the fields above).
    rules: dict[str, dict[str, Any]] = Field(default_factory=dict)
    # A threshold per status, by rule (older_than = { completed = "7d", failed = "30d" } in the
    # policy file, for a rule with per_status); the rule's own threshold is then the shortest.
    thresholds_by_status: dict[str, dict[str, Duration]] = Field(default_factory=dict)
    # The [[purge]] rules of the policy file (maintctl/rules/purge.py), and --older-than of
    # `maintctl purge NAME`, which beats the entry's own.
    purge: list[dict[str, Any]] = Field(default_factory=list)
    purge_older_than: dict[str, Duration] = Field(default_factory=dict)

    @field_validator("purge", mode="before")
    @classmethod
    def _purge(cls, value: Any) -> list[dict[str, Any]]:
        from maintctl.rules.purge import validate_entry

        if not isinstance(value, list):
            raise ValueError("[[purge]] must be an array of tables")
        entries = [validate_entry(entry) for entry in value]
        names = [entry["name"] for entry in entries]
        twice = sorted({name for name in names if names.count(name) > 1})
        if twice:
            raise ValueError(f"[[purge]] {twice[0]} is named twice")
        for entry in entries:
            entry["older_than"] = _duration(entry["older_than"])
        return entries

    def purge_rules(self) -> tuple[Rule, ...]:
        from maintctl.rules.purge import purge_rule

        return tuple(purge_rule(entry) for entry in self.purge)

    @property
    def batch_ceiling(self) -> int:
        """The most rows one batch may take: MAINTCTL_BATCH_SIZE (or --batch-size) when it is set
        anywhere, else ADAPTIVE_BATCH_CEILING; each batch is still held to the time budget."""
        if "batch_size" in self.model_fields_set:
            return self.batch_size
        return max(self.batch_size, ADAPTIVE_BATCH_CEILING)

    def threshold_of(self, rule: Rule) -> timedelta:
        """A rule's threshold: its setting, or for a [[purge]] rule the entry's older_than."""
        if rule.purge:
            override = self.purge_older_than.get(rule.name)
            if override is not None:
                return override
            entry = next(entry for entry in self.purge if entry["name"] == rule.name)
            found: timedelta = entry["older_than"]
            return found
        value: timedelta = getattr(self, rule.threshold)
        return value

    @field_validator("rules", mode="before")
    @classmethod
    def _rules(cls, value: Any) -> dict[str, dict[str, Any]]:
        from maintctl.policy import validate_rules

        return validate_rules(value)

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        """Flags, environment, .env, then the policy file (maintctl.toml), then the defaults."""
        return (init_settings, env_settings, dotenv_settings, PolicyFileSource(settings_cls))

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

    def thresholds_text(self) -> dict[str, Any]:
        """The thresholds as the JSON and the ledger show them: {"stuckAfter": "1d", ...}, and
        {"compactAfterByStatus": {"failed": "30d", ...}} for a threshold per status."""
        shown: dict[str, Any] = {
            camel(name): format_duration(value) for name, value in self.thresholds().items()
        }
        for rule in RULES:
            by_status = self.thresholds_by_status.get(rule.name)
            if by_status:
                shown[camel(rule.threshold) + "ByStatus"] = {
                    status: format_duration(value) for status, value in by_status.items()
                }
        if self.purge:
            shown["purge"] = {
                rule.name: format_duration(self.threshold_of(rule)) for rule in self.purge_rules()
            }
        return shown

    def rule_names(self) -> dict[str, dict[str, PolicyValue]]:
        """The table and column names the policy gives each rule (the rest: its defaults)."""
        return {
            rule: {
                key: tuple(value) if isinstance(value, list | tuple) else value
                for key, value in keys.items()
                if key != "enabled"
            }
            for rule, keys in self.rules.items()
        }

    def rule_enabled(self, rule: str) -> bool:
        return bool(self.rules.get(rule, {}).get("enabled", True))


class PolicyFileSource(PydanticBaseSettingsSource):
    """The policy file as a source of settings, below the environment and .env."""

    def get_field_value(self, field: Any, field_name: str) -> tuple[Any, str, bool]:
        return None, field_name, False  # __call__ reads the whole file at once

    def __call__(self) -> dict[str, Any]:
        from maintctl import policy

        found = policy.load()
        return policy.settings_values(found) if found is not None else {}


def camel(name: str) -> str:
    head, *rest = name.split("_")
    return head + "".join(part.title() for part in rest)


# MAINTCTL_* variables that are not settings but are maintctl's all the same: the policy file's,
# the test suite's (tests/conftest.py) and the bench's (scripts/bench.py).
OTHER_VARIABLES = (
    "MAINTCTL_CONFIG",
    "MAINTCTL_TEST_DSN",
    "MAINTCTL_TEST_SERVER",
    "MAINTCTL_BENCH_DSN",
    "MAINTCTL_BENCH_SCALE",
    "MAINTCTL_BENCH_OUTPUT",
)
# Fields that no variable sets (the policy file's tables).
FILE_ONLY = ("rules", "thresholds_by_status", "purge", "purge_older_than")


def known_variables() -> tuple[str, ...]:
    fields = [env_name(field) for field in Settings.model_fields if field not in FILE_ONLY]
    return (*[name for name in fields if name.startswith("MAINTCTL_")], *OTHER_VARIABLES)


def _dotenv() -> dict[str, str | None]:
    from dotenv import dotenv_values

    return dict(dotenv_values(".env")) if Path(".env").is_file() else {}


def refuse_unknown_variables() -> None:
    """An unknown MAINTCTL_* variable, in the environment or .env, is a typo until shown
    otherwise: exit 78 naming it and the nearest known name."""
    from maintctl.policy import nearest

    known = known_variables()
    for where, names in (("", list(os.environ)), (".env: ", list(_dotenv()))):
        for name in names:
            if name.upper().startswith("MAINTCTL_") and name.upper() not in known:
                raise ConfigError(f"{where}unknown variable {name}{nearest(name.upper(), known)}")


def value_origin(field: str, flags: dict[str, Any]) -> str:
    """Where a setting's value comes from: flag, environment, .env, file or default."""
    from maintctl import policy

    if field in flags:
        return "flag"
    name = env_name(field)
    if name in os.environ:
        return "environment"
    if name in _dotenv():
        return ".env"
    found = policy.load()
    if found is not None and field in policy.settings_values(found):
        return policy.FROM_FILE
    return "default"


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
    from maintctl import policy

    given = {name: value for name, value in flags.items() if value is not None}
    refuse_unknown_variables()

    def fail(field: str, reason: str) -> Exception:
        if field in given:
            return UsageError(f"{flag_names.get(field, field)}: {reason}")
        origin = value_origin(field, given)
        if origin == policy.FROM_FILE:
            found = policy.load()
            where = f"{found.path}: " if found is not None else ""
            key = policy.file_key(field)
            return ConfigError(f"{where}{key + ': ' if key else ''}{reason}")
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
    # A threshold given above the file (flag, environment, .env) is the rule's, for every status.
    overridden = [
        rule.name
        for rule in RULES
        if rule.name in settings.thresholds_by_status
        and value_origin(rule.threshold, given) != policy.FROM_FILE
    ]
    if overridden:
        kept = {
            name: by_status
            for name, by_status in settings.thresholds_by_status.items()
            if name not in overridden
        }
        settings = settings.model_copy(update={"thresholds_by_status": kept})
    if not force:
        for rule in settings.purge_rules():
            value = settings.threshold_of(rule)
            if rule.threshold in floor and value < THRESHOLD_FLOOR:
                reason = (
                    f"{format_duration(value)} is under the 1h floor "
                    "(add --force if you really mean it)"
                )
                if rule.name in settings.purge_older_than:
                    raise UsageError(f"--older-than: {reason}")
                raise ConfigError(f"[[purge]] {rule.name}: older_than: {reason}")
        for field in floor:
            if field.startswith("purge:"):
                continue
            value = getattr(settings, field)
            if value < THRESHOLD_FLOOR:
                raise fail(
                    field,
                    f"{format_duration(value)} is under the 1h floor "
                    "(add --force if you really mean it)",
                )
        for name, by_status in settings.thresholds_by_status.items():
            for status, value in by_status.items():
                if value < THRESHOLD_FLOOR and RULES_BY_NAME[name].threshold in floor:
                    raise fail(
                        RULES_BY_NAME[name].threshold,
                        f"{status}: {format_duration(value)} is under the 1h floor "
                        "(add --force if you really mean it)",
                    )
    return settings
