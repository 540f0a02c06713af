"""A reader that goes away (`maintctl run | head -1`, a logger that dies) neither fails nor stops
the run: the work is done, the ledger says `succeeded`, and the exit code is the run's own (0),
what a user who only wanted the first line expects. What was left to print is dropped."""

from __future__ import annotations

import os
import shlex
import subprocess

from tests.data import Conn, count, load_sample
from tests.test_commands import cron_environment, maintctl_command


def ledger(conn: Conn) -> list[tuple[str, str]]:
    return [
        (row[0], row[1])
        for row in conn.execute("select command, status from maintenance.runs order by id")
    ]


def test_a_run_piped_into_head_succeeds(db_url: str, conn: Conn) -> None:
    load_sample(conn)
    # Step lines (stderr) and the table (stdout) both into head, which leaves after one line
    # while the run still has lines to write. PIPESTATUS[0] is maintctl's own exit code.
    command = shlex.join(maintctl_command()) + " run 2>&1 | head -1; exit ${PIPESTATUS[0]}"

    completed = subprocess.run(
        ["bash", "-c", command],
        env=cron_environment(db_url),
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )

    assert completed.returncode == 0, completed.stdout
    assert completed.stdout.startswith("maintctl: connected to ")
    assert completed.stdout.count("\n") == 1
    assert completed.stderr == ""
    assert ledger(conn) == [("run", "succeeded")]
    assert count(conn, "select count(*) from temp_uploads") == 433 - 289


def closed_pipe() -> int:
    """The writing end of a pipe whose reader is already gone."""
    reading, writing = os.pipe()
    os.close(reading)
    return writing


def test_a_run_whose_stdout_and_stderr_readers_are_gone_does_all_its_work(
    db_url: str, conn: Conn
) -> None:
    load_sample(conn)
    stdout, stderr = closed_pipe(), closed_pipe()
    try:
        for args in (["run"], ["run", "--json"], ["status"]):
            completed = subprocess.run(
                [*maintctl_command(), *args],
                env=cron_environment(db_url),
                stdout=stdout,
                stderr=stderr,
                check=False,
                timeout=120,
            )
            assert completed.returncode == 0, args
    finally:
        os.close(stdout)
        os.close(stderr)

    assert ledger(conn) == [("run", "succeeded"), ("run", "succeeded")]
    assert count(conn, "select count(*) from temp_uploads") == 433 - 289
