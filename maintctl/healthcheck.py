"""Pings for a dead man's switch such as Healthchecks.io (MAINTCTL_HEALTHCHECK_URL).

The Healthchecks.io convention: `URL/start` when a run starts, `URL` when it succeeds, `URL/<exit
code>` when it does not (a non-zero code marks the check down). Each ping is one HTTP POST whose
body is a one-line summary, with a short timeout. A ping that fails is logged and never changes
the run's outcome: the monitor notices the missing ping, which is its job.
"""

from __future__ import annotations

import base64
import urllib.parse
from collections.abc import Callable
from datetime import timedelta

from maintctl import __version__


def public_url(url: str) -> str:
    """The URL as messages show it: scheme and host only. The path of a ping URL is the check's
    secret (hc-ping.com/<uuid>), and the query or userinfo may hold a key."""
    try:
        parts = urllib.parse.urlsplit(url)
        host = parts.hostname or "?"
        port = f":{parts.port}" if parts.port else ""
    except ValueError:
        return "the configured URL"
    return f"{parts.scheme}://{host}{port}/…"


def ping_url(url: str, suffix: str) -> str:
    """URL with `/suffix` appended to its path (before any query string)."""
    if not suffix:
        return url
    parts = urllib.parse.urlsplit(url)
    path = parts.path.rstrip("/") + "/" + suffix
    return urllib.parse.urlunsplit(parts._replace(path=path))


def ping(
    url: str,
    suffix: str,
    body: str,
    *,
    timeout: timedelta,
    warn: Callable[[str], None],
) -> bool:
    """POST `body` to URL[/suffix]; True when the monitor answered 2xx. Never raises."""
    import urllib.error
    import urllib.request

    what = suffix or "success"
    headers = {"User-Agent": f"maintctl/{__version__}", "Content-Type": "text/plain"}
    try:
        target, credentials = _without_userinfo(ping_url(url, suffix))
        if credentials:  # urllib does not read user:password@ itself
            headers["Authorization"] = "Basic " + base64.b64encode(credentials).decode()
        request = urllib.request.Request(  # the settings allow http(s) URLs only
            target, data=body.encode("utf-8")[:10_000], method="POST", headers=headers
        )
        with urllib.request.urlopen(request, timeout=timeout.total_seconds()) as response:
            response.read(1024)
    except urllib.error.HTTPError as exc:
        reason = f"HTTP {exc.code}"
    except (OSError, ValueError) as exc:  # URLError, timeouts and refused connections are OSErrors
        cause = getattr(exc, "reason", None) or exc
        reason = f"{type(cause).__name__}: {cause}" if str(cause) else type(cause).__name__
    else:
        return True
    warn(f"healthcheck ping ({what}) to {public_url(url)} failed: {reason}")
    return False


def _without_userinfo(url: str) -> tuple[str, bytes]:
    """The URL without user:password@, and those credentials for a Basic auth header."""
    parts = urllib.parse.urlsplit(url)
    if parts.username is None:
        return url, b""
    host = parts.hostname or ""
    netloc = (f"[{host}]" if ":" in host else host) + (f":{parts.port}" if parts.port else "")
    user = urllib.parse.unquote(parts.username)
    password = urllib.parse.unquote(parts.password or "")
    return urllib.parse.urlunsplit(parts._replace(netloc=netloc)), f"{user}:{password}".encode()
