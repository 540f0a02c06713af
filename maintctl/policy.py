"""The policy file, maintctl.toml: the application's own table and column names for each rule, and
its thresholds (DESIGN.md, "The policy file").

Found as `--config FILE`, else `MAINTCTL_CONFIG`, else `./maintctl.toml` when present. Parsed with
tomllib, validated by the settings' own pydantic model (maintctl.settings.Settings: its `rules`
field, whose per-rule models are built here from each rule's definition), and below the
environment and `.env` in precedence: flags, environment, `.env`, the file, the defaults.
"""

from __future__ import annotations

import difflib
import os
import tomllib
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, create_model

from maintctl.errors import ConfigError
from maintctl.rules import RULES, RULES_BY_NAME, Rule

DEFAULT_FILE = "maintctl.toml"
CONFIG_VARIABLE = "MAINTCTL_CONFIG"
# The keys of the file outside [rules.*]: what they set in the settings.
TOP_LEVEL = {"schema": "app_schema", "naive_time_zone": "naive_time_zone"}
# The threshold of a rule in its table.
THRESHOLD_KEY = "older_than"

FROM_FILE = "file"

# The --config flag of the command being run (None: not given).
config_flag: ContextVar[str | None] = ContextVar("config_flag", default=None)


@contextmanager
def config_flag_set(path: str | None) -> Iterator[None]:
    """`--config` for the duration of one command."""
    token = config_flag.set(path)
    try:
        yield
    finally:
        config_flag.reset(token)


@dataclass(frozen=True)
class PolicyFile:
    path: Path
    found_by: str  # --config, MAINTCTL_CONFIG or ./maintctl.toml
    document: dict[str, Any]


def find() -> tuple[Path, str] | None:
    """Where the policy file is, and how it was found; None when there is none."""
    flag = config_flag.get()
    if flag is not None:
        return Path(flag), "--config"
    variable = os.environ.get(CONFIG_VARIABLE)
    if variable:
        return Path(variable), CONFIG_VARIABLE
    default = Path(DEFAULT_FILE)
    return (default, f"./{DEFAULT_FILE}") if default.is_file() else None


def load() -> PolicyFile | None:
    """The policy file, parsed; a file that cannot be read or parsed is a configuration error."""
    found = find()
    if found is None:
        return None
    path, found_by = found
    try:
        document = tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(f"{found_by}: cannot read {path}: {exc.strerror or exc}") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from None
    return PolicyFile(path, found_by, document)


def file_key(field: str) -> str | None:
    """The key of the policy file that sets a Settings field (None: [rules], named in the
    message itself)."""
    for key, target in TOP_LEVEL.items():
        if target == field:
            return key
    for rule in RULES:
        if rule.threshold == field:
            return f"rules.{rule.name}.{THRESHOLD_KEY}"
    return None


def nearest(name: str, known: Iterable[str]) -> str:
    """` (did you mean X?)` for the known name closest to `name`, or nothing."""
    close = difflib.get_close_matches(name, list(known), n=1, cutoff=0.5)
    return f" (did you mean {close[0]}?)" if close else ""


# --- the models: one per rule, built from its definition ----------------------------------------


def policy_keys(rule: Rule) -> dict[str, Any]:
    """The keys a rule's [rules.NAME] table may hold, each with its default."""
    keys: dict[str, Any] = {"enabled": True}
    if any(table.source is None for table in rule.tables):
        keys["table"] = next(t.default for t in rule.tables if t.source is None)
    for key, column in rule.columns.items():
        if column.source is None:
            keys[key] = column.default
    for key, value in rule.values.items():
        if value.source is None:
            keys[key] = value.default
    return keys


def _name(value: Any) -> Any:
    if isinstance(value, str) and not value.strip():
        raise ValueError("a name cannot be empty")
    if isinstance(value, str) and len(value.encode()) > 63:
        raise ValueError(f"{value!r} is longer than PostgreSQL's 63 bytes for a name")
    return value


_Name = Annotated[str, AfterValidator(_name)]


def _rule_model(rule: Rule) -> type[BaseModel]:
    fields: dict[str, Any] = {}
    for key, default in policy_keys(rule).items():
        column = rule.columns.get(key)
        if column is not None and column.optional:
            fields[key] = (_Name | Literal[False], default)
        elif isinstance(default, bool):
            fields[key] = (bool, default)
        elif isinstance(default, tuple):
            fields[key] = (tuple[_Name, ...], default)
        else:
            fields[key] = (_Name, default)
    return create_model(
        f"{rule.name.title()}Policy",
        __config__=ConfigDict(extra="forbid", frozen=True),
        **fields,
    )


class PurgeEntry(BaseModel):
    """One [[purge]] table of the policy file."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str
    table: _Name
    time_column: _Name
    older_than: str
    key: _Name = "id"
    where: str | None = None


PURGE_MODEL = PurgeEntry


@cache
def rule_models() -> dict[str, type[BaseModel]]:
    """One model per rule, built from its definition when a policy file first needs them."""
    return {rule.name: _rule_model(rule) for rule in RULES}


def validate_rules(value: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """The [rules] tables of the file, each validated by its rule's model (unknown keys refused)."""
    if not isinstance(value, Mapping):
        raise ValueError("[rules] must be a table of rule tables")
    validated = {}
    for name, table in value.items():
        models = rule_models()
        if name not in models:
            raise ValueError(f"rules.{name}: no such rule{nearest(name, models)}")
        model = models[name]
        if not isinstance(table, Mapping):
            raise ValueError(f"rules.{name} must be a table")
        unknown = [key for key in table if key not in model.model_fields]
        if unknown:
            raise ValueError(
                f"rules.{name}.{unknown[0]}: unknown key{nearest(unknown[0], model.model_fields)}"
            )
        validated[name] = model.model_validate(dict(table)).model_dump(exclude_unset=True)
    return validated


