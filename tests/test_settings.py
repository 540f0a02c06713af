"""Settings: durations, precedence (flag > environment > .env), and refusals with exit codes."""

from __future__ import annotations

import json
from datetime import timedelta
from pathlib import Path

import pytest

from maintctl.cli import redact
from maintctl.durations import format_duration, parse_duration
from tests.conftest import Cli
from tests.data import Conn, add_temp_upload, count


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("90s", timedelta(seconds=90)),
        ("15m", timedelta(minutes=15)),
        ("24h", timedelta(hours=24)),
        ("7d", timedelta(days=7)),
        ("2w", timedelta(weeks=2)),
        ("1d12h", timedelta(days=1, hours=12)),
        (" 1H30M ", timedelta(hours=1, minutes=30)),
    ],
)
def test_durations_parse(text: str, expected: timedelta) -> None:
    assert parse_duration(text) == expected


@pytest.mark.parametrize("text", ["", "0h", "-1d", "1.5h", "12", "h", "1y", "1h1d", "99999999w"])
def test_bad_durations_are_refused(text: str) -> None:
    with pytest.raises(ValueError, match=r"duration|zero|100 years"):
        parse_duration(text)


def test_durations_format_back() -> None:
    assert format_duration(timedelta(days=1, hours=12)) == "1d12h"
    assert format_duration(timedelta(minutes=90)) == "1h30m"
    assert format_duration(timedelta(weeks=2)) == "14d"


def thresholds(cli: Cli, *args: str, env: dict[str, str] | None = None) -> dict[str, str]:
    result = cli("status", "--json", *args, env=env)
    assert result.exit_code == 0, result.stderr
    found: dict[str, str] = json.loads(result.stdout)["thresholds"]
    return found


def test_environment_beats_dotenv_and_flags_beat_the_environment(
    cli: Cli, conn: Conn, tmp_path: Path
) -> None:
    (tmp_path / ".env").write_text("MAINTCTL_TEMP_UPLOAD_TTL=3d\nMAINTCTL_COMPACT_AFTER=10d\n")

    from_dotenv = thresholds(cli)
    from_env = thresholds(cli, env={"MAINTCTL_TEMP_UPLOAD_TTL": "2d"})

    assert (from_dotenv["tempUploadTtl"], from_dotenv["compactAfter"]) == ("3d", "10d")
    assert (from_env["tempUploadTtl"], from_env["compactAfter"]) == ("2d", "10d")
    for _ in range(3):
        add_temp_upload(conn, "50 hours")
    flag = json.loads(
        cli(
            "purge-temp", "--older-than", "60h", "--json", env={"MAINTCTL_TEMP_UPLOAD_TTL": "2d"}
        ).stdout
    )
    assert flag["tempUploadsPurged"] == 0


def test_database_url_falls_back_to_database_url(db_url: str) -> None:
    from typer.testing import CliRunner

    from maintctl.cli import app

    result = CliRunner().invoke(app, ["status", "--json"], env={"DATABASE_URL": db_url})

    assert result.exit_code == 0, result.stderr
    assert json.loads(result.stdout)["stuckRuns"] == 0


def test_maintctl_database_url_beats_database_url(cli: Cli, db_url: str) -> None:
    result = cli("status", env={"DATABASE_URL": "postgresql://nobody@127.0.0.1:1/nowhere"})

    assert result.exit_code == 0, result.stderr


@pytest.mark.parametrize(
    ("variable", "value", "message"),
    [
        ("MAINTCTL_STUCK_AFTER", "soon", "MAINTCTL_STUCK_AFTER: 'soon' is not a duration"),
        ("MAINTCTL_TEMP_UPLOAD_TTL", "0h", "MAINTCTL_TEMP_UPLOAD_TTL: '0h' is zero"),
        ("MAINTCTL_COMPACT_AFTER", "-7d", "MAINTCTL_COMPACT_AFTER: '-7d' is not a duration"),
        ("MAINTCTL_RAW_ITEMS_TTL", "30m", "MAINTCTL_RAW_ITEMS_TTL: 30m is under the 1h floor"),
        (
            "MAINTCTL_BATCH_SIZE",
            "0",
            "MAINTCTL_BATCH_SIZE: Input should be greater than or equal to 1",
        ),
        ("MAINTCTL_BATCH_SIZE", "lots", "MAINTCTL_BATCH_SIZE: Input should be a valid integer"),
        ("MAINTCTL_LOCK_TIMEOUT", "forever", "MAINTCTL_LOCK_TIMEOUT: 'forever' is not a duration"),
        ("MAINTCTL_ENABLED", "perhaps", "MAINTCTL_ENABLED: Input should be a valid boolean"),
    ],
)
def test_a_bad_setting_exits_78_naming_it_and_changes_nothing(
    cli: Cli, conn: Conn, variable: str, value: str, message: str
) -> None:
    add_temp_upload(conn, "3 days")

    result = cli("run", env={variable: value})

    assert result.exit_code == 78
    assert result.stderr.startswith(f"maintctl: error: {message}")
    assert result.stderr.count("\n") == 1
    assert count(conn, "select count(*) from temp_uploads") == 1
    assert count(conn, "select count(*) from maintenance.runs") == 0


