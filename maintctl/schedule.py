"""`maintctl cron`: a ready crontab entry, or a systemd service and timer, for the daily run.

Pure text: nothing here connects anywhere. The schedule is a five-field cron expression, checked
with croniter; for systemd it becomes an OnCalendar expression when one means the same thing.
"""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass
from pathlib import PurePosixPath

DEFAULT_SCHEDULE = "0 3 * * *"
DEFAULT_ENV_FILE = "/etc/maintctl.env"
DEFAULT_USER = "maintctl"

_MACROS = {
    "@yearly": "0 0 1 1 *",
    "@annually": "0 0 1 1 *",
    "@monthly": "0 0 1 * *",
    "@weekly": "0 0 * * 0",
    "@daily": "0 0 * * *",
    "@midnight": "0 0 * * *",
    "@hourly": "0 * * * *",
}
_MONTHS = ["jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec"]
_CRON_DAYS = ["sun", "mon", "tue", "wed", "thu", "fri", "sat"]
_SYSTEMD_DAYS = ["Sun", "Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun"]


class ScheduleError(ValueError):
    """A schedule maintctl cannot use, or cannot express for systemd."""


def check_schedule(schedule: str) -> str:
    """The schedule, normalised to single spaces, if croniter reads it as five fields."""
    from croniter import croniter

    text = " ".join(schedule.split())
    expanded = _MACROS.get(text.lower(), text)
    if len(expanded.split()) != 5 or not croniter.is_valid(expanded):
        raise ScheduleError(
            f"{schedule!r} is not a cron schedule (five fields: minute hour day month weekday, "
            "e.g. '0 3 * * *')"
        )
    return text


def on_calendar(schedule: str) -> str:
    """The systemd OnCalendar expression (UTC) that fires when the cron schedule does."""
    text = _MACROS.get(schedule.lower(), schedule)
    minute, hour, day, month, weekday = text.split()
    if day != "*" and weekday != "*":
        # cron fires when EITHER matches; OnCalendar when both do.
        raise ScheduleError(
            f"{schedule!r} restricts both the day of month and the weekday, which cron ORs and "
            "systemd ANDs; give the timer's expression with --on-calendar"
        )
    try:
        date = f"*-{_field(month, 1, 12, names=_MONTHS)}-{_field(day, 1, 31)}"
        time = f"{_field(hour, 0, 23)}:{_field(minute, 0, 59)}:00"
        days = "" if weekday == "*" else _weekdays(weekday) + " "
    except ScheduleError:
        raise ScheduleError(
            f"{schedule!r} has no systemd OnCalendar equivalent maintctl can write; "
            "give the timer's expression with --on-calendar"
        ) from None
    return f"{days}{date} {time} UTC"


def _number(text: str, low: int, high: int, names: list[str] | None = None) -> int:
    if names and text.lower() in names:
        return names.index(text.lower()) + low
    if not text.isdigit() or not low <= int(text) <= high:
        raise ScheduleError(text)
    return int(text)


def _field(text: str, low: int, high: int, names: list[str] | None = None) -> str:
    if text == "*":
        return "*"
    if match := re.fullmatch(r"\*/(\d+)", text):
        return f"{low:02d}/{int(match.group(1))}"
    parts = []
    for item in text.split(","):
        if "-" in item:
            first, _, last = item.partition("-")
            a, b = _number(first, low, high, names), _number(last, low, high, names)
            if a > b:
                raise ScheduleError(item)
            parts.append(f"{a:02d}..{b:02d}")
        else:
            parts.append(f"{_number(item, low, high, names):02d}")
    return ",".join(parts)


def _weekdays(text: str) -> str:
    parts = []
    for item in text.split(","):
        if "-" in item:
            first, _, last = item.partition("-")
            a, b = _number(first, 0, 7, _CRON_DAYS), _number(last, 0, 7, _CRON_DAYS)
            if a > b:
                raise ScheduleError(item)
            parts.append(f"{_SYSTEMD_DAYS[a]}..{_SYSTEMD_DAYS[b]}")
        else:
            parts.append(_SYSTEMD_DAYS[_number(item, 0, 7, _CRON_DAYS)])
    return ",".join(parts)


