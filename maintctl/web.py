"""`maintctl serve` and the ASGI app `maintctl.web:app`: the seed's HTTP route, for platforms that
can call a URL but have no crontab (Vercel, Render, Cloud Run, GitHub Actions, pg_net).

- GET or POST /api/admin/maintenance runs what `maintctl run` runs and answers its JSON.
- GET /metrics (Prometheus), /healthz (the process answers), /readyz (database reachable, migrated).
- GET / a dashboard, server-rendered HTML with inline SVG charts: it loads nothing else.

Database work runs in a worker thread, never on the event loop; one run at a time per process
(the database's run lease keeps it one at a time across processes and hosts). Starlette and
uvicorn are imported only here, and this module only by `maintctl serve`.
"""

from __future__ import annotations

import hashlib
import hmac
import html
import signal
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, timedelta
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from starlette.routing import Route

from maintctl.errors import ConfigError, ExitCode, MaintctlError
from maintctl.settings import Settings

if TYPE_CHECKING:
    from maintctl.ledger import RunRecord
    from maintctl.metrics import RunOutcome
    from maintctl.runner import RunReport
    from maintctl.status import StatusReport

ROUTE = "/api/admin/maintenance"
COOKIE = "maintctl_dashboard"
# The dashboard's cookie holds an HMAC of the secret under this label, never the secret itself.
_COOKIE_LABEL = b"maintctl dashboard session"
COOKIE_MAX_AGE = 7 * 24 * 3600
IN_PROGRESS = "another run of this server is in progress; it does the work"
HISTORY_RUNS = 30  # runs the dashboard's charts show
# The answer's HTTP status by the exit code `maintctl run` would give: a refused run is
# unavailable, a failed task or a bad setting a server error.
HTTP_STATUS = {
    ExitCode.OK: 200,
    ExitCode.DISABLED: 503,
    ExitCode.UNAVAILABLE: 503,
    ExitCode.SIGTERM: 503,
}
# Everything the dashboard may load: itself. Any other load (a CDN) is refused by the browser.
DASHBOARD_POLICY = (
    "default-src 'none'; style-src 'unsafe-inline'; form-action 'self'; "
    "frame-ancestors 'none'; base-uri 'none'"
)
NO_STORE = {"Cache-Control": "no-store", "X-Content-Type-Options": "nosniff"}


# --- the run ---------------------------------------------------------------------------------


def _run_once(settings: Settings) -> RunReport:
    """The run `maintctl run` does (pause switch, run lease, ledger, metrics file, healthcheck
    pings) through the same Maintenance.run, over every rule the policy applies (the four it
    keeps, then its [[purge]] rules), stopped between batches after MAINTCTL_SERVE_MAX_RUNTIME.
    The one place the route calls the run."""
    from maintctl import cli
    from maintctl.api import Maintenance
    from maintctl.log import describe

    started, clock = time.time(), time.monotonic()
    cli._ping(settings, "start", "maintctl run started (maintctl serve)")
    try:
        report = Maintenance(settings).run(
            command="run", max_runtime=settings.serve_max_runtime, notify=cli._log
        )
    except BaseException as exc:
        message = exc.message if isinstance(exc, MaintctlError) else type(exc).__name__
        cli._monitor(
            settings, "run", started, clock, cli._exit_code_of(exc), None, message, pings=True
        )
        raise
    # As `maintctl run` says it: a refused run (disabled, paused) as an error, else how it ended.
    refusal = report.skipped if report.exit_code != ExitCode.OK else None
    finished = cli._run_finished(report, "run")
    if refusal is None:
        cli._log("run_finished", "error" if report.errors else "info", **finished)
    else:
        cli._log.error(refusal)
    summary = refusal or describe("run_finished", finished)
    cli._monitor(
        settings, "run", started, clock, int(report.exit_code), report, summary, pings=True
    )
    return report


