"""Each rule's SQL, generated from its template (`sql/rules/<name>.sql`) and the policy.

`maintctl migrate` installs what this builds: the columns maintctl adds, the indexes (built
CONCURRENTLY), and the functions of each rule's step and count, then the shared step function
and the pg_cron procedure (`sql/rules/runner.sql`). Every name that comes from the policy is
quoted by psycopg.sql (an Identifier, or a Literal for a status): no name is spliced. The one
piece of SQL text a policy holds, a [[purge]] rule's `where`, is checked first
(maintctl.rules.purge.check_where).

What was installed is recorded as a fingerprint of what the SQL was generated from (the policy,
the rules' definitions, the templates, this generator: maintenance.installed_rules);
a command that finds another fingerprint than its own policy gives refuses to run (exit 78,
`run: maintctl migrate`). Thresholds are parameters of the functions, not part of the SQL, so a
changed threshold needs no migrate.
"""

from __future__ import annotations

import hashlib
import re
import string
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import timedelta
from functools import cache
from pathlib import Path
from typing import Any

from psycopg import sql

from maintctl.rules import RULES, RULES_BY_NAME, Column, PolicyValue, Rule, Table
from maintctl.sqlfiles import read_sql

_SECTION = re.compile(r"^-- section: (\w+)\s*$", re.MULTILINE)
_INDEX = re.compile(r"^-- index: (\w+) (\S+)\s*$", re.MULTILINE)
RUNNER_TEMPLATE = "rules/runner.sql"
NAIVE = "timestamp without time zone"
# A list column offers its first few columns one by one: {alias.key[0]}, {alias.key[1]}; past its
# length they are null.
LIST_POSITIONS = 2


@dataclass(frozen=True)
class Policy:
    """The application schema and the policy's names, by rule and key (defaults: the rules')."""

    schema: str
    names: tuple[tuple[str, tuple[tuple[str, PolicyValue], ...]], ...] = ()
    disabled: tuple[str, ...] = ()  # rules the policy turns off (enabled = false)
    # The [[purge]] entries: (name, table, time_column, key, where), thresholds left out.
    purge: tuple[tuple[str, str, str, str, str | None], ...] = ()
    # The catalog's type of each column the rules read, (table, column, type as format_type
    # gives it), read at migrate (maintctl.rules.install.catalog_policy): a key of any orderable
    # type is walked, positioned and recorded in its own type.
    types: tuple[tuple[str, str, str], ...] = ()
    # The zone a `timestamp without time zone` column's values are read and written in.
    naive_time_zone: str = "UTC"

    @classmethod
    def of(
        cls,
        schema: str,
        names: Mapping[str, Mapping[str, PolicyValue]],
        disabled: tuple[str, ...] = (),
        purge: tuple[tuple[str, str, str, str, str | None], ...] = (),
    ) -> Policy:
        return cls(
            schema,
            tuple(
                sorted((rule, tuple(sorted(keys.items()))) for rule, keys in names.items() if keys)
            ),
            disabled,
            purge,
        )

    @property
    def fixed_rules(self) -> tuple[Rule, ...]:
        """The four rules, less those this policy turns off, in run order."""
        return tuple(rule for rule in RULES if rule.name not in self.disabled)

    @property
    def purge_rules(self) -> tuple[Rule, ...]:
        from maintctl.rules.purge import purge_rule

        return tuple(
            purge_rule({"name": n, "table": t, "time_column": c, "key": k, "where": w})
            for n, t, c, k, w in self.purge
        )

    @property
    def rules(self) -> tuple[Rule, ...]:
        """Every rule this policy applies, in run order: the four, then the [[purge]] ones."""
        return self.fixed_rules + self.purge_rules

    def with_types(self, types: tuple[tuple[str, str, str], ...]) -> Policy:
        return Policy(
            self.schema,
            self.names,
            self.disabled,
            self.purge,
            tuple(sorted(types)),
            self.naive_time_zone,
        )

    def type_of(self, table: str, column: str) -> str | None:
        return next((t for name, c, t in self.types if (name, c) == (table, column)), None)

    def given(self, rule: str, key: str) -> PolicyValue | None:
        for name, keys in self.names:
            if name == rule:
                return dict(keys).get(key)
        return None


