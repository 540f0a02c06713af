"""The built wheel, installed into a fresh virtual environment with its declared dependencies only
(nothing of the development lock), runs every command: each `--help`, `cron`, `cron --systemd`,
and a real `migrate` and `run` against a fresh database. A runtime import that is only a dev
dependency (croniter once was) fails here. CI runs this file as its own step too (.ci/run)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from maintctl.cli import app
from tests.test_packaging import build_wheel


def command_names() -> list[str]:
    """Every command the CLI registers, as the user types it."""
    return sorted(str(info.name) for info in app.registered_commands)


def test_the_wheel_alone_runs_every_command(tmp_path: Path, bare_db_url: str) -> None:
    wheel = build_wheel(tmp_path / "dist")
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, capture_output=True)
    installed = subprocess.run(
        [str(venv / "bin" / "python"), "-m", "pip", "install", "--quiet", str(wheel)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert installed.returncode == 0, installed.stderr
    maintctl_bin = venv / "bin" / "maintctl"
    # Only the fresh environment: no PYTHONPATH, no checkout on the path, no MAINTCTL_* but the URL.
    env = {
        "PATH": f"{venv / 'bin'}:/usr/bin:/bin",
        "HOME": str(tmp_path),
        "MAINTCTL_DATABASE_URL": bare_db_url,
    }
    env.update({k: v for k, v in os.environ.items() if k in ("LANG", "LC_ALL")})

    def maintctl(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(maintctl_bin), *args],
            env=env,
            cwd=tmp_path,
            capture_output=True,
            text=True,
            check=False,
        )

    names = command_names()
    assert {"run", "migrate", "cron", "status", "doctor"} <= set(names)
    for args in [["--help"], ["--version"], *([name, "--help"] for name in names)]:
        done = maintctl(*args)
        assert done.returncode == 0, (args, done.stderr)
        assert "Usage:" in done.stdout or "maintctl" in done.stdout, args

    crontab = maintctl("cron")
    systemd = maintctl("cron", "--systemd")
    migrated = maintctl("migrate", "--json")
    ran = maintctl("run", "--json")

    assert crontab.returncode == 0, crontab.stderr
    assert f"{maintctl_bin} run --quiet" in crontab.stdout
    assert systemd.returncode == 0, systemd.stderr
    assert "OnCalendar=" in systemd.stdout
    assert migrated.returncode == 0, migrated.stderr
    assert json.loads(migrated.stdout)["applied"]
    assert ran.returncode == 0, ran.stderr
    assert json.loads(ran.stdout)["errors"] == []