@dataclass
class _State:
    """One server's memory: its settings, its run lock and the outcome of its last run."""

    settings: Settings | None
    run_lock: threading.Lock
    last_outcome: RunOutcome | None = None
    last_success: float | None = None

    def current_settings(self) -> Settings:
        """The given settings, else those of the environment (maintctl.web:app in a host)."""
        if self.settings is None:
            from maintctl.settings import load_settings
            from maintctl.tasks import TASKS

            floor = tuple(task.threshold for task in TASKS)
            self.settings = load_settings({}, {}, floor=floor)
        return self.settings

    def run(self, settings: Settings) -> RunReport:
        """A run, in a worker thread that holds the run lock (taken by the caller)."""
        from maintctl import metrics

        started, clock = time.time(), time.monotonic()
        try:
            report = _run_once(settings)
            exit_code = int(report.exit_code)
        except BaseException as exc:
            from maintctl.cli import _exit_code_of

            self.last_outcome = metrics.RunOutcome(
                "run", started, time.monotonic() - clock, _exit_code_of(exc), None
            )
            raise
        finally:
            self.run_lock.release()
        self.last_outcome = metrics.RunOutcome(
            "run", started, time.monotonic() - clock, exit_code, report
        )
        if exit_code == 0 and not report.skipped:
            self.last_success = started + self.last_outcome.duration_seconds
        return report


# --- the secret ------------------------------------------------------------------------------


def _presented_secret(request: Request) -> str | None:
    """The secret a caller sent: `x-cron-secret`, or `Authorization: Bearer ...` (Vercel)."""
    header = request.headers.get("x-cron-secret")
    if header is not None:
        return header
    scheme, _, credentials = request.headers.get("authorization", "").partition(" ")
    return credentials.strip() if scheme.lower() == "bearer" else None


def _same(given: str, expected: str) -> bool:
    return hmac.compare_digest(given.encode(), expected.encode())


def session_token(secret: str) -> str:
    """What the dashboard's cookie holds: an HMAC of the secret, useless as the secret itself."""
    return hmac.new(secret.encode(), _COOKIE_LABEL, hashlib.sha256).hexdigest()


def _authorized(settings: Settings, request: Request, *, cookie: bool = False) -> bool:
    if settings.cron_secret is None:
        return False
    secret = settings.cron_secret.get_secret_value()
    given = _presented_secret(request)
    if given is not None and _same(given, secret):
        return True
    held = request.cookies.get(COOKIE)
    return cookie and held is not None and _same(held, session_token(secret))


def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status, headers=NO_STORE)


# --- routes ----------------------------------------------------------------------------------


