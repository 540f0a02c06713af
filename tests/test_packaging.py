"""`pip install .` gives a working maintctl: the wheel carries the SQL and the console script, and
maintctl installed from it migrates and runs against a real database."""

from __future__ import annotations

import json
import subprocess
import sys
import zipfile
from pathlib import Path

from maintctl.sqlfiles import migrations

ROOT = Path(__file__).resolve().parent.parent


def build_wheel(tmp_path: Path) -> Path:
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--quiet",
            "--no-deps",
            "--no-build-isolation",
            "--wheel-dir",
            str(tmp_path),
            str(ROOT),
        ],
        check=True,
        capture_output=True,
    )
    (wheel,) = tmp_path.glob("maintctl-*.whl")
    return wheel


def test_the_wheel_ships_every_sql_file_and_the_console_script(tmp_path: Path) -> None:
    wheel = build_wheel(tmp_path)
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
        entry_points = next(
            archive.read(name).decode() for name in names if name.endswith("entry_points.txt")
        )

    expected = {
        f"maintctl/sql/{path.relative_to(ROOT / 'sql')}" for path in (ROOT / "sql").rglob("*.sql")
    }
    assert len(expected) >= 8
    assert expected <= names
    assert "maintctl/__main__.py" in names
    assert "maintctl = maintctl.cli:main" in entry_points


def test_maintctl_installed_from_the_wheel_migrates_and_runs(
    tmp_path: Path, bare_db_url: str
) -> None:
    wheel = build_wheel(tmp_path / "dist")
    target = tmp_path / "site"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "--quiet",
            "--no-deps",
            "--target",
            str(target),
            str(wheel),
        ],
        check=True,
        capture_output=True,
    )
    # The installed copy first on the path, the development checkout nowhere on it.
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(target), "MAINTCTL_DATABASE_URL": bare_db_url}

    def maintctl(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "maintctl", *args],
            env=env,
            cwd=tmp_path,
            capture_output=True,
            text=True,
            check=False,
        )

    located = subprocess.run(
        [sys.executable, "-c", "import maintctl.sqlfiles as s; print(s.sql_dir())"],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        check=True,
    )
    migrated = maintctl("migrate", "--json")
    ran = maintctl("run", "--json")

    assert located.stdout.strip() == str(target / "maintctl" / "sql")
    assert migrated.returncode == 0, migrated.stderr
    assert len(json.loads(migrated.stdout)["applied"]) == len(migrations())
    assert ran.returncode == 0, ran.stderr
    assert json.loads(ran.stdout)["errors"] == []
    assert (target / "bin" / "maintctl").exists()