def policy_of(settings: Any) -> Policy:
    """The policy of the settings (maintctl.settings.Settings)."""
    from maintctl.policy import policy_keys

    disabled = tuple(rule.name for rule in RULES if not settings.rule_enabled(rule.name))
    # A name the file gives as its default is no change: the same SQL, the same fingerprint.
    names = {
        rule: {k: v for k, v in keys.items() if policy_keys(RULES_BY_NAME[rule]).get(k) != v}
        for rule, keys in settings.rule_names().items()
    }
    purge = tuple(
        (e["name"], e["table"], e["time_column"], e["key"], e.get("where")) for e in settings.purge
    )
    policy = Policy.of(settings.app_schema, names, disabled, purge)
    return Policy(
        policy.schema, policy.names, policy.disabled, policy.purge, (), settings.naive_time_zone
    )


# --- resolving a rule's names ------------------------------------------------------------------


def table_name(rule: Rule, table: Table, policy: Policy) -> str:
    if table.source is not None:
        source = RULES_BY_NAME[table.source]
        return table_name(source, source.tables[0], policy)
    given = policy.given(rule.name, "table")
    return str(given) if given is not None else table.default


def column_names(rule: Rule, key: str, policy: Policy) -> tuple[str, ...]:
    """The column (or coalesce order) behind a key; none for an optional column the policy says
    the table lacks (false)."""
    column = rule.columns[key]
    if column.source is not None:
        return column_names(RULES_BY_NAME[column.source], column.source_key or key, policy)
    if column.needs is not None and not column_names(rule, column.needs, policy):
        return ()
    given = policy.given(rule.name, key)
    value = given if given is not None else column.default
    if isinstance(value, bool):
        return ()
    return (value,) if isinstance(value, str) else tuple(value)


def value_of(rule: Rule, key: str, policy: Policy) -> tuple[str, ...]:
    value_def = rule.values[key]
    if value_def.source is not None:
        return value_of(RULES_BY_NAME[value_def.source], key, policy)
    given = policy.given(rule.name, key)
    value = given if given is not None else value_def.default
    assert not isinstance(value, bool), f"{rule.name}.{key} is a status, not a flag"
    return (value,) if isinstance(value, str) else tuple(value)


@dataclass(frozen=True)
class TableNeeds:
    """What one rule needs of one application table."""

    rule: str
    table: str
    privileges: tuple[str, ...]
    columns: tuple[str, ...]  # that must exist before migrate
    added: tuple[str, ...]  # that migrate adds when missing


def needs(rule: Rule, policy: Policy) -> list[TableNeeds]:
    """The tables a rule works on, with the privileges and the columns it needs on each: exactly
    the columns its template reads or writes (tests/test_rules_as_data.py holds them to that)."""
    found = []
    for table in rule.tables:
        keys = [key for key, column in rule.columns.items() if column.table == table.role]
        existing = [
            name
            for k in keys
            if not rule.columns[k].added
            for name in column_names(rule, k, policy)
        ]
        added = [
            name for k in keys if rule.columns[k].added for name in column_names(rule, k, policy)
        ]
        found.append(
            TableNeeds(
                rule.name,
                table_name(rule, table, policy),
                table.privileges,
                tuple(dict.fromkeys(existing)),
                tuple(dict.fromkeys(added)),
            )
        )
    return found


def typed_columns(policy: Policy) -> set[tuple[str, str]]:
    """(table, column) of each column the rules read: the generated SQL, and so its fingerprint,
    depends on their types (a key's walk is declared in its type, {type.key}; a naive timestamp
    is read in the policy's naive_time_zone)."""
    return {(need.table, column) for need in all_needs(policy) for column in need.columns}