def create_app(settings: Settings | None = None) -> Starlette:
    """The ASGI app. Without settings, they are read from the environment at the first request
    (a bad one answers 500 naming it, as `maintctl` exits 78)."""
    state = _State(settings, threading.Lock())

    def configured(
        handler: Callable[[Request, Settings], Any],
    ) -> Callable[[Request], Any]:
        async def endpoint(request: Request) -> Response:
            try:
                current = state.current_settings()
            except MaintctlError as exc:
                return _error(500, exc.message)
            response: Response = await handler(request, current)
            return response

        return endpoint

    async def maintenance(request: Request, settings: Settings) -> Response:
        from maintctl import runner
        from maintctl.api import Maintenance

        if settings.cron_secret is None:
            return _error(500, "MAINTCTL_CRON_SECRET is not set on the server")
        if not _authorized(settings, request):
            return _error(401, "missing or wrong secret (x-cron-secret or Authorization: Bearer)")
        if not state.run_lock.acquire(blocking=False):
            skipped = runner.RunReport(dry_run=False, skipped=IN_PROGRESS)
            return JSONResponse(Maintenance.run_document(skipped), headers=NO_STORE)
        try:
            report = await run_in_threadpool(state.run, settings)
        except MaintctlError as exc:
            return _error(HTTP_STATUS.get(exc.exit_code, 500), exc.message)
        except Exception as exc:  # a bug: one line in the log and the answer, as the CLI's exit 70
            from maintctl.cli import _log

            message = f"internal error: {type(exc).__name__}: {exc}"
            _log.error(message)
            return _error(500, message)
        except KeyboardInterrupt:
            return _error(
                503,
                "the server is shutting down: the run stopped between two batches "
                "(the ledger says interrupted); the next run carries on",
            )
        status = HTTP_STATUS.get(report.exit_code, 500)
        return JSONResponse(Maintenance.run_document(report), status_code=status, headers=NO_STORE)

    async def healthz(request: Request) -> Response:
        return JSONResponse({"status": "ok"}, headers=NO_STORE)

    async def readyz(request: Request, settings: Settings) -> Response:
        reason = await run_in_threadpool(_not_ready, settings)
        if reason is not None:
            return JSONResponse(
                {"ready": False, "reason": reason}, status_code=503, headers=NO_STORE
            )
        return JSONResponse({"ready": True, "reason": None}, headers=NO_STORE)

    async def metrics_endpoint(request: Request, settings: Settings) -> Response:
        from prometheus_client import CONTENT_TYPE_LATEST

        if not (settings.public_dashboard or _authorized(settings, request)):
            return _error(401, "missing or wrong secret (Authorization: Bearer)")
        try:
            text = await run_in_threadpool(
                _metrics_text, settings, state.last_outcome, state.last_success
            )
        except MaintctlError as exc:
            return _error(503, exc.message)
        return Response(text, media_type=CONTENT_TYPE_LATEST, headers=NO_STORE)

    async def dashboard(request: Request, settings: Settings) -> Response:
        if not (settings.public_dashboard or _authorized(settings, request, cookie=True)):
            return _page(_login_form(settings, failed=False), status=401)
        try:
            status, runs = await run_in_threadpool(_dashboard_data, settings)
        except MaintctlError as exc:
            return _page(f"<h1>maintctl</h1><p class=bad>{_e(exc.message)}</p>", status=503)
        return _page(dashboard_html(status, runs, settings.serve_max_runtime))

    async def login(request: Request, settings: Settings) -> Response:
        form = parse_qs((await request.body()).decode("utf-8", "replace"))
        given = (form.get("secret") or [""])[0]
        if settings.cron_secret is None or not _same(
            given, settings.cron_secret.get_secret_value()
        ):
            return _page(_login_form(settings, failed=True), status=401)
        response = RedirectResponse("/", status_code=303, headers=NO_STORE)
        response.set_cookie(
            COOKIE,
            session_token(settings.cron_secret.get_secret_value()),
            max_age=COOKIE_MAX_AGE,
            httponly=True,
            samesite="strict",
            secure=request.url.scheme == "https",
        )
        return response

    return Starlette(
        routes=[
            Route(ROUTE, configured(maintenance), methods=["GET", "POST"]),
            Route("/healthz", healthz, methods=["GET"]),
            Route("/readyz", configured(readyz), methods=["GET"]),
            Route("/metrics", configured(metrics_endpoint), methods=["GET"]),
            Route("/", configured(dashboard), methods=["GET"]),
            Route("/login", configured(login), methods=["POST"]),
        ]
    )


def _not_ready(settings: Settings) -> str | None:
    """Why the server cannot run maintenance now (unreachable, not migrated, the installed rules
    generated from another policy), or None."""
    from maintctl.api import Maintenance

    quick = settings.model_copy(update={"connect_timeout": timedelta(seconds=2)})
    try:
        with Maintenance(quick).connect():
            return None
    except MaintctlError as exc:
        return exc.message


