"""`maintctl serve` as a real process on a free port against a real database: the seed's route
(500 / 401 / 503 / 200), the JSON of `maintctl run --json`, one run at a time, the runtime limit,
/metrics, /healthz, /readyz and a SIGTERM during a run."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from prometheus_client.parser import text_string_to_metric_families

from maintctl.web import IN_PROGRESS, ROUTE
from tests.conftest import Cli, _create_database, _drop_database, make_cli, unique_name
from tests.data import Conn, count, load_sample, slow_down_deletes, snapshot
from tests.serving import SECRET, Answer, Server, free_port, request, serving
from tests.test_commands import cron_environment
from tests.test_monitoring import Monitor, monitor  # noqa: F401  (the fixture)


@pytest.fixture
def server(db_url: str) -> Iterator[Server]:
    with serving(db_url) as started:
        yield started


def runs(conn: Conn) -> list[tuple[Any, ...]]:
    return conn.execute("select id, status, tasks from maintenance.runs order by id").fetchall()


# Everything of a run's JSON that does not depend on when it ran or how fast: the batches follow
# the pace of the first (the probe), and walBytes is all the server wrote meanwhile.
VOLATILE = {"timestamp", "runId", "durationMs", "walBytes"}
VOLATILE_TASK = {"durationMs", "cutoff", "batchSize", "batches", "walBytes"}


def stable(document: dict[str, Any]) -> dict[str, Any]:
    kept = {key: value for key, value in document.items() if key not in VOLATILE}
    kept["tasks"] = [
        {key: value for key, value in task.items() if key not in VOLATILE_TASK}
        for task in document["tasks"]
    ]
    return kept


def test_without_a_configured_secret_the_route_answers_500_and_changes_nothing(
    db_url: str, conn: Conn
) -> None:
    load_sample(conn)
    before = snapshot(conn)
    with serving(db_url, env={"MAINTCTL_CRON_SECRET": ""}) as server:
        answer = server.get(ROUTE, x_cron_secret=SECRET)

    assert answer.status == 500
    assert answer.json() == {"error": "MAINTCTL_CRON_SECRET is not set on the server"}
    assert snapshot(conn) == before
    assert runs(conn) == []


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"x_cron_secret": "a-guess"},
        {"x_cron_secret": SECRET[:-1]},
        {"Authorization": "Bearer a-guess"},
        {"Authorization": f"Basic {SECRET}"},
    ],
)
def test_a_missing_or_wrong_secret_answers_401_and_changes_nothing(
    server: Server, conn: Conn, headers: dict[str, str]
) -> None:
    load_sample(conn)
    before = snapshot(conn)
    answer = server.get(ROUTE, **headers)

    assert answer.status == 401
    assert answer.json() == {
        "error": "missing or wrong secret (x-cron-secret or Authorization: Bearer)"
    }
    assert "a-guess" not in answer.text
    assert snapshot(conn) == before
    assert runs(conn) == []


def test_disabled_answers_503(db_url: str, conn: Conn) -> None:
    load_sample(conn)
    before = snapshot(conn)
    with serving(db_url, env={"MAINTCTL_ENABLED": "false"}) as server:
        answer = server.get(ROUTE, x_cron_secret=SECRET)

    assert answer.status == 503
    assert answer.json()["skipped"] == "maintenance is disabled (MAINTCTL_ENABLED=false)"
    assert snapshot(conn) == before


def test_paused_answers_503_saying_who_and_why(server: Server, cli: Cli, conn: Conn) -> None:
    load_sample(conn)
    before = snapshot(conn)
    assert cli("pause", "--reason", "restoring a backup").exit_code == 0

    answer = server.post(ROUTE, x_cron_secret=SECRET)

    assert answer.status == 503
    assert answer.json()["skipped"].startswith("maintenance is paused since ")
    assert answer.json()["skipped"].endswith(": restoring a backup (maintctl resume)")
    assert snapshot(conn) == before
    _, output = server.stop()
    assert "maintctl: error: maintenance is paused since " in output, "the server log says so"


@pytest.fixture
def twin_db_url(server_url: str, migrated_template: str) -> Iterator[str]:
    """A second fresh, migrated database."""
    name = unique_name("twin")
    yield _create_database(server_url, name, template=migrated_template)
    _drop_database(server_url, name)


@pytest.mark.parametrize("header", ["x-cron-secret", "Authorization"])
def test_the_answer_is_the_json_of_maintctl_run_on_the_same_data(
    server: Server, cli: Cli, conn: Conn, twin_db_url: str, header: str
) -> None:
    load_sample(conn)
    with psycopg.connect(twin_db_url, autocommit=True) as twin:
        load_sample(twin)
    by_cli = make_cli(twin_db_url)("run", "--json")
    headers = {"x_cron_secret": SECRET} if header == "x-cron-secret" else {}
    if header == "Authorization":
        headers["Authorization"] = f"Bearer {SECRET}"

    answer = server.get(ROUTE, **headers)

    assert by_cli.exit_code == 0
    assert answer.status == 200
    assert answer.headers["content-type"] == "application/json"
    document = answer.json()
    assert stable(document) == stable(json.loads(by_cli.stdout))
    assert document["tempUploadsPurged"] == 289
    old = "select count(*) from temp_uploads where created_at < now() - interval '1 day'"
    assert count(conn, old) == 0
    [(run_id, status, _)] = runs(conn)
    assert (run_id, status) == (document["runId"], "succeeded")
    # The ledger knows it as a run, so status and its dead man's switch count it.
    assert cli("status", "--max-age", "1h").exit_code == 0


def test_vercel_s_own_cron_secret_is_read_when_maintctl_s_is_not_set(
    db_url: str, conn: Conn
) -> None:
    load_sample(conn)
    env = {"MAINTCTL_CRON_SECRET": "", "CRON_SECRET": "from-vercel"}
    with serving(db_url, env=env) as server:
        refused = server.get(ROUTE, Authorization=f"Bearer {SECRET}")
        answer = server.get(ROUTE, Authorization="Bearer from-vercel")

    assert refused.status == 401
    assert answer.status == 200
    assert answer.json()["tempUploadsPurged"] == 289


def in_background(call: Any) -> tuple[threading.Thread, list[Answer]]:
    answers: list[Answer] = []
    thread = threading.Thread(target=lambda: answers.append(call()))
    thread.start()
    return thread, answers


def wait_for(conn: Conn, query: str, what: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not count(conn, query):
        assert time.monotonic() < deadline, what
        time.sleep(0.05)


def slow_temp_uploads(conn: Conn, rows: int, seconds_per_row: float) -> None:
    conn.execute(
        "insert into temp_uploads (created_at, storage_path) "
        "select now() - interval '2 days', 'f' || n from generate_series(1, %s) n",
        [rows],
    )
    slow_down_deletes(conn, seconds_per_row)


def test_two_requests_at_once_do_the_work_once(db_url: str, conn: Conn) -> None:
    slow_temp_uploads(conn, rows=6, seconds_per_row=0.2)
    with serving(db_url, env={"MAINTCTL_BATCH_SIZE": "2"}) as server:
        first, answers = in_background(lambda: server.get(ROUTE, x_cron_secret=SECRET))
        wait_for(conn, "select count(*) from maintenance.runs", "the first run never started")
        second = server.get(ROUTE, x_cron_secret=SECRET)
        first.join(timeout=60)

    assert second.status == 200
    assert second.json()["skipped"] == IN_PROGRESS
    assert second.json()["runId"] is None
    [done] = answers
    assert done.status == 200
    assert done.json()["tempUploadsPurged"] == 6
    assert [status for _, status, _ in runs(conn)] == ["succeeded"]


def test_each_request_stops_after_the_serve_max_runtime_and_says_what_is_left(
    db_url: str, conn: Conn
) -> None:
    slow_temp_uploads(conn, rows=40, seconds_per_row=0.1)
    env = {"MAINTCTL_SERVE_MAX_RUNTIME": "1s", "MAINTCTL_BATCH_SIZE": "2"}
    with serving(db_url, env=env) as server:
        answer = server.get(ROUTE, x_cron_secret=SECRET)

    assert answer.status == 200
    document = answer.json()
    stuck, temp, compact, raw = document["tasks"]
    assert stuck["status"] == "ok"
    assert temp["status"] == "stopped"
    assert temp["error"] == "max runtime reached; the next run carries on"
    assert 0 < temp["rows"] < 40
    assert (
        temp["remaining"] == 40 - temp["rows"] == count(conn, "select count(*) from temp_uploads")
    )
    assert [compact["status"], raw["status"]] == ["not_run", "not_run"]
    assert document["durationMs"] < 20_000


def test_sigterm_during_a_run_stops_it_at_the_next_batch_and_the_ledger_says_so(
    db_url: str, conn: Conn
) -> None:
    slow_temp_uploads(conn, rows=40, seconds_per_row=0.1)
    with serving(db_url, env={"MAINTCTL_BATCH_SIZE": "2"}) as server:
        thread, answers = in_background(lambda: server.get(ROUTE, x_cron_secret=SECRET))
        wait_for(conn, "select (count(*) <= 36)::int from temp_uploads", "the run never got going")
        server.process.terminate()
        thread.join(timeout=60)
        exit_code, output = server.stop()

    [answer] = answers
    assert answer.status == 503
    assert answer.json()["error"].startswith("the server is shutting down: the run stopped")
    assert exit_code == 0, output
    remaining = count(conn, "select count(*) from temp_uploads")
    # The batches shrink to the probe's pace (one row here), so their size proves nothing: each
    # deleted upload is in the outbox, none that is left, as only whole batches committed.
    outboxed = "select count(distinct upload_id) from maintenance.storage_outbox_files"
    assert count(conn, outboxed) == 40 - remaining, "only whole batches were committed"
    assert 0 < remaining <= 36
    [(_, status, tasks)] = runs(conn)
    assert status == "interrupted"
    [temp] = [task for task in tasks if task["task"] == "temp"]
    assert temp["status"] == "interrupted"
    assert temp["rows"] == 40 - remaining, "the ledger counts every committed row"
    assert count(conn, "select count(*) from maintenance.run_lease where expires_at > now()") == 0


def families(text: str) -> dict[str, dict[tuple[tuple[str, str], ...], float]]:
    """The samples of an exposition text, parsed back with prometheus-client's parser."""
    parsed: dict[str, dict[tuple[tuple[str, str], ...], float]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels = tuple(sorted(sample.labels.items()))
            parsed.setdefault(sample.name, {})[labels] = sample.value
    return parsed


def test_metrics_are_the_families_of_the_metrics_files(
    server: Server, cli: Cli, conn: Conn, tmp_path: Path
) -> None:
    load_sample(conn)
    unauthorized = server.get("/metrics")
    before = families(server.get("/metrics", Authorization=f"Bearer {SECRET}").text)
    server.get(ROUTE, x_cron_secret=SECRET)
    after_answer = server.get("/metrics", Authorization=f"Bearer {SECRET}")
    after = families(after_answer.text)
    load_sample(conn)
    cli("status", "--metrics-file", str(tmp_path / "status.prom"))
    cli("run", "--metrics-file", str(tmp_path / "run.prom"))
    textfiles = families(
        (tmp_path / "status.prom").read_text() + (tmp_path / "run.prom").read_text()
    )

    assert unauthorized.status == 401
    assert after_answer.headers["content-type"].startswith("text/plain; version=")
    assert before["maintctl_pending_rows"][(("task", "temp"),)] == 289
    assert "maintctl_last_run_success" not in before, "no run in this server yet"
    assert set(after) == set(textfiles)
    assert after["maintctl_pending_rows"][(("task", "temp"),)] == 0
    assert after["maintctl_task_rows"][(("command", "run"), ("task", "temp"))] == 289
    assert after["maintctl_last_run_success"][(("command", "run"),)] == 1


def test_healthz_and_readyz_before_and_after_migrate(bare_db_url: str, bare_cli: Cli) -> None:
    with serving(bare_db_url) as server:
        healthy = server.get("/healthz")
        before = server.get("/readyz")
        assert bare_cli("migrate").exit_code == 0
        after = server.get("/readyz")

    assert (healthy.status, healthy.json()) == (200, {"status": "ok"})
    assert before.status == 503
    assert before.json()["ready"] is False
    assert "maintctl migrate" in before.json()["reason"]
    assert (after.status, after.json()) == (200, {"ready": True, "reason": None})


def test_readyz_names_an_unreachable_database(tmp_path: Path) -> None:
    with serving("postgresql://maintctl@127.0.0.1:1/imports") as server:
        answer = server.get("/readyz")

    assert answer.status == 503
    assert answer.json()["reason"].startswith("cannot connect to maintctl@127.0.0.1:1/imports")


def test_the_secret_is_never_logged_or_echoed(db_url: str, conn: Conn) -> None:
    load_sample(conn)
    with serving(db_url, "--log-format", "json") as server:
        answers = [
            server.get(ROUTE, x_cron_secret=SECRET),
            server.get(ROUTE, x_cron_secret=SECRET + "x"),
            server.get(ROUTE, Authorization=f"Bearer {SECRET}"),
            server.post("/login", f"secret={SECRET}".encode()),
            server.post("/login", f"secret={SECRET}x".encode()),
            server.get("/", x_cron_secret=SECRET),
            server.get("/metrics", Authorization=f"Bearer {SECRET}"),
        ]
        _, output = server.stop()

    assert [answer.status for answer in answers] == [200, 401, 200, 303, 401, 200, 200]
    assert '"GET /api/admin/maintenance HTTP/1.1" 200' in output, "the access log is on"
    assert SECRET not in output
    for answer in answers:
        assert SECRET not in answer.text
        assert SECRET not in str(answer.headers)


def test_a_port_in_use_or_a_bad_setting_is_one_line_and_exit_78(cli: Cli) -> None:
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        in_use = cli("serve", "--port", str(port), env={"MAINTCTL_CRON_SECRET": SECRET})
    bad = cli("serve", env={"MAINTCTL_CRON_SECRET": SECRET, "MAINTCTL_SERVE_MAX_RUNTIME": "0s"})

    assert in_use.exit_code == 78
    assert in_use.stderr == (
        f"maintctl: error: --host/--port: cannot listen on 127.0.0.1:{port}: "
        "Address already in use\n"
    )
    assert bad.exit_code == 78
    assert bad.stderr.startswith("maintctl: error: MAINTCTL_SERVE_MAX_RUNTIME: ")
    assert bad.stderr.count("\n") == 1


def test_the_asgi_app_in_another_server_reads_its_settings_from_the_environment(
    db_url: str, conn: Conn
) -> None:
    load_sample(conn)
    port = free_port()
    env = {**cron_environment(db_url), "MAINTCTL_CRON_SECRET": SECRET}
    command = [sys.executable, "-m", "uvicorn", "maintctl.web:app", "--port", str(port)]
    answers = []
    for extra in ({"MAINTCTL_BATCH_SIZE": "0"}, {}):
        with subprocess.Popen(
            command, env={**env, **extra}, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
        ) as host:
            try:
                url = f"http://127.0.0.1:{port}"
                deadline = time.monotonic() + 30
                while True:
                    try:
                        request(url + "/healthz", headers={})
                        break
                    except OSError:
                        assert time.monotonic() < deadline, "uvicorn never answered"
                        time.sleep(0.1)
                answers.append(request(url + ROUTE, headers={"x-cron-secret": SECRET}))
            finally:
                host.terminate()

    refused, ran = answers
    assert refused.status == 500
    assert refused.json()["error"].startswith("MAINTCTL_BATCH_SIZE: ")
    assert ran.status == 200
    assert ran.json()["tempUploadsPurged"] == 289


def test_a_run_over_http_pings_the_healthcheck_and_writes_the_metrics_file(
    db_url: str,
    conn: Conn,
    monitor: Monitor,  # noqa: F811  (the fixture imported above)
    tmp_path: Path,
) -> None:
    load_sample(conn)
    metrics_file = tmp_path / "maintctl.prom"
    env = {"MAINTCTL_HEALTHCHECK_URL": monitor.url, "MAINTCTL_METRICS_FILE": str(metrics_file)}
    with serving(db_url, env=env) as server:
        answer = server.get(ROUTE, x_cron_secret=SECRET)

    assert answer.status == 200
    assert monitor.paths() == ["/ping/0b5e1d2c/start", "/ping/0b5e1d2c"]
    assert monitor.pings[1][1].startswith(f"run {answer.json()['runId']} succeeded in ")
    assert monitor.pings[1][1].endswith("764 rows (exit 0)")
    written = families(metrics_file.read_text())
    assert written["maintctl_task_rows"][(("command", "run"), ("task", "temp"))] == 289