def test_malformed_database_url_exits_78_without_echoing_it(cli: Cli) -> None:
    result = cli(
        "status", env={"MAINTCTL_DATABASE_URL": "postgresql://u:s3cret@host/db?frobnicate=1"}
    )

    assert result.exit_code == 78
    assert "not a valid PostgreSQL connection string" in result.stderr
    assert "s3cret" not in result.stderr + result.stdout


def test_the_floor_applies_to_the_thresholds_of_the_tasks_that_run(cli: Cli) -> None:
    env = {"MAINTCTL_STUCK_AFTER": "30m"}

    assert cli("run", env=env).exit_code == 78
    assert cli("stuck", env=env).exit_code == 78
    assert cli("run", "--force", "--dry-run", env=env).exit_code == 0
    assert cli("purge-temp", env=env).exit_code == 0
    assert thresholds(cli, env=env)["stuckAfter"] == "30m"
    assert cli("history", env=env).exit_code == 0


def test_maintctl_database_url_in_dotenv_beats_the_applications_database_url(
    cli: Cli, tmp_path: Path, db_url: str
) -> None:
    (tmp_path / ".env").write_text(f"MAINTCTL_DATABASE_URL={db_url}\n")

    result = cli(
        "status",
        env={"MAINTCTL_DATABASE_URL": None, "DATABASE_URL": "postgresql://app@127.0.0.1:1/app"},
    )

    assert result.exit_code == 0, result.stderr


@pytest.mark.parametrize(
    ("conninfo", "secrets"),
    [
        ("postgresql://app:s3cret-pw@db.internal:5432/imports", ["s3cret-pw"]),
        ("postgresql://app:top@secret@db.internal/imports", ["top@secret", "top", "secret"]),
        ("host=db.internal user=app password=kv-s3cret dbname=imports", ["kv-s3cret"]),
        ("postgresql://app@db.internal/imports?password=query-s3cret", ["query-s3cret"]),
    ],
)
def test_redact_hides_every_form_of_password(
    monkeypatch: pytest.MonkeyPatch, conninfo: str, secrets: list[str]
) -> None:
    from maintctl import cli

    monkeypatch.setattr(cli, "_known_passwords", set())
    monkeypatch.setenv("PGPASSWORD", "env-s3cret")
    cli._remember_passwords(conninfo)

    text = redact(f"failed: {conninfo} env-s3cret")

    for secret in [*secrets, "env-s3cret"]:
        assert secret not in text
    assert text.startswith("failed: ")


def test_a_password_with_a_raw_at_sign_never_reaches_the_output(cli: Cli) -> None:
    result = cli(
        "status",
        env={
            "MAINTCTL_DATABASE_URL": "postgresql://app:top@secret@127.0.0.1:1/imports",
            "MAINTCTL_CONNECT_TIMEOUT": "1s",
        },
    )

    assert result.exit_code == 69
    assert "secret" not in result.stderr + result.stdout
    assert "top" not in result.stderr + result.stdout


def test_a_dotenv_password_is_redacted_in_debug_tracebacks(cli: Cli, tmp_path: Path) -> None:
    (tmp_path / ".env").write_text(
        "MAINTCTL_DATABASE_URL=postgresql://app:dotenv-s3cret@127.0.0.1:1/imports\n"
        "MAINTCTL_CONNECT_TIMEOUT=1s\n"
    )

    result = cli("status", "--debug", env={"MAINTCTL_DATABASE_URL": None})

    assert result.exit_code == 69
    assert "Traceback" in result.stderr
    assert "dotenv-s3cret" not in result.stderr + result.stdout


def test_password_on_the_command_line_is_warned_about_and_never_printed(
    cli: Cli, server_url: str
) -> None:
    from psycopg.conninfo import make_conninfo

    url = make_conninfo(server_url, password="hunter2-secret", dbname="no_such_db_maintctl")
    result = cli("status", "--database-url", url, env={"MAINTCTL_CONNECT_TIMEOUT": "1s"})

    assert result.exit_code == 69
    assert "a password on the command line is visible" in result.stderr
    assert "hunter2-secret" not in result.stderr + result.stdout