def _metrics_text(
    settings: Settings, outcome: RunOutcome | None, last_success: float | None
) -> bytes:
    """The families of `maintctl status --metrics-file`, and of `run --metrics-file` once this
    server has run: read from the database at each scrape."""
    from prometheus_client import generate_latest

    from maintctl import metrics
    from maintctl.api import Maintenance

    status = Maintenance(settings).status()
    text = generate_latest(metrics.status_registry(status))
    if outcome is not None:
        text += generate_latest(metrics.run_registry(outcome, last_success))
    return text


def _dashboard_data(settings: Settings) -> tuple[StatusReport, list[RunRecord]]:
    """What waits and the last runs, over one connection (which only reads, as status's)."""
    from maintctl import ledger
    from maintctl.api import Maintenance
    from maintctl.status import get_status

    with Maintenance(settings).connect(writes=False) as conn:
        return get_status(conn, settings), ledger.history(conn, HISTORY_RUNS)


# --- the dashboard ---------------------------------------------------------------------------

_e = html.escape

STYLE = """
:root { color-scheme: light dark; --ok: #1a7f37; --bad: #cf222e; --warn: #9a6700; }
body { font: 15px/1.4 system-ui, sans-serif; margin: 0 auto; padding: 12px; max-width: 960px; }
h1 { font-size: 1.4em; margin: 0 0 4px; } h2 { font-size: 1.1em; margin: 20px 0 6px; }
.scroll { overflow-x: auto; } table { border-collapse: collapse; width: 100%; }
th, td { text-align: left; padding: 4px 8px; border-bottom: 1px solid #8884; white-space: nowrap; }
td.n, th.n { text-align: right; font-variant-numeric: tabular-nums; }
.ok { color: var(--ok); } .bad { color: var(--bad); } .warn { color: var(--warn); }
.card { border: 1px solid #8886; border-radius: 8px; padding: 8px 12px; }
svg { width: 100%; height: auto; display: block; } svg text { font-size: 11px; fill: currentColor; }
.legend span { display: inline-block; margin-right: 12px; }
.legend i { display: inline-block; width: 10px; height: 10px; margin-right: 4px; }
form { display: flex; gap: 8px; flex-wrap: wrap; } input { font: inherit; padding: 6px; }
td.what { white-space: normal; }
@media (max-width: 600px) {
  body { font-size: 14px; padding: 8px; } th, td { padding: 3px 4px; }
  svg text { font-size: 22px; }
}
"""
# The rules' colours, in the order of a run; more rules than colours ([[purge]] rules) reuse them.
TASK_COLORS = ("#0969da", "#8250df", "#1a7f37", "#bf8700", "#cf222e", "#1b7c83", "#953800")


def _page(body: str, *, status: int = 200) -> HTMLResponse:
    document = (
        '<!doctype html><html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>maintctl</title><style>{STYLE}</style></head><body>{body}</body></html>"
    )
    headers = {
        **NO_STORE,
        "Content-Security-Policy": DASHBOARD_POLICY,
        "Referrer-Policy": "no-referrer",
    }
    return HTMLResponse(document, status_code=status, headers=headers)


def _login_form(settings: Settings, *, failed: bool) -> str:
    if settings.cron_secret is None:
        return "<h1>maintctl</h1><p class=bad>MAINTCTL_CRON_SECRET is not set on the server.</p>"
    note = "<p class=bad>Wrong secret.</p>" if failed else ""
    return (
        "<h1>maintctl</h1><p>The dashboard needs the server's MAINTCTL_CRON_SECRET.</p>"
        f'{note}<form method="post" action="/login">'
        '<input type="password" name="secret" autocomplete="current-password" '
        'aria-label="secret" required><button type="submit">Show</button></form>'
    )


def _when(moment: Any) -> str:
    return f"{moment.astimezone(UTC):%Y-%m-%d %H:%M} UTC" if moment is not None else "never"


def _run_ms(run: RunRecord) -> int:
    if run.finished_at is None:
        return 0
    return int((run.finished_at - run.started_at).total_seconds() * 1000)


def _took(milliseconds: int) -> str:
    return f"{milliseconds} ms" if milliseconds < 1000 else f"{milliseconds / 1000:.1f} s"