def cleared_columns(rule: Rule, policy: Policy) -> tuple[str, ...]:
    """The columns the rule's template sets to null ({set_null.key}: compact's payload, log)."""
    keys = [
        name.removeprefix("set_null.")
        for name in placeholder_names(read_sql(rule.template))
        if name.startswith("set_null.")
    ]
    return tuple(column for key in sorted(keys) for column in column_names(rule, key, policy))


def all_needs(policy: Policy) -> list[TableNeeds]:
    return [need for rule in policy.rules for need in needs(rule, policy)]


def application_tables(policy: Policy) -> tuple[str, ...]:
    """The application's tables the enabled rules work on, each once, in the rules' order."""
    return tuple(dict.fromkeys(need.table for need in all_needs(policy)))


# --- templates -----------------------------------------------------------------------------


def sections(text: str) -> dict[str, str]:
    """A template's sections by name (`-- section: NAME` starts one)."""
    parts = _SECTION.split(text)
    return dict(zip(parts[1::2], parts[2::2], strict=True))


def index_blocks(section: str) -> Iterator[tuple[str, str, str]]:
    """(table role, name suffix, definition) of each `-- index: ROLE SUFFIX` of a section."""
    parts = _INDEX.split(section)
    for role, suffix, body in zip(parts[1::3], parts[2::3], parts[3::3], strict=True):
        lines = [line for line in body.splitlines() if not line.lstrip().startswith("--")]
        yield role, suffix, "\n".join(lines).strip().removesuffix(";").strip()


def placeholder_names(text: str) -> set[str]:
    """Every {placeholder} of a template."""
    return {name for _, name, _, _ in string.Formatter().parse(text) if name is not None}


def placeholder_key(name: str) -> str:
    """The rule's key behind a placeholder: {r.last_seen[0]} and {set_null.clear} name keys too."""
    return name.rsplit(".", 1)[-1].split("[", 1)[0]


def _interval(value: timedelta) -> sql.Composable:
    seconds = int(value.total_seconds())
    text = (
        f"{seconds // 86400} days"
        if seconds % 86400 == 0
        else f"{seconds // 3600} hours"
        if seconds % 3600 == 0
        else f"{seconds} seconds"
    )
    return sql.SQL("interval {}").format(sql.Literal(text))


def _default_threshold(rule: Rule) -> timedelta:
    from maintctl.settings import Settings

    default = Settings.model_fields[rule.threshold].default
    assert isinstance(default, timedelta)
    return default


def _literals(values: tuple[str, ...]) -> sql.Composable:
    return sql.SQL(", ").join(sql.Literal(value) for value in values)


def _coalesce(columns: list[sql.Composable]) -> sql.Composable:
    return sql.SQL("coalesce({})").format(sql.SQL(", ").join(columns))


def placeholders(rule: Rule, policy: Policy) -> dict[str, sql.Composable]:
    """What each {placeholder} of the rule's template stands for under the policy."""
    found: dict[str, sql.Composable] = {}
    for table in rule.tables:
        found[table.role] = sql.Identifier(policy.schema, table_name(rule, table, policy))
    for key, column in rule.columns.items():
        names = column_names(rule, key, policy)
        alias = rule.table(column.table).alias
        table_of = table_name(rule, rule.table(column.table), policy)
        zone = sql.Literal(policy.naive_time_zone)
        naive = [policy.type_of(table_of, name) == NAIVE for name in names]
        _column_placeholders(found, key, alias, names, column, naive, zone)
        # {type.key}: the column's type in the catalog (a key's walk position is declared in it).
        # Before the catalog is read (a policy without types), the reference schema's bigint.
        typed = policy.type_of(table_of, names[0]) if len(names) == 1 else None
        found[f"type.{key}"] = sql.SQL(typed or "bigint")
        # {now.key}: the time now as the column stores it (a naive one: in naive_time_zone).
        found[f"now.{key}"] = (
            sql.SQL("(now() at time zone {})").format(zone) if any(naive) else sql.SQL("now()")
        )
    for key in rule.values:
        found[key] = _literals(value_of(rule, key, policy))
    # The steps' search_path: the application's triggers, which fire in the steps' DML and name
    # its tables without a schema, find them as they would for the application; built-ins still
    # come first, and maintctl's own objects and the rule's tables are named with their schema.
    found["search_path"] = sql.SQL("pg_catalog, {}, pg_temp").format(sql.Identifier(policy.schema))
    if rule.purge:
        found["step_function"] = sql.Identifier("maintenance", rule.step_function)
        found["count_function"] = sql.Identifier("maintenance", rule.count_function)
        # The one piece of SQL text of the policy, checked by maintctl.rules.purge.check_where.
        found["where"] = found["t.where"] = (
            sql.SQL("({})").format(sql.SQL(rule.where)) if rule.where else sql.SQL("true")
        )
    else:
        found["default_older_than"] = _interval(_default_threshold(rule))
    return found


