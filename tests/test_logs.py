"""The step log on stderr: text by default, JSON lines with --log-format json, --quiet for cron,
colour only on a terminal and never with NO_COLOR; stdout keeps the result alone."""

from __future__ import annotations

import json
import os
import pty
import select
import subprocess
from typing import Any

from tests.conftest import Cli
from tests.data import Conn, load_sample
from tests.test_commands import maintctl_command

EVENTS = ["connected", "lease_taken", "run_started", *["task_done"] * 4, "run_finished"]


def test_text_log_is_one_line_per_step_on_stderr(cli: Cli, conn: Conn) -> None:
    load_sample(conn)

    result = cli("run", "--json")

    assert result.exit_code == 0
    document = json.loads(result.stdout)  # stdout: the one JSON object, nothing else
    lines = result.stderr.splitlines()
    assert len(lines) == len(EVENTS)
    assert all(line.startswith("maintctl: ") for line in lines)
    assert lines[0].startswith("maintctl: connected to ")
    assert "(PostgreSQL " in lines[0]
    assert lines[1] == "maintctl: run lease taken"
    assert lines[2] == f"maintctl: run {document['runId']} started (run)"
    assert lines[3].startswith("maintctl: stuck: ok, 15 rows in 2 batch(es), ")  # 10, then 5
    assert lines[4].startswith("maintctl: temp: ok, 289 rows in ")
    assert " of WAL" in lines[4]
    assert lines[-1].startswith(f"maintctl: run {document['runId']} succeeded in ")
    assert lines[-1].endswith(", 764 rows (exit 0)")


def json_lines(stderr: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in stderr.splitlines()]


def test_json_log_lines_parse_and_agree_with_the_run(cli: Cli, conn: Conn) -> None:
    load_sample(conn)

    result = cli("run", "--json", "--log-format", "json")

    assert result.exit_code == 0
    document = json.loads(result.stdout)
    records = json_lines(result.stderr)
    assert [record["event"] for record in records] == EVENTS
    for record in records:
        assert {"ts", "level", "event", "message"} <= set(record)
        assert record["ts"].endswith("Z")
        assert record["level"] == "info"
    done = [record for record in records if record["event"] == "task_done"]
    assert [(r["task"], r["rows"], r["status"]) for r in done] == [
        (t["task"], t["rows"], t["status"]) for t in document["tasks"]
    ]
    assert all(r["runId"] == document["runId"] for r in done)
    assert all(isinstance(r["durationMs"], int) for r in done)
    finished = records[-1]
    assert finished["exitCode"] == 0
    assert finished["rows"] == 764
    assert finished["status"] == "succeeded"


def test_log_format_from_the_environment_and_errors_in_json_too(cli: Cli) -> None:
    unreachable = {
        "MAINTCTL_DATABASE_URL": "postgresql://maintctl@127.0.0.1:1/x",
        "MAINTCTL_CONNECT_TIMEOUT": "1s",
        "MAINTCTL_LOG_FORMAT": "json",
    }

    result = cli("run", env=unreachable)

    assert result.exit_code == 69
    [record] = json_lines(result.stderr)
    assert record["level"] == "error"
    assert record["event"] == "error"
    assert record["message"].startswith("cannot connect to maintctl@127.0.0.1:1/x")


def test_a_bad_log_format_is_refused(cli: Cli) -> None:
    flag = cli("run", "--log-format", "xml")
    environment = cli("run", env={"MAINTCTL_LOG_FORMAT": "xml"})

    assert flag.exit_code == 2
    assert flag.stderr.startswith("maintctl: error: --log-format: Input should be 'text' or 'json'")
    assert environment.exit_code == 78
    assert environment.stderr.startswith("maintctl: error: MAINTCTL_LOG_FORMAT: ")
    assert flag.stderr.count("\n") == environment.stderr.count("\n") == 1


def test_quiet_prints_nothing_on_success_and_the_error_on_failure(cli: Cli, conn: Conn) -> None:
    load_sample(conn)

    success = cli("run", "--quiet")
    conn.execute("alter table temp_uploads rename column created_at to created")
    failed = cli("purge-temp", "--quiet")
    unreachable = cli(
        "run",
        "-q",
        env={
            "MAINTCTL_DATABASE_URL": "postgresql://maintctl@127.0.0.1:1/x",
            "MAINTCTL_CONNECT_TIMEOUT": "1s",
        },
    )

    assert success.exit_code == 0
    assert (success.stdout, success.stderr) == ("", "")
    assert failed.exit_code == 1
    assert failed.stdout == ""
    lines = failed.stderr.splitlines()
    assert lines[0].startswith("maintctl: error: temp: failed, 0 rows in 0 batch(es), ")
    assert "created_at" in lines[0]
    assert "does not exist" in lines[0]
    assert lines[1].startswith("maintctl: error: run 2 failed in ")
    assert len(lines) == 2
    assert unreachable.exit_code == 69
    assert unreachable.stderr.startswith("maintctl: error: cannot connect to ")
    assert unreachable.stderr.count("\n") == 1


def run_on_terminals(args: list[str], env: dict[str, str]) -> tuple[int, bytes, bytes]:
    """maintctl with its stdout and its stderr each on a pseudo-terminal of their own."""
    out_master, out_slave = pty.openpty()
    err_master, err_slave = pty.openpty()
    process = subprocess.Popen(
        [*maintctl_command(), *args], env=env, stdout=out_slave, stderr=err_slave
    )
    os.close(out_slave)
    os.close(err_slave)
    captured = {out_master: b"", err_master: b""}
    open_fds = set(captured)
    while open_fds:
        ready, _, _ = select.select(list(open_fds), [], [], 30)
        assert ready, "maintctl hung"
        for fd in ready:
            try:
                chunk = os.read(fd, 65536)
            except OSError:  # EIO: the child closed its end
                chunk = b""
            if chunk:
                captured[fd] += chunk
            else:
                open_fds.discard(fd)
                os.close(fd)
    return process.wait(timeout=30), captured[out_master], captured[err_master]


def test_colour_only_on_a_terminal_and_never_with_no_color(db_url: str, conn: Conn) -> None:
    load_sample(conn)
    conn.execute("alter table temp_uploads rename column created_at to created")  # an error line
    env = {"PATH": "/usr/bin:/bin", "MAINTCTL_DATABASE_URL": db_url, "TERM": "xterm-256color"}
    escape = b"\x1b["

    code, out, err = run_on_terminals(["run"], env)
    assert code == 1
    assert escape in err, "an error on a terminal is coloured"
    assert escape in out, "the table on a terminal is coloured"

    code, out, err = run_on_terminals(["run"], {**env, "NO_COLOR": "1"})
    assert code == 1
    assert b"error: temp: failed" in err
    assert escape not in err
    assert escape not in out

    piped = subprocess.run(
        [*maintctl_command(), "run"], env=env, capture_output=True, check=False, timeout=60
    )
    assert piped.returncode == 1
    assert b"error: temp: failed" in piped.stderr
    assert escape not in piped.stderr
    assert escape not in piped.stdout


def test_a_dry_run_says_what_it_would_touch(cli: Cli, conn: Conn) -> None:
    load_sample(conn)

    result = cli("run", "--dry-run")

    lines = result.stderr.splitlines()
    assert lines[1] == "maintctl: dry run 1 started (run)"
    assert lines[2].startswith("maintctl: stuck: would touch 15 rows (")
    assert lines[-1].startswith("maintctl: dry run 1 succeeded in ")
    assert lines[-1].endswith("would touch 764 rows (exit 0)")
    assert not any("lock" in line for line in lines), "a dry run takes no lock"