def settings_values(file: PolicyFile) -> dict[str, Any]:
    """What the file sets, as Settings fields: the top-level keys, each rule's threshold, and
    the rules' names. An unknown key is refused, naming it and the nearest known one."""
    document = file.document
    known = {*TOP_LEVEL, "rules", "purge"}
    values: dict[str, Any] = {}
    for key in document:
        if key not in known:
            raise ConfigError(f"{file.path}: unknown key {key}{nearest(key, known)}")
    for key, field in TOP_LEVEL.items():
        if key in document:
            values[field] = document[key]
    rules: dict[str, dict[str, Any]] = {}
    for name, given in (document.get("rules") or {}).items():
        if not isinstance(given, Mapping):
            rules[name] = given  # refused by the model, naming it
            continue
        rule = RULES_BY_NAME.get(name)
        rules[name] = {key: value for key, value in given.items() if key != THRESHOLD_KEY}
        if rule is None or THRESHOLD_KEY not in given:
            continue
        threshold = given[THRESHOLD_KEY]
        if isinstance(threshold, Mapping):
            rules[name].update(_per_status(file, rule, threshold, given))
            values.setdefault("thresholds_by_status", {})[name] = dict(threshold)
            threshold = min(threshold.values(), key=_parsed) if threshold else threshold
        values[rule.threshold] = threshold
    if "rules" in document:
        values["rules"] = rules
    if "purge" in document:
        values["purge"] = document["purge"]
    return values


def _parsed(value: Any) -> Any:
    from maintctl.durations import parse_duration

    try:
        return parse_duration(value) if isinstance(value, str) else value
    except ValueError:
        return value  # refused, naming it, by the settings' own validation


def _per_status(
    file: PolicyFile, rule: Rule, threshold: Mapping[str, Any], given: Mapping[str, Any]
) -> dict[str, Any]:
    """The statuses a threshold per status names, as the rule's status list."""
    where = f"{file.path}: rules.{rule.name}.{THRESHOLD_KEY}"
    if rule.per_status is None:
        raise ConfigError(f"{where}: one duration for this rule, not one per status")
    if not threshold:
        raise ConfigError(f"{where}: name at least one status")
    statuses = list(threshold)
    listed = given.get(rule.per_status)
    if listed is not None and sorted(listed) != sorted(statuses):
        raise ConfigError(
            f"{where}: names the statuses {', '.join(statuses)}, "
            f"rules.{rule.name}.{rule.per_status} {', '.join(listed)}; give one of the two"
        )
    from maintctl.durations import parse_duration

    for status, value in threshold.items():
        try:
            if not isinstance(value, str):
                raise ValueError(f"{value!r} is not a duration")
            parse_duration(value)
        except ValueError as exc:
            raise ConfigError(f"{where}.{status}: {exc}") from None
    return {rule.per_status: statuses}


# --- maintctl config: each resolved value and where it came from ---------------------------


@dataclass(frozen=True)
class Resolved:
    key: str  # as the policy file names it: schema, rules.stuck.table, rules.temp.older_than
    value: Any  # as the file would write it
    source: str  # flag, environment (NAME), .env (NAME), file, default


@dataclass(frozen=True)
class ConfigReport:
    file: str | None
    found_by: str | None
    values: tuple[Resolved, ...]


def describe(settings: Any, flags: Mapping[str, Any]) -> ConfigReport:
    """Every value of the policy as `settings` (maintctl.settings.Settings) resolved it."""
    from maintctl.durations import format_duration
    from maintctl.settings import env_name, value_origin

    given = {name: value for name, value in flags.items() if value is not None}

    def origin(field: str) -> str:
        found = value_origin(field, given)
        return f"{found} ({env_name(field)})" if found in ("environment", ".env") else found

    values = [
        Resolved(key, getattr(settings, field), origin(field)) for key, field in TOP_LEVEL.items()
    ]
    for rule in RULES:
        set_in_file = settings.rules.get(rule.name, {})
        for key, default in policy_keys(rule).items():
            value = set_in_file.get(key, default)
            shown = list(value) if isinstance(value, tuple | list) else value
            values.append(
                Resolved(
                    f"rules.{rule.name}.{key}", shown, "file" if key in set_in_file else "default"
                )
            )
        by_status = settings.thresholds_by_status.get(rule.name)
        threshold: Any = (
            {status: format_duration(value) for status, value in by_status.items()}
            if by_status
            else format_duration(getattr(settings, rule.threshold))
        )
        key = f"rules.{rule.name}.{THRESHOLD_KEY}"
        values.append(Resolved(key, threshold, origin(rule.threshold)))
    for entry in settings.purge:
        for key in ("table", "time_column", "key", "where"):
            values.append(Resolved(f"purge.{entry['name']}.{key}", entry.get(key), "file"))
        older_than = format_duration(entry["older_than"])
        values.append(Resolved(f"purge.{entry['name']}.{THRESHOLD_KEY}", older_than, "file"))
    found = load()
    return ConfigReport(
        str(found.path) if found else None, found.found_by if found else None, tuple(values)
    )
