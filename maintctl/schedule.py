"""`maintctl cron`: a ready crontab entry, or a systemd service and timer, for the daily run.

Pure text: nothing here connects anywhere. The schedule is a five-field cron expression in UTC,
checked with croniter; for systemd it becomes an OnCalendar expression when one means the same
thing. Only some crons honour `CRON_TZ` (cronie, of Fedora, RHEL and Arch, does; Debian's and
Ubuntu's cron and busybox crond ignore it and use the host's zone), so the crontab is written in
the host's zone, converted from UTC, unless the caller says its cron honours `CRON_TZ`.
"""

from __future__ import annotations

import re
import shlex
import shutil
import subprocess
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path, PurePosixPath

DEFAULT_SCHEDULE = "0 3 * * *"
DEFAULT_ENV_FILE = "/etc/maintctl.env"
DEFAULT_USER = "maintctl"
# What creates the system user that the cron file and the units run as (Debian, Ubuntu, RHEL...).
CREATE_USER = "useradd --system --user-group --no-create-home --shell /usr/sbin/nologin {user}"
SYSTEMD_SHORTHANDS = (
    "minutely", "hourly", "daily", "weekly", "monthly", "yearly", "annually", "quarterly",
    "semiannually",
)  # fmt: skip

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


def host_zone() -> str | None:
    """The zone of this host's clock, which cron uses (not $TZ of the caller): /etc/timezone, else
    the target of the /etc/localtime link; None when neither says."""
    try:
        named = Path("/etc/timezone").read_text(encoding="utf-8").strip()
    except OSError:
        named = ""
    if named:
        return named
    try:
        target = str(Path("/etc/localtime").readlink())
    except OSError:
        return None
    return target.split("zoneinfo/", 1)[1] if "zoneinfo/" in target else None


@dataclass(frozen=True)
class CronTime:
    """The schedule as the cron file gives it, and what its comment says about the zone."""

    schedule: str
    utc: bool  # the file sets CRON_TZ=UTC (its schedule is the UTC one)
    note: list[str]