def _status_class(status: str) -> str:
    return {"succeeded": "ok", "ok": "ok", "failed": "bad", "interrupted": "bad"}.get(
        status, "warn"
    )


def dashboard_html(status: StatusReport, runs: list[RunRecord], max_runtime: timedelta) -> str:
    """The dashboard's body: what waits, the pause switch, the last runs and two charts. Its
    rules are those the status counted: every rule the policy applies, [[purge]] rules included."""
    from maintctl.durations import format_duration

    task_names = [name for name, *_ in status.waiting()]
    colors = tuple(TASK_COLORS[index % len(TASK_COLORS)] for index in range(len(task_names)))
    waiting = "".join(
        f"<tr><td class=what>{_e(label)}</td><td>{_e(threshold)}</td>"
        f"<td class=n>{rows:,}{'+' if status.at_limit(rows) else ''}</td></tr>"
        for _, label, threshold, rows in status.waiting()
    )
    pause = status.pause
    if pause.paused:
        switch = (
            f"<p class=bad><b>Paused</b> since {_e(_when(pause.paused_at))} by "
            f"{_e(pause.paused_by or '?')}: {_e(pause.reason or 'no reason given')}</p>"
            "<p>maintctl resume ends the pause.</p>"
        )
    else:
        switch = "<p class=ok><b>Not paused</b>: runs do their work.</p>"
    success = _when(status.last_success)
    head = (
        "<h1>maintctl</h1>"
        f"<p>Database time {_e(_when(status.server_now))} · last successful run finished "
        f"{_e(success)} · each HTTP run stops after {_e(format_duration(max_runtime))}</p>"
    )
    rows_by_run = [
        [sum(t["rows"] for t in run.tasks if t.get("task") == name) for name in task_names]
        for run in runs
    ]
    recent = "".join(
        f"<tr><td class=n>{run.id}</td><td>{_e(_when(run.started_at))}</td>"
        f"<td>{_e(run.command)}{' (dry run)' if run.dry_run else ''}</td>"
        f'<td class="{_status_class(run.status)}">{_e(run.status)}</td>'
        + "".join(f"<td class=n>{rows:,}</td>" for rows in counts)
        + f"<td class=n>{_took(_run_ms(run))}</td>"
        f"<td>{_e('; '.join([*run.errors, *([run.skipped] if run.skipped else [])]))}</td></tr>"
        for run, counts in zip(runs[:10], rows_by_run, strict=False)
    )
    charted = [
        (run, counts)
        for run, counts in zip(runs, rows_by_run, strict=True)
        if not run.dry_run and run.status != "skipped"
    ][::-1]  # oldest first
    legend = "".join(
        f'<span><i style="background:{color}"></i>{_e(name)}</span>'
        for name, color in zip(task_names, colors, strict=True)
    )
    task_heads = "".join(f"<th class=n>{_e(name)}</th>" for name in task_names)
    none_yet = f"<tr><td colspan={len(task_names) + 6}>none yet</td></tr>"
    return (
        head + '<h2>Waiting</h2><div class="card scroll"><table><tr><th>What</th><th>Threshold</th>'
        f"<th class=n>Rows</th></tr>{waiting}</table></div>"
        f'<h2>Pause switch</h2><div class="card">{switch}</div>'
        '<h2>Last runs</h2><div class="card scroll"><table><tr><th class=n>Run</th>'
        f"<th>Started</th><th>Command</th><th>Status</th>{task_heads}<th class=n>Took</th>"
        f"<th>Errors</th></tr>{recent or none_yet}</table></div>"
        f'<h2>Rows per task</h2><div class="card"><div class="legend">{legend}</div>'
        + bar_chart(
            [str(run.id) for run, _ in charted],
            [counts for _, counts in charted],
            colors,
            "rows",
            "chart-rows",
        )
        + '</div><h2>Duration</h2><div class="card">'
        + bar_chart(
            [str(run.id) for run, _ in charted],
            [[_run_ms(run)] for run, _ in charted],
            ("#57606a",),
            "ms",
            "chart-duration",
        )
        + "</div>"
    )


