"""`maintctl cron`: the crontab entry parses and really runs under /bin/sh; the systemd units pass
`systemd-analyze verify` and the timer fires when the cron schedule does."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from datetime import UTC, datetime
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
from croniter import croniter
from typer.testing import CliRunner

from maintctl.cli import app
from tests.data import Conn, count, load_sample

BASE = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)


def maintctl(*args: str, env: dict[str, str] | None = None) -> tuple[int, str, str]:
    # A UTC host unless the test names another zone: the developer's own zone must not matter.
    if args[:1] == ("cron",) and "--systemd" not in args and "--host-timezone" not in args:
        args = (*args, "--host-timezone", "Etc/UTC")
    result = CliRunner().invoke(app, list(args), env=env)
    return result.exit_code, result.stdout, result.stderr


def job_line(crontab: str) -> list[str]:
    """The job line of a cron.d file, split into its five schedule fields, user and command."""
    [line] = [
        line for line in crontab.splitlines() if (line and line[0].isdigit()) or "@" in line[:1]
    ]
    return line.split(" ", 6)


def test_the_entry_parses_and_fires_at_three_utc(tmp_path: Path) -> None:
    code, out, err = maintctl("cron")

    assert code == 0, err
    assert "CRON_TZ=UTC" in out.splitlines()
    assert "PATH=/usr/local/bin:/usr/bin:/bin" in out.splitlines()
    *fields, user, command = job_line(out)
    schedule = " ".join(fields)
    assert schedule == "0 3 * * *"
    assert user == "maintctl"
    assert croniter(schedule, BASE).get_next(datetime) == datetime(2026, 1, 2, 3, 0, tzinfo=UTC)
    assert re.search(r"(?<!\\)%", command) is None, "a bare % is a newline to cron"
    assert "set -a && . /etc/maintctl.env && set +a" in command
    assert "| logger -t maintctl" in command
    binary = command.split("{ { ")[1].split()[0]
    assert os.access(binary, os.X_OK), "the entry runs this maintctl, by its absolute path"


def test_another_schedule_fires_when_croniter_says(tmp_path: Path) -> None:
    code, out, _ = maintctl("cron", "--schedule", "30 2 * * 1-5", "--user", "postgres")

    assert code == 0
    *fields, user, _command = job_line(out)
    assert user == "postgres"
    nexts = croniter(" ".join(fields), BASE)
    # 2026-01-01 is a Thursday: Friday 2nd, then Monday 5th.
    assert nexts.get_next(datetime) == datetime(2026, 1, 2, 2, 30, tzinfo=UTC)
    assert nexts.get_next(datetime) == datetime(2026, 1, 5, 2, 30, tzinfo=UTC)


@pytest.mark.parametrize("schedule", ["0 3 * *", "61 3 * * *", "every day", "0 3 * * * *"])
def test_a_bad_schedule_exits_2_with_one_line(schedule: str) -> None:
    code, out, err = maintctl("cron", "--schedule", schedule)

    assert code == 2
    assert out == ""
    assert err.startswith(f"maintctl: error: --schedule: {schedule!r} is not a cron schedule")
    assert err.count("\n") == 1


def run_entry(command: str, tmp_path: Path) -> tuple[int, str]:
    """The job's command as cron runs it: /bin/sh -c, cron's PATH, a logger that writes a file."""
    stubs = tmp_path / "bin"
    stubs.mkdir(exist_ok=True)
    logger = stubs / "logger"
    logger.write_text('#!/bin/sh\necho "logger $*" >> "$SYSLOG"\ncat >> "$SYSLOG"\n')
    logger.chmod(0o755)
    syslog = tmp_path / "syslog"
    syslog.write_text("")
    completed = subprocess.run(
        ["/bin/sh", "-c", command],
        env={"PATH": f"{stubs}:/usr/bin:/bin", "SYSLOG": str(syslog)},
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )
    assert completed.stdout == "", "cron would mail this"
    return completed.returncode, syslog.read_text()


def test_the_entry_runs_under_bin_sh_and_keeps_the_exit_code(
    db_url: str, conn: Conn, tmp_path: Path
) -> None:
    load_sample(conn)
    env_file = tmp_path / "maintctl.env"
    env_file.write_text(f"MAINTCTL_DATABASE_URL='{db_url}'\nMAINTCTL_TEMP_UPLOAD_TTL=2d\n")
    *_, command = job_line(maintctl("cron", "--env-file", str(env_file))[1])

    code, syslog = run_entry(command, tmp_path)

    assert code == 0
    assert syslog == "logger -t maintctl\n", "--quiet: nothing to log on success"
    assert count(conn, "select count(*) from temp_uploads") == 433 - 145, "the env file was read"

    env_file.write_text(f"MAINTCTL_DATABASE_URL='{db_url}'\nMAINTCTL_ENABLED=false\n")
    code, syslog = run_entry(command, tmp_path)

    assert code == 75
    assert syslog == (
        "logger -t maintctl\nmaintctl: error: maintenance is disabled (MAINTCTL_ENABLED=false)\n"
    )

    env_file.unlink()
    code, _ = run_entry(command, tmp_path)
    assert code != 0, "a missing environment file fails the job"


def test_a_relative_env_file_is_refused() -> None:
    code, out, err = maintctl("cron", "--env-file", "maintctl.env")

    assert code == 2
    assert out == ""
    assert err == "maintctl: error: --env-file: 'maintctl.env' is not an absolute path\n"


def systemd_analyze() -> str:
    found = shutil.which("systemd-analyze")
    if found is None:
        pytest.skip("systemd-analyze is not installed here")
    probe = subprocess.run([found, "--version"], capture_output=True, text=True, check=False)
    if probe.returncode != 0:
        pytest.skip(f"systemd-analyze cannot run here: {probe.stderr.strip()}")
    return found


def test_the_systemd_units_pass_systemd_analyze_verify(tmp_path: Path) -> None:
    analyze = systemd_analyze()
    metrics = tmp_path / "textfile" / "maintctl.prom"

    code, out, err = maintctl(
        "cron",
        "--systemd",
        "--user",
        "root",
        "--output-dir",
        str(tmp_path),
        "--metrics-file",
        str(metrics),
    )

    assert code == 0, err
    service, timer = tmp_path / "maintctl.service", tmp_path / "maintctl.timer"
    assert out == f"wrote {service}\nwrote {timer}\n"
    verified = subprocess.run(
        [analyze, "verify", str(service), str(timer)], capture_output=True, text=True, check=False
    )
    assert verified.returncode == 0, verified.stderr
    assert verified.stderr == "", "systemd-analyze found something to warn about"
    lines = service.read_text().splitlines()
    assert "Type=oneshot" in lines
    assert "EnvironmentFile=/etc/maintctl.env" in lines
    assert f"ReadWritePaths={metrics.parent}" in lines
    assert "NoNewPrivileges=yes" in lines
    exec_start = next(line for line in lines if line.startswith("ExecStart="))
    assert exec_start.endswith(f"run --log-format json --quiet --metrics-file {metrics}")
    timer_lines = timer.read_text().splitlines()
    assert "OnCalendar=*-*-* 03:00:00 UTC" in timer_lines
    assert "Persistent=true" in timer_lines
    assert "RandomizedDelaySec=15m" in timer_lines


def test_verify_would_catch_a_unit_that_runs_nothing(tmp_path: Path) -> None:
    analyze = systemd_analyze()
    maintctl("cron", "--systemd", "--user", "root", "--output-dir", str(tmp_path),
             "--maintctl", "/nonexistent/maintctl")  # fmt: skip

    verified = subprocess.run(
        [analyze, "verify", str(tmp_path / "maintctl.service")],
        capture_output=True,
        text=True,
        check=False,
    )

    assert verified.returncode != 0
    assert "/nonexistent/maintctl" in verified.stderr


def systemd_elapses(analyze: str, calendar: str, iterations: int) -> list[datetime]:
    shown = subprocess.run(
        [
            analyze,
            "calendar",
            f"--iterations={iterations}",
            "--base-time=2026-01-01 12:00:00 UTC",
            calendar,
        ],
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, "TZ": "UTC", "LC_ALL": "C"},
    ).stdout
    found = re.findall(r"(?:Next elapse|Iter\. #\d+): \w+ (\S+ \S+) UTC", shown)
    return [datetime.fromisoformat(moment).replace(tzinfo=UTC) for moment in found]


@pytest.mark.parametrize(
    "schedule",
    ["0 3 * * *", "*/15 2-4 * * 1-5", "30 1 1,15 * *", "0 0 * * sun", "5 4 * 2 *", "@weekly"],
)
def test_the_timer_fires_when_the_cron_schedule_does(schedule: str) -> None:
    analyze = systemd_analyze()
    code, out, err = maintctl("cron", "--systemd", "--schedule", schedule)
    assert code == 0, err
    [calendar] = re.findall(r"^OnCalendar=(.+)$", out, flags=re.MULTILINE)

    expected = croniter(schedule, BASE)
    wanted = [expected.get_next(datetime) for _ in range(8)]

    assert systemd_elapses(analyze, calendar, 8) == wanted


def test_a_schedule_systemd_cannot_say_needs_on_calendar() -> None:
    code, out, err = maintctl("cron", "--systemd", "--schedule", "0 3 1 * mon")

    assert code == 2
    assert out == ""
    assert "--on-calendar" in err
    assert err.count("\n") == 1
    code, out, _ = maintctl(
        "cron", "--systemd", "--schedule", "0 3 1 * mon", "--on-calendar", "Mon *-*-01 03:00 UTC"
    )
    assert code == 0
    assert "OnCalendar=Mon *-*-01 03:00 UTC" in out.splitlines()


def test_cron_help_has_an_example() -> None:
    code, out, _ = maintctl("cron", "--help")

    assert code == 0
    assert "Example: maintctl cron" in out


def test_on_a_host_in_another_zone_the_schedule_is_converted_and_says_so() -> None:
    code, out, err = maintctl("cron", "--host-timezone", "Asia/Kolkata")

    assert code == 0, err
    assert "CRON_TZ=UTC" not in out.splitlines(), "Debian's cron would ignore it"
    *fields, _user, _command = job_line(out)
    schedule = " ".join(fields)
    assert schedule == "30 8 * * *"
    kolkata = ZoneInfo("Asia/Kolkata")
    fires = croniter(schedule, BASE.astimezone(kolkata)).get_next(datetime)
    assert fires.astimezone(UTC) == datetime(2026, 1, 2, 3, 0, tzinfo=UTC)
    assert "# This host's zone is Asia/Kolkata (UTC+05:30 now)" in out
    assert "cronie (Fedora, RHEL, Arch) does; Debian's and" in out


def test_a_zone_with_daylight_saving_time_is_converted_at_todays_offset_and_warned() -> None:
    code, out, err = maintctl(
        "cron", "--host-timezone", "Europe/Berlin", "--schedule", "15 3 * * *"
    )

    assert code == 0, err
    offset = datetime.now(ZoneInfo("Europe/Berlin")).utcoffset()
    assert offset is not None
    hour = 3 + int(offset.total_seconds()) // 3600
    assert job_line(out)[:5] == ["15", str(hour), "*", "*", "*"]
    assert "changes its offset for daylight saving time" in out
    assert "maintctl cron --systemd" in out


def test_cron_tz_keeps_the_utc_schedule_for_a_cron_that_honours_it() -> None:
    code, out, err = maintctl("cron", "--cron-tz", "--host-timezone", "Asia/Kolkata")

    assert code == 0, err
    assert "CRON_TZ=UTC" in out.splitlines()
    assert job_line(out)[:5] == ["0", "3", "*", "*", "*"]


def test_a_schedule_that_cannot_be_converted_is_refused() -> None:
    code, out, err = maintctl(
        "cron", "--host-timezone", "Asia/Kolkata", "--schedule", "*/15 2-4 * * 1-5"
    )

    assert code == 2
    assert out == ""
    assert err.startswith(
        "maintctl: error: --schedule: '*/15 2-4 * * 1-5' cannot be converted to this host's zone"
    )
    assert err.count("\n") == 1


def test_the_cron_file_and_the_units_say_how_to_create_the_system_user() -> None:
    create = "useradd --system --user-group --no-create-home --shell /usr/sbin/nologin maintctl"
    _, crontab, _ = maintctl("cron")
    _, units, _ = maintctl("cron", "--systemd")

    assert f"# The user maintctl: {create}" in crontab.splitlines()
    assert f"# The user maintctl: {create}" in units.splitlines()


def test_unit_values_with_spaces_and_percent_mean_themselves(tmp_path: Path) -> None:
    analyze = systemd_analyze()
    tools = tmp_path / "100% tools"
    tools.mkdir()
    binary = tools / "maintctl"
    binary.write_text("#!/bin/sh\n")
    binary.chmod(0o755)
    metrics = tmp_path / "text file" / "maintctl.prom"
    env_file = tmp_path / "my 50% env"

    code, _, err = maintctl(
        "cron", "--systemd", "--user", "root", "--output-dir", str(tmp_path),
        "--maintctl", str(binary), "--metrics-file", str(metrics), "--env-file", str(env_file),
    )  # fmt: skip

    assert code == 0, err
    service = tmp_path / "maintctl.service"
    verified = subprocess.run(
        [analyze, "verify", str(service)], capture_output=True, text=True, check=False
    )
    assert verified.returncode == 0, verified.stderr
    lines = service.read_text().splitlines()
    assert f'ExecStart="{str(binary).replace("%", "%%")}" run' in "\n".join(lines)
    assert f'ReadWritePaths="{metrics.parent}"' in lines
    assert f"EnvironmentFile={str(env_file).replace('%', '%%')}" in lines


@pytest.mark.parametrize("path", ["/usr/bin:/bin", "/nonexistent"])  # with systemd-analyze, without
def test_on_calendar_and_randomized_delay_are_checked(path: str) -> None:
    env = {"PATH": path}
    good = maintctl("cron", "--systemd", "--on-calendar", "Mon..Fri *-*-* 02:30:00 UTC", env=env)
    bad_calendar = maintctl("cron", "--systemd", "--on-calendar", "every day at 3", env=env)
    bad_delay = maintctl("cron", "--systemd", "--randomized-delay", "soon", env=env)

    assert good[0] == 0, good[2]
    assert "OnCalendar=Mon..Fri *-*-* 02:30:00 UTC" in good[1].splitlines()
    assert bad_calendar[0] == 2
    assert bad_calendar[2].startswith(
        "maintctl: error: --on-calendar: 'every day at 3' is not a calendar expression"
    )
    assert bad_calendar[2].count("\n") == 1
    assert bad_delay[0] == 2
    assert bad_delay[2].startswith("maintctl: error: --randomized-delay: ")
    assert bad_delay[2].count("\n") == 1


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--on-calendar", "daily"], "--on-calendar does something only with --systemd"),
        (["--randomized-delay", "5m"], "--randomized-delay does something only with --systemd"),
        (["--output-dir", "/tmp"], "--output-dir does something only with --systemd"),
        (["--systemd", "--cron-tz"], "--cron-tz does something only without --systemd"),
    ],
)
def test_options_that_would_do_nothing_are_refused(args: list[str], message: str) -> None:
    code, out, err = maintctl("cron", *args)

    assert code == 2
    assert out == ""
    assert err == f"maintctl: error: {message}\n"


def test_the_readme_shows_what_maintctl_cron_prints_on_a_utc_host() -> None:
    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    command = "$ maintctl cron --maintctl /opt/maintctl/bin/maintctl\n"
    start = readme.index(command) + len(command)
    shown = readme[start : readme.index("```", start)]

    code, out, err = maintctl("cron", "--maintctl", "/opt/maintctl/bin/maintctl")

    assert code == 0, err
    assert out == shown