def _column_placeholders(
    found: dict[str, sql.Composable],
    key: str,
    alias: str,
    names: tuple[str, ...],
    column: Column,
    naive: list[bool],
    zone: sql.Composable,
) -> None:
    """A naive timestamp column reads as the instant it holds in the zone (a timestamptz, so that
    it compares with the cutoffs whatever the session's TimeZone), in the indexes too; a column
    maintctl writes keeps its bare name ({key}) as the target of its SET."""

    def read(*parts: str) -> sql.Composable:
        named = sql.Identifier(*parts)
        if naive[names.index(parts[-1])]:
            return sql.SQL("({} at time zone {})").format(named, zone)
        return named

    if column.optional:
        found[f"has.{key}"] = sql.SQL("true" if names else "false")
        if not names:
            found[key] = found[f"{alias}.{key}"] = sql.SQL("null")
            return
    if isinstance(column.default, str) and len(names) == 1:
        found[key] = sql.Identifier(names[0]) if column.written else read(names[0])
        found[f"{alias}.{key}"] = read(alias, names[0])
        return
    found[key] = _coalesce([read(name) for name in names])
    found[f"{alias}.{key}"] = _coalesce([read(alias, name) for name in names])
    for position in range(max(len(names), LIST_POSITIONS)):
        found[f"{alias}.{key}[{position}]"] = (
            sql.Identifier(alias, names[position])
            if position < len(names)
            else sql.SQL("null::text")
        )
    found[f"set_null.{key}"] = sql.SQL(", ").join(
        sql.SQL("{} = null").format(sql.Identifier(name)) for name in names
    )


@dataclass(frozen=True)
class Thresholds:
    """What the pg_cron procedure applies when its caller gives no threshold: the thresholds
    `maintctl run` would use (flags aside) where migrate ran them, generated as its defaults.
    Not part of the fingerprint (a changed threshold needs no migrate for the CLI): the installed
    procedure carries their digest as its comment, and migrate installs it anew when it differs."""

    # The four rules' own thresholds, by rule name (for a rule with a threshold per status, the
    # shortest of them, as the CLI's).
    rules: tuple[tuple[str, timedelta], ...]
    # A threshold per status, by rule name (older_than = { completed = "7d", ... }).
    by_status: tuple[tuple[str, tuple[tuple[str, timedelta], ...]], ...] = ()
    # Each [[purge]] rule's older_than, by name.
    purge: tuple[tuple[str, timedelta], ...] = ()

    @property
    def digest(self) -> str:
        return hashlib.sha256(repr(self).encode()).hexdigest()[:16]


def default_thresholds() -> Thresholds:
    """The rules' default thresholds, with no policy file or environment."""
    return Thresholds(tuple((rule.name, _default_threshold(rule)) for rule in RULES))


