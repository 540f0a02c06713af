"""A real `maintctl serve` process on a free port, and a small HTTP client for it."""

from __future__ import annotations

import json
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from email.message import Message
from typing import Any

from tests.test_commands import cron_environment, maintctl_command

SECRET = "s3cret-for-the-tests-7f1c"


@dataclass(frozen=True)
class Answer:
    status: int
    headers: Message
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)

    @property
    def text(self) -> str:
        return self.body.decode()


@dataclass
class Server:
    url: str
    process: subprocess.Popen[str]
    output: list[str] = field(default_factory=list)

    def get(self, path: str, **headers: str) -> Answer:
        return request(self.url + path, headers=headers)

    def post(self, path: str, data: bytes = b"", **headers: str) -> Answer:
        return request(self.url + path, method="POST", data=data, headers=headers)

    def stop(self, timeout: float = 30) -> tuple[int, str]:
        """SIGTERM, then the exit code and everything the server printed (stdout and stderr)."""
        if self.process.poll() is None:
            self.process.terminate()
        out, err = self.process.communicate(timeout=timeout)
        self.output.append(out + err)
        return self.process.returncode, "".join(self.output)


def request(
    url: str, *, method: str = "GET", data: bytes | None = None, headers: dict[str, str]
) -> Answer:
    wire = {name.replace("_", "-"): value for name, value in headers.items()}
    sent = urllib.request.Request(url, data=data, method=method, headers=wire)
    opener = urllib.request.build_opener(NoRedirect)
    try:
        with opener.open(sent, timeout=60) as response:
            return Answer(response.status, response.headers, response.read())
    except urllib.error.HTTPError as error:
        with error:
            return Answer(error.code, error.headers, error.read())


class NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@contextmanager
def serving(db_url: str, *args: str, env: dict[str, str] | None = None) -> Iterator[Server]:
    """`maintctl serve --port P ARGS` with MAINTCTL_CRON_SECRET=SECRET (env adds to or, with an
    empty value, removes from that), until it answers /healthz; stopped with SIGTERM after."""
    port = free_port()
    environment = {**cron_environment(db_url), "MAINTCTL_CRON_SECRET": SECRET, **(env or {})}
    environment = {name: value for name, value in environment.items() if value}
    process = subprocess.Popen(
        [*maintctl_command(), "serve", "--port", str(port), *args],
        env=environment,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    server = Server(f"http://127.0.0.1:{port}", process)
    deadline = time.monotonic() + 30
    while True:
        if process.poll() is not None:
            out, err = process.communicate()
            raise AssertionError(f"maintctl serve exited {process.returncode}: {out}{err}")
        try:
            if server.get("/healthz").status == 200:
                break
        except OSError:
            pass
        assert time.monotonic() < deadline, "maintctl serve never answered /healthz"
        time.sleep(0.1)
    try:
        yield server
    finally:
        if process.poll() is None:
            server.stop()
