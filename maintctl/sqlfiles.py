"""The SQL that maintctl ships: named queries, migrations and the reference application schema.

The files live in the repository's top-level `sql/` folder, which the wheel carries as
`maintctl/sql`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import cache
from pathlib import Path

_NAME = re.compile(r"^-- name: (\S+)\s*$", re.MULTILINE)
NO_TRANSACTION_MARK = "-- maintctl: no-transaction"


def sql_dir() -> Path:
    """The installed copy inside the package, or the repository's own in a development checkout."""
    packaged = Path(__file__).parent / "sql"
    return packaged if packaged.is_dir() else Path(__file__).parent.parent / "sql"


def read_sql(name: str) -> str:
    """A file of `sql/` by its path inside it."""
    # The files are part of maintctl itself, as trusted as a literal in the code: their text is
    # the only SQL text maintctl sends; values always travel as parameters.
    return (sql_dir() / name).read_text(encoding="utf-8")


@cache
def queries() -> dict[str, str]:
    """Every named query of `sql/queries.sql`, by name."""
    text = read_sql("queries.sql")
    parts = _NAME.split(text)
    # parts: [preamble, name1, body1, name2, body2, ...]
    return {name: body.strip() for name, body in zip(parts[1::2], parts[2::2], strict=True)}


def query(name: str) -> str:
    """One named query; a KeyError here is a bug that the query-name test catches first."""
    return queries()[name]


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    text: str

    @property
    def transactional(self) -> bool:
        return NO_TRANSACTION_MARK not in self.text

    def statements(self) -> list[str]:
        """The statements of a no-transaction migration, one by one: each ends with `;` at the end
        of a line, outside any $$-quoted function body."""
        statements, current, in_body = [], [], False
        for line in self.text.splitlines():
            if not in_body and line.lstrip().startswith("--"):
                continue
            current.append(line)
            in_body ^= line.count("$$") % 2 == 1
            if not in_body and line.rstrip().endswith(";"):
                statements.append("\n".join(current).strip().removesuffix(";").strip())
                current = []
        if "\n".join(current).strip():
            statements.append("\n".join(current).strip())
        return statements


@cache
def migrations() -> tuple[Migration, ...]:
    """The migrations in the order they apply: `NNNN_name.sql`."""
    found = []
    for path in sorted((sql_dir() / "migrations").glob("[0-9][0-9][0-9][0-9]_*.sql")):
        version, _, name = path.stem.partition("_")
        found.append(Migration(int(version), name, read_sql(f"migrations/{path.name}")))
    return tuple(found)


def hardening() -> str:
    return read_sql("hardening.sql")


def application_schema() -> str:
    """The reference definition of the application's tables (for the demo and the tests)."""
    return read_sql("application_schema.sql")
