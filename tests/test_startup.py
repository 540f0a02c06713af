"""`maintctl --help` stays fast: the heavy modules are imported where they are used, never by the
command line's own module or by --help (a structural test; `make bench` times it)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

HEAVY = (
    "psycopg",
    "pydantic",
    "pydantic_settings",
    "rich",
    "prometheus_client",
    "starlette",
    "uvicorn",
)

PROBE = """
import json, sys
sys.argv = ["maintctl", *{args!r}]
import maintctl.cli
try:
    maintctl.cli.main()
except SystemExit:
    pass
heavy = sorted({{name.split(".")[0] for name in sys.modules}} & set({heavy!r}))
sys.stderr.write("LOADED=" + json.dumps(heavy) + "\\n")
"""


def loaded_after(*args: str) -> list[str]:
    """The heavy top-level packages a fresh interpreter holds after `maintctl ARGS`."""
    completed = subprocess.run(
        [sys.executable, "-c", PROBE.format(args=list(args), heavy=HEAVY)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    marker = [line for line in completed.stderr.splitlines() if line.startswith("LOADED=")]
    assert marker, completed.stderr
    return list(json.loads(marker[-1].removeprefix("LOADED=")))


@pytest.mark.parametrize("args", [("--help",), ("--version",)])
def test_help_loads_no_heavy_module(args: tuple[str, ...]) -> None:
    assert loaded_after(*args) == []


def test_a_command_help_loads_neither_the_driver_nor_rich() -> None:
    # Typer (0.29) itself coerces a command's parameters through pydantic, so a command's --help
    # loads pydantic; maintctl's own heavy imports still wait for a command that runs.
    assert loaded_after("purge-temp", "--help") == ["pydantic"]


def test_serve_help_loads_neither_starlette_nor_uvicorn() -> None:
    assert loaded_after("serve", "--help") == ["pydantic"]


def test_the_probe_sees_a_heavy_import() -> None:
    # The probe itself can fail: a command that connects loads the driver.
    assert "psycopg" in loaded_after("status", "--database-url", "dbname='unterminated")
