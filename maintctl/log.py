"""The step log on stderr: one line per step of a run, for people or for a log shipper.

stdout stays for the result (the table, or the single JSON object of --json); everything a run
says along the way goes here, to stderr. Human text by default; JSON lines with
`--log-format json` (keys: ts, level, event, message, then the event's own fields, e.g. task,
rows, durationMs, runId). `--quiet` keeps errors only. Colour only on a terminal and never with
NO_COLOR set. The runner and the tasks know nothing of this: they call a `Notify` callback.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, TextIO

from maintctl.sizes import format_size
from maintctl.streams import STDERR

LOG_FORMATS = ("text", "json")
LEVELS = {"debug": 10, "info": 20, "warning": 30, "error": 40}

# What the runner calls for each step: the event's name and its fields (camelCase keys).
Notify = Callable[..., None]

_COLORS = {"warning": "\x1b[33m", "error": "\x1b[1;31m"}
_RESET = "\x1b[0m"


def wants_color(stream: TextIO) -> bool:
    """Colour only on a terminal, and never when NO_COLOR is set to anything (no-color.org)."""
    if os.environ.get("NO_COLOR"):
        return False
    isatty = getattr(stream, "isatty", None)
    return bool(isatty and isatty())


def _took(milliseconds: int) -> str:
    return f"{milliseconds} ms" if milliseconds < 1000 else f"{milliseconds / 1000:.1f} s"


def describe(event: str, fields: dict[str, Any]) -> str:
    """The human sentence of an event."""
    if event == "connected":
        return f"connected to {fields['target']} (PostgreSQL {fields['serverVersion']})"
    if event == "lease_taken":
        return "run lease taken"
    if event == "run_started":
        kind = "dry run" if fields.get("dryRun") else "run"
        return f"{kind} {fields['runId']} started ({fields['command']})"
    if event == "task_done" and fields.get("dryRun") and fields["status"] == "ok":
        took = _took(int(fields["durationMs"]))
        return f"{fields['task']}: would touch {fields['rows']} rows ({took})"
    if event == "task_done":
        line = (
            f"{fields['task']}: {fields['status']}, {fields['rows']} rows"
            f" in {fields['batches']} batch(es), {_took(int(fields['durationMs']))}"
        )
        if fields.get("walBytes"):
            line += f", {format_size(int(fields['walBytes']))} of WAL"
        if fields.get("throttledMs"):
            line += f", {_took(int(fields['throttledMs']))} waiting on the health gate"
        return line + (f": {fields['error']}" if fields.get("error") else "")
    if event == "run_finished":
        if fields.get("skipped"):
            return f"run skipped: {fields['skipped']} (exit {fields['exitCode']})"
        if fields.get("dryRun"):
            return (
                f"dry run {fields.get('runId')} {fields['status']} in "
                f"{_took(int(fields['durationMs']))}, would touch {fields['rows']} rows "
                f"(exit {fields['exitCode']})"
            )
        return (
            f"run {fields.get('runId')} {fields['status']} in {_took(int(fields['durationMs']))}"
            f", {fields['rows']} rows (exit {fields['exitCode']})"
        )
    return str(fields.get("message") or event)


class StepLog:
    """Writes events to a stream (stderr), as text or JSON lines, honouring --quiet and colour."""

    def __init__(
        self,
        log_format: str = "text",
        *,
        quiet: bool = False,
        stream: TextIO | None = None,
        redact: Callable[[str], str] = lambda text: text,
    ) -> None:
        self.log_format = log_format if log_format in LOG_FORMATS else "text"
        self.quiet = quiet
        self.stream = stream
        self.redact = redact

    def _out(self) -> TextIO:
        # stderr as looked up at each write (a test harness swaps it), safe from a dying reader:
        # a logger that went away must not fail the run (maintctl.streams).
        return self.stream or STDERR

    def __call__(self, event: str, level: str = "info", **fields: Any) -> None:
        self.emit(event, level, **fields)

    def emit(self, event: str, level: str = "info", **fields: Any) -> None:
        # --quiet keeps errors and the warnings about the run's side jobs (a failed ping, an
        # unwritable metrics file, a failed VACUUM), which nothing else would report under cron.
        if self.quiet and LEVELS.get(level, 20) < LEVELS["error"] and event != "warning":
            return
        out = self._out()
        if self.log_format == "json":
            now = datetime.now(UTC)
            record = {
                "ts": now.strftime("%Y-%m-%dT%H:%M:%S.") + f"{now.microsecond // 1000:03d}Z",
                "level": level,
                "event": event,
                "message": describe(event, fields),
                **{key: value for key, value in fields.items() if key != "message"},
            }
            line = json.dumps(record, ensure_ascii=False, default=str)
        else:
            prefix = "maintctl: " + ("" if level == "info" else f"{level}: ")
            line = prefix + describe(event, fields)
            color = _COLORS.get(level)
            if color and wants_color(out):
                line = f"{color}{line}{_RESET}"
        out.write(self.redact(line) + "\n")
        out.flush()

    def warning(self, message: str, **fields: Any) -> None:
        self.emit("warning", "warning", message=message, **fields)

    def error(self, message: str, **fields: Any) -> None:
        self.emit("error", "error", message=message, **fields)
