"""The maintenance rules, each one piece of data: `maintctl/rules/stuck.py`, `temp.py`,
`compact.py`, `raw.py`. Every part of maintctl reads them: the SQL of each rule's steps and count
(`sql/rules/<name>.sql`, generated at `migrate` by maintctl.rules.generate), the CLI's commands,
the dry run and `status`, doctor's checks, `grant`, `--vacuum`, metrics, rendering, the ledger and
the bench. Adding a rule is one definition here, one template there and one test file.

A rule names its tables and columns by policy key (the keys of the `[rules.<name>]` table of
maintctl.toml) with the reference schema's names as defaults. This module imports nothing heavy:
the CLI builds its commands from it, and `maintctl --help` stays fast.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

# A policy value: a name, or an ordered list of names (a coalesce order, or columns to clear).
PolicyValue = str | tuple[str, ...] | bool  # false: an optional column the table lacks


@dataclass(frozen=True)
class Table:
    """An application table a rule works on, as its SQL template names it (`{role}`, alias `alias`).

    `source` names another rule whose policy gives this table (raw reads the runs of stuck)."""

    role: str
    alias: str
    privileges: tuple[str, ...]  # every batch locks its rows first: UPDATE even where it deletes
    default: str = ""  # the reference schema's name (none when `source` gives it)
    source: str | None = None


@dataclass(frozen=True)
class Column:
    """A column (or, with a tuple default, a coalesce order of columns) of one of a rule's tables.

    In the template `{key}` is the bare name, `{alias.key}` the name qualified by the table's alias.
    `source` names another rule whose policy gives this column under `source_key`."""

    table: str  # the role of its Table
    default: PolicyValue = ""  # the reference schema's (none when `source` gives it)
    source: str | None = None
    source_key: str | None = None
    added: bool = False  # maintctl's own column: migrate adds it when it is missing
    # The policy may give false: the table has no such column. Its placeholders are then null and
    # {has.key} is false; a column that `needs` another is absent with it.
    optional: bool = False
    needs: str | None = None
    # maintctl writes it: {key} is the bare name (a SET target), its value {now.key}.
    written: bool = False


@dataclass(frozen=True)
class Value:
    """A literal of the rule (a status, or a list of statuses): `{key}` in the template."""

    default: PolicyValue = ""
    source: str | None = None  # another rule whose policy gives it, under the same key
    column: str = "status_column"  # the key of the column it is a value of


@dataclass(frozen=True)
class Rule:
    name: str  # as the JSON, the ledger, the metrics and the policy file name it
    command: str  # the CLI command that runs it alone
    summary: str  # the command's help
    example: str  # the command's example
    threshold: str  # the Settings field of its threshold (MAINTCTL_<FIELD>)
    json_key: str  # the total's key in the run's JSON report
    count_key: str  # its count's key in the status JSON; the view's column is its snake_case
    label: str  # its count's line in the status table
    step_function: str  # maintenance.<step_function>: one batch (generated from the template)
    count_function: str  # maintenance.<count_function>(cutoff, limit): what it would touch
    tables: tuple[Table, ...]
    columns: Mapping[str, Column]
    changes: str  # the role of the table it changes (for --vacuum)
    values: Mapping[str, Value] = field(default_factory=dict)
    emits_paths: bool = False  # its deleted rows' files go to the storage outbox (--emit-paths)
    # The value key (a list of statuses) that a threshold per status gives, when older_than may be
    # a table of status = duration: the rule then applies to exactly those statuses.
    per_status: str | None = None
    # A [[purge]] rule of the policy file (maintctl/rules/purge.py): its template is purge.sql,
    # its threshold the entry's older_than, its condition the entry's where.
    purge: bool = False
    where: str | None = None
    # A rule that updates rows rather than deleting them: the keys of the columns whose previous
    # values the archive keeps (its key first), so that `maintctl restore` can put them back. A
    # rule that deletes archives whole rows (docs/archive.md).
    archived: tuple[str, ...] = ()

    @property
    def template(self) -> str:
        """Its SQL template, a file of `sql/`."""
        return "rules/purge.sql" if self.purge else f"rules/{self.name}.sql"

    @property
    def slug(self) -> str:
        """Its name as part of an SQL name."""
        return self.name.replace("-", "_")

    def table(self, role: str) -> Table:
        return next(table for table in self.tables if table.role == role)

    @property
    def view_column(self) -> str:
        return "".join(f"_{c.lower()}" if c.isupper() else c for c in self.count_key)


# Imported after the classes they use.
from maintctl.rules.compact import RULE as COMPACT  # noqa: E402
from maintctl.rules.raw import RULE as RAW  # noqa: E402
from maintctl.rules.stuck import RULE as STUCK  # noqa: E402
from maintctl.rules.temp import RULE as TEMP  # noqa: E402

# The order in which `maintctl run` applies them.
RULES: tuple[Rule, ...] = (STUCK, TEMP, COMPACT, RAW)
RULES_BY_NAME = {rule.name: rule for rule in RULES}