@dataclass(frozen=True)
class Job:
    """What the scheduler runs: this maintctl, its environment file and options."""

    maintctl: str
    schedule: str = DEFAULT_SCHEDULE
    env_file: str = DEFAULT_ENV_FILE
    user: str = DEFAULT_USER
    metrics_file: str | None = None

    def __post_init__(self) -> None:
        for label, path in (("--env-file", self.env_file), ("--maintctl", self.maintctl)):
            if not PurePosixPath(path).is_absolute():
                raise ScheduleError(f"{label}: {path!r} is not an absolute path")
        if self.metrics_file and not PurePosixPath(self.metrics_file).is_absolute():
            raise ScheduleError(f"--metrics-file: {self.metrics_file!r} is not an absolute path")
        if not re.fullmatch(r"[a-z_][a-z0-9_.-]*\$?", self.user, flags=re.IGNORECASE):
            raise ScheduleError(f"--user: {self.user!r} is not a user name")

    def arguments(self, *extra: str) -> list[str]:
        metrics = ["--metrics-file", self.metrics_file] if self.metrics_file else []
        return [self.maintctl, "run", *extra, *metrics]


def crontab(job: Job) -> str:
    """A file for /etc/cron.d: the environment file read by /bin/sh, the output to syslog
    (tag maintctl) and the job's exit status maintctl's own."""
    command = shlex.join(job.arguments("--quiet"))
    env_file = shlex.quote(job.env_file)
    # Without pipefail (dash has none), maintctl's status comes back through fd 3.
    line = (
        f"set -a && . {env_file} && set +a && "
        f"s=$( {{ {{ {command} 2>&1 3>&-; echo $? >&3; }} | logger -t maintctl 3>&-; }} 3>&1 )"
        ' && exit "$s"'
    )
    line = line.replace("%", "\\%")  # cron turns a bare % into a newline
    return "\n".join(
        [
            "# /etc/cron.d/maintctl, written by `maintctl cron` (owner root, mode 0644).",
            f"# {job.env_file}: MAINTCTL_DATABASE_URL and any other MAINTCTL_* or PG* setting,",
            "# one NAME=value a line, read by /bin/sh: single-quote values with spaces or $;",
            f"# owner root:{job.user}, mode 0640. maintctl itself guards against overlapping",
            "# runs. Errors go to syslog (tag maintctl); the job exits with maintctl's code.",
            "CRON_TZ=UTC",
            "SHELL=/bin/sh",
            "PATH=/usr/local/bin:/usr/bin:/bin",
            f"{job.schedule} {job.user} {line}",
            "",
        ]
    )


def systemd_units(job: Job, calendar: str, randomized_delay: str = "15m") -> dict[str, str]:
    """maintctl.service (oneshot, hardened) and maintctl.timer, by file name."""
    exec_start = shlex.join(job.arguments("--log-format", "json"))
    writable = []
    if job.metrics_file:
        writable.append(f"ReadWritePaths={PurePosixPath(job.metrics_file).parent}")
    service = "\n".join(
        [
            "# /etc/systemd/system/maintctl.service, written by `maintctl cron --systemd`",
            "[Unit]",
            "Description=maintctl: maintenance of the import database",
            "Wants=network-online.target",
            "After=network-online.target",
            "",
            "[Service]",
            "Type=oneshot",
            f"User={job.user}",
            f"Group={job.user}",
            f"EnvironmentFile={job.env_file}",
            f"ExecStart={exec_start}",
            "# SIGTERM ends maintctl between batches (exit 143); the next run carries on.",
            "TimeoutStartSec=6h",
            "# Hardening: maintctl needs the network and its own files, nothing else.",
            "NoNewPrivileges=yes",
            "ProtectSystem=strict",
            "ProtectHome=read-only",
            *writable,
            "PrivateTmp=yes",
            "PrivateDevices=yes",
            "ProtectKernelTunables=yes",
            "ProtectKernelModules=yes",
            "ProtectKernelLogs=yes",
            "ProtectControlGroups=yes",
            "ProtectClock=yes",
            "ProtectHostname=yes",
            "RestrictAddressFamilies=AF_UNIX AF_INET AF_INET6",
            "RestrictNamespaces=yes",
            "RestrictRealtime=yes",
            "RestrictSUIDSGID=yes",
            "LockPersonality=yes",
            "SystemCallArchitectures=native",
            "SystemCallFilter=@system-service",
            "CapabilityBoundingSet=",
            "UMask=0027",
            "",
        ]
    )
    timer = "\n".join(
        [
            "# /etc/systemd/system/maintctl.timer, written by `maintctl cron --systemd`",
            "[Unit]",
            "Description=maintctl: daily maintenance of the import database",
            "",
            "[Timer]",
            f"OnCalendar={calendar}",
            "# A run missed while the machine was off starts at boot.",
            "Persistent=true",
            f"RandomizedDelaySec={randomized_delay}",
            "",
            "[Install]",
            "WantedBy=timers.target",
            "",
        ]
    )
    return {"maintctl.service": service, "maintctl.timer": timer}
