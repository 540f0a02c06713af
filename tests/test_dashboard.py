"""The dashboard of `maintctl serve` (GET /): no data without the secret unless --public-dashboard,
a login form whose cookie is an HMAC of the secret, and the page itself in a real headless
Chromium: the charts render and the browser logs nothing (the page loads nothing from elsewhere).

UPDATE_DASHBOARD_SCREENSHOT=1 makes the browser test write docs/dashboard.png, the README's
picture."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from http.cookies import SimpleCookie
from pathlib import Path

import pytest

from maintctl.web import COOKIE, ROUTE, session_token
from tests.data import Conn, load_sample
from tests.serving import SECRET, serving

ROOT = Path(__file__).resolve().parent.parent
DATA_MARK = "Runs stuck in processing"  # a label that only a page with data shows


def test_without_the_secret_the_dashboard_shows_a_form_and_no_data(db_url: str, conn: Conn) -> None:
    load_sample(conn)
    with serving(db_url) as server:
        page = server.get("/")
        wrong = server.get("/", x_cron_secret="a-guess")
        forged = server.get("/", Cookie=f"{COOKIE}={session_token('a-guess')}")
        with_header = server.get("/", x_cron_secret=SECRET)

    for refused in (page, wrong, forged):
        assert refused.status == 401
        assert DATA_MARK not in refused.text
        assert '<form method="post" action="/login">' in refused.text
    assert with_header.status == 200
    assert DATA_MARK in with_header.text


def test_the_login_form_sets_an_httponly_strict_cookie_that_is_not_the_secret(
    db_url: str, conn: Conn
) -> None:
    load_sample(conn)
    with serving(db_url) as server:
        refused = server.post("/login", b"secret=a-guess")
        accepted = server.post("/login", f"secret={SECRET}".encode())
        cookie = SimpleCookie(accepted.headers["set-cookie"])[COOKIE]
        page = server.get("/", Cookie=f"{COOKIE}={cookie.value}")
        route = server.get(ROUTE, Cookie=f"{COOKIE}={cookie.value}")

    assert refused.status == 401
    assert "Wrong secret." in refused.text
    assert "set-cookie" not in refused.headers
    assert (accepted.status, accepted.headers["location"]) == (303, "/")
    assert cookie["httponly"] is True
    assert cookie["samesite"].lower() == "strict"
    assert SECRET not in cookie.value
    assert cookie.value == session_token(SECRET)
    assert page.status == 200
    assert DATA_MARK in page.text
    assert route.status == 401, "the cookie opens the dashboard, never a run"


def test_public_dashboard_shows_the_data_without_the_secret(db_url: str, conn: Conn) -> None:
    load_sample(conn)
    with serving(db_url, "--public-dashboard") as server:
        page = server.get("/")
        metrics = server.get("/metrics")
        route = server.get(ROUTE)

    assert page.status == 200
    assert metrics.status == 200
    assert route.status == 401, "the route still needs the secret"
    assert re.search(
        r"<td class=what>Old temp uploads</td><td>1d</td><td class=n>289</td>", page.text
    )
    assert page.headers["content-security-policy"].startswith("default-src 'none'")
    assert not re.search(r"\b(src|href)=", page.text), "the page loads nothing else"


def test_the_dashboard_shows_the_pause_and_the_last_runs(db_url: str, conn: Conn) -> None:
    load_sample(conn)
    with serving(db_url, "--public-dashboard") as server:
        server.get(ROUTE, x_cron_secret=SECRET)
        conn.execute(
            "update maintenance.pause set paused = true, reason = 'restoring <a backup>', "
            "paused_by = 'ops@db1', paused_at = now()"
        )
        page = server.get("/").text

    assert "<b>Paused</b> since " in page
    assert "by ops@db1: restoring &lt;a backup&gt;" in page, "escaped"
    assert re.search(r"<td class=n>1</td><td>[^<]+ UTC</td><td>run</td>", page)
    assert '<td class="ok">succeeded</td><td class=n>15</td><td class=n>289</td>' in page
    assert page.count('<rect class="bar"') == 4 + 1  # one segment per task, one duration bar


def chromium() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        found = shutil.which(name)
        if found:
            return found
    return None


def browse(url: str, out: Path, *extra: str) -> tuple[str, list[str]]:
    """The DOM Chromium built of the page, and the console messages it logged."""
    browser = chromium()
    if browser is None:
        pytest.skip("no chromium (Debian package chromium; .ci/run installs it)")
    command = [
        browser,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--no-first-run",
        f"--user-data-dir={out / 'profile'}",
        "--enable-logging=stderr",
        "--v=0",
        *extra,
    ]
    dom = subprocess.run(
        [*command, "--dump-dom", url], capture_output=True, text=True, timeout=120, check=True
    )
    console = [line for line in dom.stderr.splitlines() if ":CONSOLE" in line]
    return dom.stdout, console


def test_the_browser_probe_sees_a_console_message(tmp_path: Path) -> None:
    # The check below can fail: a page that logs, or loads what its policy refuses, is seen.
    page = "data:text/html,<script>console.error('boom')</script>"
    _, console = browse(page, tmp_path)

    assert any('"boom"' in line for line in console)


def test_the_dashboard_renders_its_charts_in_a_real_browser_without_console_errors(
    db_url: str, conn: Conn, tmp_path: Path
) -> None:
    with serving(db_url, "--public-dashboard") as server:
        for _ in range(3):
            load_sample(conn)
            assert server.get(ROUTE, x_cron_secret=SECRET).status == 200
        load_sample(conn)  # something waits again
        dom, console = browse(server.url + "/", tmp_path)
        screenshot = tmp_path / "dashboard.png"
        browse(
            server.url + "/",
            tmp_path,
            "--window-size=800,1300",
            "--hide-scrollbars",
            f"--screenshot={screenshot}",
        )

    assert console == []
    rows_chart = dom[
        dom.index('<svg id="chart-rows"') : dom.index("</svg>", dom.index("chart-rows"))
    ]
    assert rows_chart.count('<rect class="bar"') == 3 * 4
    assert dom.count('<rect class="bar"') == 3 * 4 + 3
    assert "run 1: 289 rows" in rows_chart
    assert screenshot.read_bytes().startswith(b"\x89PNG\r\n\x1a\n")
    if os.environ.get("UPDATE_DASHBOARD_SCREENSHOT"):
        shutil.copyfile(screenshot, ROOT / "docs" / "dashboard.png")