def cron_time(schedule: str, zone: str | None, *, cron_tz: bool) -> CronTime:
    """The UTC schedule for a cron that honours CRON_TZ (`cron_tz`) or runs in UTC; otherwise the
    schedule converted to the host's zone, at the offset in effect now."""
    from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

    honours = [
        "# Only some crons honour CRON_TZ: cronie (Fedora, RHEL, Arch) does; Debian's and",
        "# Ubuntu's cron and busybox crond ignore it and use the host's zone.",
    ]
    if cron_tz:
        return CronTime(schedule, True, [*honours, "# Written for a cron that honours it."])
    if zone is None:
        raise ScheduleError(
            "--host-timezone: this host's zone is unknown (no /etc/timezone or /etc/localtime); "
            "name it, or give --cron-tz if this cron honours CRON_TZ"
        )
    try:
        tz = ZoneInfo(zone)
    except (ZoneInfoNotFoundError, ValueError):
        raise ScheduleError(f"--host-timezone: {zone!r} is not a time zone") from None
    now = datetime.now(tz)
    offsets = {
        datetime(now.year, month, 1, tzinfo=tz).utcoffset() or timedelta() for month in (1, 7)
    }
    offset = now.utcoffset() or timedelta()
    if offsets == {timedelta()}:
        note = [*honours, f"# This host's zone ({zone}) is UTC: the schedule is UTC on any cron."]
        return CronTime(schedule, True, note)
    converted = _shift(schedule, offset)
    hours, rest = divmod(int(offset.total_seconds()) // 60, 60)
    note = [
        *honours,
        f"# This host's zone is {zone} (UTC{'+' if offset >= timedelta() else '-'}"
        f"{abs(hours):02d}:{rest:02d} now): the UTC schedule {schedule!r} is written in it.",
    ]
    if len(offsets) > 1:
        note += [
            f"# {zone} changes its offset for daylight saving time, and cron follows the host's",
            "# clock: the run moves by the change meanwhile. For a fixed UTC time use the",
            "# systemd timer (maintctl cron --systemd), or --cron-tz on cronie.",
        ]
    return CronTime(converted, False, note)


def _shift(schedule: str, offset: timedelta) -> str:
    """A UTC schedule at the host's offset, where that only moves its minutes and hours."""
    text = _MACROS.get(schedule.lower(), schedule)
    minute, hour, day, month, weekday = text.split()
    total = int(offset.total_seconds()) // 60
    cannot = ScheduleError(
        f"--schedule: {schedule!r} cannot be converted to this host's zone; use the systemd "
        "timer (--systemd), give the schedule in the host's zone with --cron-tz on a cron that "
        "honours CRON_TZ, or set the host to UTC"
    )
    if total % 60 == 0 and hour == "*":
        return text
    if not re.fullmatch(r"\d+(,\d+)*", hour) or (total % 60 and not re.fullmatch(r"\d+", minute)):
        raise cannot
    minutes = [int(minute)] if total % 60 else [0]
    shifted = sorted(
        {(h * 60 + m + total) % 1440 for h in map(int, hour.split(",")) for m in minutes}
    )
    days_move = any(
        not 0 <= h * 60 + m + total < 1440 for h in map(int, hour.split(",")) for m in minutes
    )
    if days_move and (day, month, weekday) != ("*", "*", "*"):
        raise cannot
    new_hours = ",".join(str(moment // 60) for moment in shifted)
    new_minute = str(shifted[0] % 60) if total % 60 else minute
    return f"{new_minute} {new_hours} {day} {month} {weekday}"


def crontab(job: Job, when: CronTime | None = None) -> str:
    """A file for /etc/cron.d: the environment file read by /bin/sh, the output to syslog
    (tag maintctl) and the job's exit status maintctl's own."""
    when = when or CronTime(job.schedule, True, [])
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
            f"# The user {job.user}: {CREATE_USER.format(user=job.user)}",
            *when.note,
            *(["CRON_TZ=UTC"] if when.utc else []),
            "SHELL=/bin/sh",
            "PATH=/usr/local/bin:/usr/bin:/bin",
            f"{when.schedule} {job.user} {line}",
            "",
        ]
    )


_CALENDAR = re.compile(
    r"(?:[A-Za-z]{3,9}(?:[,.]+[A-Za-z]{3,9})*\s+)?"  # weekdays: Mon, Mon..Fri, Sat,Sun
    r"(?:[\d*][\d*,./~-]*\s+)?"  # the date: *-*-01, 2026-01-01, *-02~03
    r"[\d*][\d*,./:]*"  # the time: 03:00, 03:00:00, *:0/15
    r"(?:\s+[A-Za-z][\w/+-]*)?"  # the zone: UTC, Europe/Berlin
)


def check_on_calendar(value: str) -> str:
    """An OnCalendar expression systemd accepts: checked by systemd-analyze where it is installed,
    else by the grammar of its common forms."""
    analyze = shutil.which("systemd-analyze")
    if analyze is not None:
        checked = subprocess.run(
            [analyze, "calendar", value],
            capture_output=True,
            text=True,
            check=False,
            timeout=30,
            env={"LC_ALL": "C", "TZ": "UTC", "PATH": "/usr/bin:/bin"},
        )
        if checked.returncode == 0:
            return value
        said = (checked.stderr.strip().splitlines() or ["refused"])[-1]
        raise ScheduleError(f"--on-calendar: {value!r} is not a calendar expression ({said})")
    if value.strip().lower() in SYSTEMD_SHORTHANDS or _CALENDAR.fullmatch(value.strip()):
        return value
    raise ScheduleError(
        f"--on-calendar: {value!r} is not a calendar expression (e.g. '*-*-* 03:00:00 UTC', "
        "'Mon..Fri *-*-* 02:30 UTC', 'daily')"
    )


def check_randomized_delay(value: str) -> str:
    """A RandomizedDelaySec both maintctl and systemd read: 0, or a duration such as 15m."""
    from maintctl.durations import parse_duration

    if value.strip() == "0":
        return "0"
    try:
        parse_duration(value)
    except ValueError as exc:
        raise ScheduleError(f"--randomized-delay: {exc}") from None
    return value.strip()


def _unit_value(value: str) -> str:
    """A value for a unit file: systemd expands % specifiers, so a % is written %%."""
    return value.replace("%", "%%")


def _exec_word(word: str) -> str:
    """One word of ExecStart=, as systemd splits and expands it: quoted when it has spaces,
    quotes, backslashes or a semicolon; % and $ doubled (specifiers, environment variables)."""
    escaped = _unit_value(word).replace("$", "$$")
    if re.search(r"[\s\"'\\;]", word) or not word:
        return '"' + escaped.replace("\\", "\\\\").replace('"', '\\"') + '"'
    return escaped


def systemd_units(job: Job, calendar: str, randomized_delay: str = "15m") -> dict[str, str]:
    """maintctl.service (oneshot, hardened) and maintctl.timer, by file name. Every value is
    escaped for systemd: a path with spaces or % means itself."""
    # --quiet too: no table on stdout, so the journal gets JSON lines only.
    words = job.arguments("--log-format", "json", "--quiet")
    exec_start = " ".join(_exec_word(word) for word in words)
    writable = []
    if job.metrics_file:
        parent = str(PurePosixPath(job.metrics_file).parent)
        writable.append(f"ReadWritePaths={_exec_word(parent).replace('$$', '$')}")
    service = "\n".join(
        [
            "# /etc/systemd/system/maintctl.service, written by `maintctl cron --systemd`",
            "[Unit]",
            "Description=maintctl: maintenance of the import database",
            "Wants=network-online.target",
            "After=network-online.target",
            "",
            f"# The user {job.user}: {CREATE_USER.format(user=job.user)}",
            "[Service]",
            "Type=oneshot",
            f"User={job.user}",
            f"Group={job.user}",
            f"EnvironmentFile={_unit_value(job.env_file)}",
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