def bar_chart(
    labels: list[str],
    stacks: list[list[int]],
    colors: tuple[str, ...],
    unit: str,
    chart_id: str,
) -> str:
    """A stacked bar chart as inline SVG: one bar per label, one segment per value."""
    width, height, left, bottom = 600, 180, 56, 20
    if not stacks:
        return (
            f'<svg id="{chart_id}" viewBox="0 0 {width} 40">'
            '<text x="8" y="24">no runs yet</text></svg>'
        )
    top = max(*(sum(stack) for stack in stacks), 1)
    plot = height - bottom - 8
    slot = (width - left) / len(stacks)
    bar = max(slot * 0.7, 1.0)
    parts = [
        f'<svg id="{chart_id}" viewBox="0 0 {width} {height}" role="img" '
        f'aria-label="{_e(unit)} per run">',
        f'<text x="4" y="20">{top:,} {_e(unit)}</text>',
        f'<text x="4" y="{height - bottom}">0</text>',
        f'<line x1="{left}" y1="{height - bottom}" x2="{width}" y2="{height - bottom}" '
        'stroke="currentColor" stroke-opacity=".4"/>',
    ]
    for index, (label, stack) in enumerate(zip(labels, stacks, strict=True)):
        x = left + index * slot + (slot - bar) / 2
        base = float(height - bottom)
        for value, color in zip(stack, colors, strict=False):
            size = plot * value / top
            base -= size
            parts.append(
                f'<rect class="bar" x="{x:.1f}" y="{base:.1f}" width="{bar:.1f}" '
                f'height="{size:.1f}" fill="{color}"><title>run {_e(label)}: {value:,} '
                f"{_e(unit)}</title></rect>"
            )
        if len(stacks) <= 15 or index % max(len(stacks) // 10, 1) == 0:
            parts.append(
                f'<text x="{x + bar / 2:.1f}" y="{height - 4}" text-anchor="middle">'
                f"{_e(label)}</text>"
            )
    parts.append("</svg>")
    return "".join(parts)


# --- maintctl serve --------------------------------------------------------------------------


def serve(settings: Settings, host: str, port: int) -> None:
    """Run the app under uvicorn until SIGTERM or SIGINT. A run in progress then stops at its
    next batch (the ledger says interrupted) and answers before the server exits."""
    import uvicorn

    from maintctl import cli, tasks

    class StoppingServer(uvicorn.Server):
        def handle_exit(self, sig: int, frame: Any) -> None:
            tasks.stop_requested.set()
            super().handle_exit(sig, frame)

    config = uvicorn.Config(
        create_app(settings), host=host, port=port, lifespan="off", log_level="info"
    )
    # Bound here, not by uvicorn (which exits 1 with its own message): a port in use or a host
    # that does not resolve is one line and exit 78, like any setting maintctl cannot use.
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    try:
        listener = socket.create_server((host, port), family=family)
    except OSError as exc:
        reason = (exc.strerror or str(exc)).split(" (while attempting")[0]
        raise ConfigError(f"--host/--port: cannot listen on {host}:{port}: {reason}") from None
    # uvicorn hands the signal that stopped it back to the handler it found, once it has shut
    # down: ignored here, so that a server stopped on purpose exits 0.
    previous = {
        signum: signal.signal(signum, signal.SIG_IGN) for signum in (signal.SIGTERM, signal.SIGINT)
    }
    cli._log("listening", message=f"listening on http://{host}:{port} (stop with SIGTERM)")
    try:
        StoppingServer(config).run(sockets=[listener])
    finally:
        listener.close()
        for signum, handler in previous.items():
            signal.signal(signum, handler)


app = create_app()