def thresholds_of(settings: Any) -> Thresholds:
    """The thresholds of the settings (maintctl.settings.Settings), for the procedure."""
    return Thresholds(
        tuple((rule.name, settings.threshold_of(rule)) for rule in RULES),
        tuple(
            (rule.name, tuple(by_status.items()))
            for rule in RULES
            if (by_status := settings.thresholds_by_status.get(rule.name))
        ),
        tuple((rule.name, settings.threshold_of(rule)) for rule in settings.purge_rules()),
    )


def runner_placeholders(
    policy: Policy, thresholds: Thresholds | None = None
) -> dict[str, sql.Composable]:
    """The placeholders of runner.sql, each built from the list of rules. The procedure takes a
    threshold for each of the four (its signature stays, whatever the policy), defaulting to the
    policy's; it steps the rules the policy applies, the [[purge]] ones last."""
    from maintctl.settings import camel

    given = thresholds or default_thresholds()
    dispatch = sql.SQL("\n    ").join(
        sql.SQL(
            "{keyword} p_rule = {name} then\n"
            "      select * into piece\n"
            "        from {step}(p_cutoff, p_threshold, piece_size, next_position, p_run_id,\n"
            "                    p_cutoffs, p_archive);"
        ).format(
            keyword=sql.SQL("if" if position == 0 else "elsif"),
            name=sql.Literal(rule.name),
            step=sql.Identifier("maintenance", rule.step_function),
        )
        for position, rule in enumerate(policy.rules)
    )
    count_wrappers = sql.SQL("\n\n").join(
        sql.SQL(
            "create or replace function {count}(p_cutoff timestamptz, p_limit bigint)\n"
            "returns bigint\n"
            "language sql stable set search_path = pg_catalog, pg_temp\n"
            "as $$ select {count}(p_cutoff, p_limit, null) $$;"
        ).format(count=sql.Identifier("maintenance", rule.count_function))
        for rule in policy.fixed_rules
    )
    own = dict(given.rules)
    by_status = dict(given.by_status)
    # A rule with a threshold per status defaults to null: the policy's threshold of each status;
    # a threshold given is every status's, as a flag's is for the CLI.
    parameters = sql.SQL(",\n  ").join(
        sql.SQL("{} interval default {}").format(
            sql.Identifier(rule.threshold),
            sql.SQL("null") if rule.name in by_status else _interval(own[rule.name]),
        )
        for rule in RULES
    )
    own_thresholds = [
        sql.SQL("{}, {}").format(
            sql.Literal(rule.name),
            sql.SQL("coalesce({}, {})").format(
                sql.Identifier(rule.threshold), _interval(own[rule.name])
            )
            if rule.name in by_status
            else sql.Identifier(rule.threshold),
        )
        for rule in RULES
    ] + [
        sql.SQL("{}, {}").format(sql.Literal(name), _interval(value)) for name, value in given.purge
    ]
    per_status = [
        sql.SQL("{name}, case when {parameter} is null then jsonb_build_object({each}) end").format(
            name=sql.Literal(rule.name),
            parameter=sql.Identifier(rule.threshold),
            each=sql.SQL(", ").join(
                sql.SQL("{}, {}").format(sql.Literal(status), _interval(value))
                for status, value in by_status[rule.name]
            ),
        )
        for rule in RULES
        if rule.name in by_status
    ]
    shown = [
        sql.SQL("{}, maintenance.duration_text((rule_thresholds ->> {})::interval)").format(
            sql.Literal(camel(rule.threshold)), sql.Literal(rule.name)
        )
        for rule in RULES
    ] + [
        sql.SQL(
            "{}, (select jsonb_object_agg(s.key, maintenance.duration_text(s.value::interval))"
            " from jsonb_each_text(status_thresholds -> {}) s)"
        ).format(sql.Literal(camel(rule.threshold) + "ByStatus"), sql.Literal(rule.name))
        for rule in RULES
        if rule.name in by_status
    ]
    if given.purge:
        shown.append(
            sql.SQL("'purge', jsonb_build_object({})").format(
                sql.SQL(", ").join(
                    sql.SQL("{}, maintenance.duration_text({})").format(
                        sql.Literal(name), _interval(value)
                    )
                    for name, value in given.purge
                )
            )
        )
    return {
        "count_wrappers": count_wrappers,
        "step_dispatch": dispatch,
        "threshold_parameters": parameters,
        "rule_thresholds": sql.SQL("jsonb_build_object({})").format(
            sql.SQL(", ").join(own_thresholds)
        ),
        "status_thresholds": sql.SQL("jsonb_strip_nulls(jsonb_build_object({}))").format(
            sql.SQL(", ").join(per_status)
        )
        if per_status
        else sql.SQL("'{}'::jsonb"),
        "thresholds_json": sql.SQL(", ").join(shown),
        # The four the policy applies, then its [[purge]] rules: `maintctl run`'s order.
        "rule_names": _literals(tuple(rule.name for rule in policy.rules)),
        "thresholds_digest": sql.Literal(given.digest),
    }


