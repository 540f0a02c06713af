"""docs/production.md, "Over HTTP": the Vercel entry and vercel.json, the Supabase pg_net call, the
GitHub Actions schedule and the Kubernetes Deployment parse, and say what the app does."""

from __future__ import annotations

import json
import re
import subprocess
from typing import Any

import yaml
from psycopg import sql
from starlette.applications import Starlette
from starlette.routing import Route
from typer.main import get_command

from maintctl import web
from maintctl.cli import app as cli_app
from maintctl.settings import Settings
from tests.data import Conn, load_sample
from tests.serving import SECRET, serving
from tests.test_production_docs import DOC

SECTION = "## Over HTTP"


def block(language: str, after: str) -> str:
    """The first ```language block after the heading `after` of the HTTP section."""
    text = DOC.read_text()
    start = text.index(after, text.index(SECTION))
    start = text.index(f"```{language}\n", start) + len(f"```{language}\n")
    return text[start : text.index("```", start)]


def app_paths() -> set[str]:
    return {route.path for route in web.app.routes if isinstance(route, Route)}


def test_the_vercel_entry_imports_the_asgi_app() -> None:
    namespace: dict[str, Any] = {}
    exec(compile(block("python", "### Vercel"), "api/index.py", "exec"), namespace)

    assert namespace["app"] is web.app
    assert isinstance(namespace["app"], Starlette)


def test_vercel_json_calls_the_route_at_the_seed_s_schedule() -> None:
    config = json.loads(block("json", "### Vercel"))

    assert config["crons"] == [{"path": web.ROUTE, "schedule": "0 3 * * *"}]
    assert config["rewrites"][0]["destination"] == "/api/index"
    max_duration = config["functions"]["api/index.py"]["maxDuration"]
    assert Settings().serve_max_runtime.total_seconds() < max_duration


def test_the_supabase_schedule_parses_and_posts_the_secret_header(conn: Conn) -> None:
    text = block("sql", "### Supabase")
    # PostgreSQL's own parser: PL/pgSQL checks the syntax of each statement when the function is
    # created, and looks up cron.schedule and net.http_post only when it runs (never here).
    body = sql.SQL("begin {} end").format(sql.SQL(text.strip()))
    conn.execute(
        sql.SQL(
            "create function pg_temp.schedule_maintctl() returns void language plpgsql as {}"
        ).format(sql.Literal(body.as_string(conn)))
    )

    assert "'0 3 * * *'" in text
    assert f"url := 'https://maintctl.example.com{web.ROUTE}'" in text
    assert "'x-cron-secret'," in text
    inner = text[text.index("$$") + 2 : text.rindex("$$")]  # what pg_cron will run
    conn.execute(
        sql.SQL(
            "create function pg_temp.call_maintctl() returns void language plpgsql as {}"
        ).format(sql.Literal(f"begin {inner.strip()} end"))
    )


def test_the_github_actions_schedule_parses_and_its_curl_runs_the_route(
    db_url: str, conn: Conn
) -> None:
    workflow = yaml.safe_load(block("yaml", "### A GitHub Actions schedule"))
    triggers = workflow[True]  # YAML 1.1 reads the key `on` as true
    assert triggers["schedule"] == [{"cron": "0 3 * * *"}]
    [step] = workflow["jobs"]["maintenance"]["steps"]
    assert step["env"]["CRON_SECRET"] == "${{ secrets.MAINTCTL_CRON_SECRET }}"
    load_sample(conn)

    with serving(db_url) as server:
        env = {"PATH": "/usr/bin:/bin", "CRON_SECRET": SECRET, "MAINTCTL_URL": server.url}
        ran = subprocess.run(
            ["bash", "-c", step["run"]], env=env, capture_output=True, text=True, check=False
        )
        refused = subprocess.run(
            ["bash", "-c", step["run"]],
            env={**env, "CRON_SECRET": "a-guess"},
            capture_output=True,
            text=True,
            check=False,
        )

    assert ran.returncode == 0, ran.stderr
    assert json.loads(ran.stdout)["tempUploadsPurged"] == 289
    assert refused.returncode != 0, "a refused call fails the job"
    assert "missing or wrong secret" in refused.stdout


def test_the_deployment_probes_the_app_s_health_routes_and_runs_serve() -> None:
    deployment = yaml.safe_load(block("yaml", "### Kubernetes: a Deployment"))

    assert deployment["kind"] == "Deployment"
    pod = deployment["spec"]["template"]["spec"]
    [container] = pod["containers"]
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert {"/healthz", "/readyz"} <= app_paths()
    args = container["args"]
    assert args[0] == "serve"
    serve = get_command(cli_app).commands["serve"]  # type: ignore[attr-defined]
    options = {option for param in serve.params for option in param.opts}
    assert set(re.findall(r"--[\w-]+", " ".join(args))) <= options
    port = int(args[args.index("--port") + 1])
    assert container["ports"] == [{"name": "http", "containerPort": port}]
    grace = pod["terminationGracePeriodSeconds"]
    assert grace > Settings().serve_max_runtime.total_seconds()
