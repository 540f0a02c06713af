"""`[[purge]]` rules: rows of any other table older than a threshold, optionally only those a
`where` condition selects, deleted in batches like the four rules' (`sql/rules/purge.sql`), by
`maintctl run` after the four and by `maintctl purge NAME`.

An entry of the policy file becomes a Rule here. Its `where` is SQL text, the one piece of the
policy that is not a name: before any run uses it, migrate and doctor check that it is a boolean
condition on that table alone (check_where).
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any

from maintctl.rules import RULES, Column, Rule, Table

if TYPE_CHECKING:
    from maintctl.db import Connection
    from maintctl.settings import Settings

NAME = re.compile(r"^[a-z][a-z0-9-]{0,39}$")
# Characters a condition never needs and that could end the statement or the function body that
# holds it.
FORBIDDEN = (";", "$", "--", "/*")
TAKEN = {name for rule in RULES for name in (rule.name, rule.command)}


def validate_entry(entry: Any) -> dict[str, Any]:
    """One [[purge]] entry, checked: its keys, its name and its threshold (pydantic model)."""
    from maintctl.policy import PURGE_MODEL

    validated = PURGE_MODEL.model_validate(entry).model_dump()
    name = validated["name"]
    if not NAME.match(name):
        raise ValueError(f"purge name {name!r}: lowercase letters, digits and - (a command name)")
    if name in TAKEN:
        raise ValueError(f"purge name {name!r} is one of the four rules' own")
    where = validated.get("where")
    if where is not None:
        bad = [mark for mark in FORBIDDEN if mark in where]
        if bad or not where.strip():
            raise ValueError(f"purge {name}: where may not hold {bad[0] if bad else 'nothing'}")
    return validated


def purge_rule(entry: dict[str, Any]) -> Rule:
    """The Rule of one validated [[purge]] entry."""
    name, table = entry["name"], entry["table"]
    slug = name.replace("-", "_")
    return Rule(
        name=name,
        command=f"purge {name}",
        summary=f"Delete rows of {table} older than the threshold ([[purge]] {name}).",
        example=f"maintctl purge {name} --dry-run",
        threshold=f"purge:{name}",
        json_key="",
        count_key="",
        label=f"Rows of {table} to purge ({name})",
        step_function=f"purge_{slug}_step",
        count_function=f"count_purge_{slug}",
        tables=(Table("target", "t", ("SELECT", "UPDATE", "DELETE"), table),),
        columns={
            "key": Column("target", entry["key"]),
            "time_column": Column("target", entry["time_column"]),
        },
        changes="target",
        purge=True,
        where=entry.get("where"),
    )


def check_where(conn: Connection, settings: Settings, rule: Rule) -> None:
    """Refuse (exit 78) a `where` that is not a boolean condition on the rule's table alone, or
    that calls a function that is not immutable. PostgreSQL checks it as it checks an index
    predicate (the rule's index is partial on it), on an empty copy of the table, in a
    transaction that is rolled back: nothing stays."""
    import psycopg
    from psycopg import sql

    from maintctl import db
    from maintctl.errors import ConfigError
    from maintctl.rules.generate import policy_of, table_name

    if rule.where is None:
        return
    table = table_name(rule, rule.tables[0], policy_of(settings))
    names = {"table": sql.Identifier(settings.app_schema, table), "where": sql.SQL(rule.where)}
    try:
        with db.transaction(conn, settings):
            db.execute_composed(conn, "where_check_table", names)
            db.execute_composed(conn, "where_check_index", names)
            raise psycopg.Rollback
    except psycopg.errors.UndefinedTable:
        return  # the columns check names the missing table
    except (psycopg.errors.SyntaxError, psycopg.errors.DataError) as exc:
        problem = db.first_line(exc)
    except psycopg.errors.ProgrammingError as exc:  # undefined column or function, wrong type
        problem = db.first_line(exc)
    except psycopg.errors.FeatureNotSupported as exc:  # a subquery
        problem = db.first_line(exc)
    except psycopg.errors.InvalidObjectDefinition as exc:  # a function that is not immutable
        problem = db.first_line(exc)
    else:
        return
    raise ConfigError(f"[[purge]] {rule.name}: where {rule.where!r}: {problem}")