# --- what migrate installs -----------------------------------------------------------------


@dataclass(frozen=True)
class IndexBuild:
    table: sql.Identifier
    name: str  # in the application schema
    definition: sql.Composable  # what follows `create index concurrently NAME`
    digest: str  # of the definition, kept as the index's comment


@dataclass(frozen=True)
class Installation:
    columns: tuple[sql.Composed, ...]  # statements that add maintctl's own columns
    indexes: tuple[IndexBuild, ...]
    functions: tuple[sql.Composed, ...]
    fingerprint: str
    # The comment of the pg_cron procedure: the digest of its default thresholds (Thresholds).
    procedure_comment: str = ""


def index_name(table: str, suffix: str) -> str:
    """maintctl's name for one of its indexes: maintctl_<table>_<suffix>, cut to 63 bytes."""
    return f"maintctl_{table}_{suffix}"[:63]


@cache
def installation(policy: Policy, thresholds: Thresholds | None = None) -> Installation:
    """Everything migrate installs for the policy, generated once per process; `thresholds`
    (default: the rules' defaults) are the pg_cron procedure's defaults."""
    columns: list[sql.Composed] = []
    indexes: list[IndexBuild] = []
    functions: list[sql.Composed] = []
    for rule in policy.rules:
        filled = placeholders(rule, policy)
        parts = sections(read_sql(rule.template))
        if "columns" in parts:
            columns.append(sql.SQL(parts["columns"].strip()).format(**filled))
        for role, named, body in index_blocks(parts.get("indexes", "")):
            suffix = named.replace("{rule}", rule.slug)
            table = rule.table(role)
            definition = sql.SQL(body).format(**filled)
            text = definition.as_string(None)
            indexes.append(
                IndexBuild(
                    sql.Identifier(policy.schema, table_name(rule, table, policy)),
                    index_name(table_name(rule, table, policy), suffix),
                    definition,
                    hashlib.sha256(text.encode()).hexdigest()[:16],
                )
            )
        functions.append(sql.SQL(parts["functions"].strip()).format(**filled))
    runner = sections(read_sql(RUNNER_TEMPLATE))
    functions.append(
        sql.SQL(runner["functions"].strip()).format(**runner_placeholders(policy, thresholds))
    )
    return Installation(
        tuple(columns),
        tuple(indexes),
        tuple(functions),
        fingerprint(policy),
        (thresholds or default_thresholds()).digest,
    )


@cache
def fingerprint(policy: Policy) -> str:
    """What the generated SQL depends on, hashed without generating it (every command checks
    it): the policy, the rules' definitions and defaults, the templates and this generator."""
    parts = [repr(policy), repr(RULES), Path(__file__).read_text(encoding="utf-8")]
    parts += [repr(_default_threshold(rule)) for rule in RULES]
    parts += [read_sql(rule.template) for rule in policy.rules]
    parts.append(read_sql(RUNNER_TEMPLATE))
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()
