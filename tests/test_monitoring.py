"""Monitoring: the Prometheus textfile (--metrics-file) and the healthcheck pings
(MAINTCTL_HEALTHCHECK_URL), each against the real thing: prometheus_client's own parser, and an
HTTP server started by the test."""

from __future__ import annotations

import json
import os
import socket
import threading
import time
from collections.abc import Iterator
from datetime import datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import Cli
from tests.data import Conn, hold_run_lease, load_sample

UNREACHABLE = {
    "MAINTCTL_DATABASE_URL": "postgresql://maintctl@127.0.0.1:1/x",
    "MAINTCTL_CONNECT_TIMEOUT": "1s",
}


def samples(path: Path) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of a textfile, by name and labels."""
    found = {}
    for family in text_string_to_metric_families(path.read_text()):
        for sample in family.samples:
            found[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return found


def value(
    found: dict[tuple[str, tuple[tuple[str, str], ...]], float], name: str, **labels: str
) -> float:
    return found[(name, tuple(sorted(labels.items())))]


def test_run_metrics_parse_back_and_agree_with_the_json(
    cli: Cli, conn: Conn, tmp_path: Path
) -> None:
    load_sample(conn)
    path = tmp_path / "maintctl.prom"

    result = cli("run", "--json", "--metrics-file", str(path))

    assert result.exit_code == 0
    document = json.loads(result.stdout)
    found = samples(path)
    run = {"command": "run"}
    assert value(found, "maintctl_last_run_success", **run) == 1
    assert value(found, "maintctl_last_run_exit_code", **run) == 0
    assert value(found, "maintctl_last_run_dry_run", **run) == 0
    started = datetime.fromisoformat(document["timestamp"]).timestamp()
    assert abs(value(found, "maintctl_last_run_timestamp_seconds", **run) - started) < 5
    assert abs(value(found, "maintctl_last_success_timestamp_seconds", **run) - time.time()) < 10
    assert (
        value(found, "maintctl_last_run_duration_seconds", **run) >= document["durationMs"] / 1000
    )
    for task in document["tasks"]:
        labels = {"command": "run", "task": task["task"]}
        assert value(found, "maintctl_task_rows", **labels) == task["rows"]
        assert value(found, "maintctl_task_duration_seconds", **labels) == task["durationMs"] / 1000
        assert value(found, "maintctl_task_success", **labels) == 1
    assert value(found, "maintctl_task_rows", command="run", task="temp") == 289
    assert os.stat(path).st_mode & 0o777 == 0o644, "node_exporter runs as another user"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["maintctl.prom"], "no temp file left"


def test_the_file_is_replaced_never_rewritten_in_place(
    cli: Cli, conn: Conn, tmp_path: Path
) -> None:
    path = tmp_path / "maintctl.prom"
    assert cli("run", "--metrics-file", str(path)).exit_code == 0
    with path.open() as reader:  # a scrape that opened the file before the next run wrote
        old = path.stat().st_ino
        load_sample(conn)
        assert cli("run", "--metrics-file", str(path)).exit_code == 0
        assert value(samples(path), "maintctl_task_rows", command="run", task="temp") == 289
        assert path.stat().st_ino != old
        seen = list(text_string_to_metric_families(reader.read()))
    rows = next(family for family in seen if family.name == "maintctl_task_rows")
    assert {sample.value for sample in rows.samples} == {0}, "the reader saw the whole old file"


def test_a_failed_run_keeps_the_last_success_and_says_its_exit_code(
    cli: Cli, tmp_path: Path
) -> None:
    path = tmp_path / "maintctl.prom"
    assert cli("run", env={"MAINTCTL_METRICS_FILE": str(path)}).exit_code == 0
    success = value(samples(path), "maintctl_last_success_timestamp_seconds", command="run")

    failed = cli("run", env={**UNREACHABLE, "MAINTCTL_METRICS_FILE": str(path)})

    assert failed.exit_code == 69
    found = samples(path)
    assert value(found, "maintctl_last_run_success", command="run") == 0
    assert value(found, "maintctl_last_run_exit_code", command="run") == 69
    assert value(found, "maintctl_last_success_timestamp_seconds", command="run") == success
    assert value(found, "maintctl_last_run_timestamp_seconds", command="run") > success


def test_a_task_command_and_a_dry_run_label_their_metrics(
    cli: Cli, conn: Conn, tmp_path: Path
) -> None:
    load_sample(conn)
    path = tmp_path / "purge.prom"

    dry = cli("purge-temp", "--dry-run", "--metrics-file", str(path))

    assert dry.exit_code == 0
    found = samples(path)
    assert value(found, "maintctl_task_rows", command="purge-temp", task="temp") == 289
    assert value(found, "maintctl_last_run_dry_run", command="purge-temp") == 1
    assert ("maintctl_last_success_timestamp_seconds", (("command", "purge-temp"),)) not in found


def test_a_metrics_write_failure_is_logged_and_keeps_the_exit_code(
    cli: Cli, tmp_path: Path
) -> None:
    path = tmp_path / "missing-directory" / "maintctl.prom"

    result = cli("run", "--quiet", "--metrics-file", str(path))

    assert result.exit_code == 0
    assert result.stderr.startswith(f"maintctl: warning: cannot write the metrics file {path}: ")
    assert result.stderr.rstrip().endswith("(the exit code is unchanged)")
    assert result.stderr.count("\n") == 1


def test_status_metrics_have_the_pending_counts(cli: Cli, conn: Conn, tmp_path: Path) -> None:
    load_sample(conn)
    path = tmp_path / "status.prom"
    cli("pause", "--reason", "restore")

    result = cli("status", "--json", "--metrics-file", str(path))

    assert result.exit_code == 0
    document = json.loads(result.stdout)
    found = samples(path)
    for task, key in (
        ("stuck", "stuckRuns"),
        ("temp", "oldTempUploads"),
        ("compact", "oldImportJobs"),
        ("raw", "oldRawItems"),
    ):
        assert value(found, "maintctl_pending_rows", task=task) == document[key]
    assert value(found, "maintctl_pending_rows", task="temp") == 289
    assert value(found, "maintctl_paused") == 1
    assert ("maintctl_ledger_last_success_timestamp_seconds", ()) not in found


# --- healthcheck pings -----------------------------------------------------------------------


class Monitor:
    """A local stand-in for Healthchecks.io: records each ping's path and body."""

    def __init__(self) -> None:
        self.pings: list[tuple[str, str]] = []
        self.authorizations: list[str | None] = []
        monitor = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                monitor.pings.append((self.path, self.rfile.read(length).decode()))
                monitor.authorizations.append(self.headers.get("Authorization"))
                self.send_response(200)
                self.end_headers()
                self.wfile.write(b"OK")

            def log_message(self, format: str, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/ping/0b5e1d2c"

    def paths(self) -> list[str]:
        return [path for path, _ in self.pings]


@pytest.fixture
def monitor() -> Iterator[Monitor]:
    found = Monitor()
    thread = threading.Thread(target=found.server.serve_forever, daemon=True)
    thread.start()
    yield found
    found.server.shutdown()
    found.server.server_close()
    thread.join()


def test_a_run_pings_start_then_success(cli: Cli, conn: Conn, monitor: Monitor) -> None:
    load_sample(conn)
    url = monitor.url.replace("http://", "http://hc:s3cret@")

    result = cli("run", env={"MAINTCTL_HEALTHCHECK_URL": url})

    assert result.exit_code == 0
    assert monitor.paths() == ["/ping/0b5e1d2c/start", "/ping/0b5e1d2c"]
    assert monitor.authorizations == ["Basic aGM6czNjcmV0"] * 2  # hc:s3cret
    assert monitor.pings[1][1].startswith("run 1 succeeded in ")
    assert monitor.pings[1][1].endswith("764 rows (exit 0)")


def test_a_failure_pings_its_exit_code(cli: Cli, conn: Conn, monitor: Monitor) -> None:
    env = {"MAINTCTL_HEALTHCHECK_URL": monitor.url + "?key=abc"}
    conn.execute("alter table temp_uploads rename column created_at to created")

    task_failed = cli("run", env=env)
    unreachable = cli("run", env={**env, **UNREACHABLE})
    cli("pause", "--reason", "restoring a backup")
    paused = cli("run", env=env)

    assert (task_failed.exit_code, unreachable.exit_code, paused.exit_code) == (1, 69, 75)
    assert monitor.paths() == [
        "/ping/0b5e1d2c/start?key=abc",
        "/ping/0b5e1d2c/1?key=abc",
        "/ping/0b5e1d2c/start?key=abc",
        "/ping/0b5e1d2c/69?key=abc",
        "/ping/0b5e1d2c/start?key=abc",
        "/ping/0b5e1d2c/75?key=abc",
    ]
    bodies = [body for _, body in monitor.pings]
    assert bodies[3].startswith("cannot connect to maintctl@127.0.0.1:1/x")
    assert "maintenance is paused since" in bodies[5]
    assert "restoring a backup" in bodies[5]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def test_only_a_full_real_run_pings(cli: Cli, conn: Conn, monitor: Monitor) -> None:
    load_sample(conn)
    env = {"MAINTCTL_HEALTHCHECK_URL": monitor.url}

    dry = cli("run", "--dry-run", env=env)
    single = cli("purge-temp", env=env)
    single_dry = cli("compact", "--dry-run", env=env)
    pinged_before = monitor.paths()
    full = cli("run", env=env)

    assert (dry.exit_code, single.exit_code, single_dry.exit_code, full.exit_code) == (0, 0, 0, 0)
    assert pinged_before == []
    assert monitor.paths() == ["/ping/0b5e1d2c/start", "/ping/0b5e1d2c"]


def test_an_unreachable_monitor_is_logged_and_never_fails_the_run(cli: Cli, conn: Conn) -> None:
    load_sample(conn)
    url = f"http://user:s3cret@127.0.0.1:{free_port()}/ping/0b5e1d2c?key=k3y"

    result = cli("run", "--quiet", "--json", env={"MAINTCTL_HEALTHCHECK_URL": url})

    assert result.exit_code == 0
    assert json.loads(result.stdout)["tempUploadsPurged"] == 289
    lines = result.stderr.splitlines()
    assert [line.split(" to ")[0] for line in lines] == [
        "maintctl: warning: healthcheck ping (start)",
        "maintctl: warning: healthcheck ping (success)",
    ]
    assert "ConnectionRefusedError" in lines[0]
    for secret in ("s3cret", "0b5e1d2c", "k3y", "user"):
        assert secret not in result.stderr


def test_a_hanging_monitor_costs_no_more_than_the_timeout(cli: Cli) -> None:
    # A server that accepts connections (the kernel does) and never answers.
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        url = f"http://127.0.0.1:{silent.getsockname()[1]}/ping/0b5e1d2c"
        env = {"MAINTCTL_HEALTHCHECK_URL": url, "MAINTCTL_HEALTHCHECK_TIMEOUT": "1s"}
        started = time.monotonic()

        result = cli("run", "--quiet", env=env)

        elapsed = time.monotonic() - started
    assert result.exit_code == 0
    assert 2 <= elapsed < 10, elapsed
    assert result.stderr.count("timed out") == 2


def test_a_healthcheck_url_that_is_not_http_is_a_configuration_error(cli: Cli, conn: Conn) -> None:
    load_sample(conn)

    result = cli("run", env={"MAINTCTL_HEALTHCHECK_URL": "file:///etc/passwd"})

    assert result.exit_code == 78
    assert result.stderr == (
        "maintctl: error: MAINTCTL_HEALTHCHECK_URL: must be an http:// or https:// URL\n"
    )
    assert conn.execute("select count(*) from temp_uploads").fetchone() == (433,)


def test_prometheus_client_is_imported_only_to_write_a_file() -> None:
    import subprocess
    import sys

    probe = (
        "import sys; from typer.testing import CliRunner; from maintctl.cli import app; "
        "CliRunner().invoke(app, ['--help']); CliRunner().invoke(app, ['cron']); "
        "print('prometheus_client' in sys.modules)"
    )
    completed = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True
    )

    assert completed.stdout == "False\n"


def test_a_run_skipped_for_the_lock_succeeds_but_keeps_the_last_success(
    cli: Cli, conn: Conn, db_url: str, tmp_path: Path
) -> None:
    path = tmp_path / "maintctl.prom"
    assert cli("run", "--metrics-file", str(path)).exit_code == 0
    success = value(samples(path), "maintctl_last_success_timestamp_seconds", command="run")
    hold_run_lease(conn, "cron-host-b")
    skipped = cli("run", "--metrics-file", str(path))

    assert skipped.exit_code == 0
    found = samples(path)
    assert value(found, "maintctl_last_run_success", command="run") == 1
    assert value(found, "maintctl_last_run_skipped", command="run") == 1
    assert value(found, "maintctl_last_success_timestamp_seconds", command="run") == success
