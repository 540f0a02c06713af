"""docs/production.md shows what maintctl prints: each `maintctl cron` example in it is run again
and must print exactly what the page shows."""

from __future__ import annotations

import shlex
import shutil
import subprocess
from pathlib import Path

import pytest
from typer.testing import CliRunner

from maintctl.cli import app

DOC = Path(__file__).resolve().parent.parent / "docs" / "production.md"


def examples(command_prefix: str) -> list[tuple[list[str], str]]:
    """(arguments, output) of each `$ maintctl ...` line of the page that starts so."""
    found = []
    lines = DOC.read_text().splitlines()
    for number, line in enumerate(lines):
        if not line.startswith(f"$ {command_prefix}") or "|" in line:
            continue
        output = []
        for following in lines[number + 1 :]:
            if following.startswith(("$ ", "```", "(exit ")):
                break
            output.append(following)
        found.append((shlex.split(line[2:])[1:], "\n".join(output)))
    return found


CRON_EXAMPLES = [
    (args, output) for args, output in examples("maintctl cron") if "--output-dir" not in args
]


def test_the_page_has_the_cron_and_systemd_examples() -> None:
    assert len(CRON_EXAMPLES) == 4
    assert any("--systemd" in args for args, _ in CRON_EXAMPLES)


@pytest.mark.parametrize(("args", "output"), CRON_EXAMPLES)
def test_each_cron_example_prints_what_the_page_shows(args: list[str], output: str) -> None:
    if "--systemd" not in args and "--host-timezone" not in args:
        args = [*args, "--host-timezone", "Etc/UTC"]  # the page's host: its clock is UTC
    result = CliRunner().invoke(app, args)

    printed = (result.stdout + result.stderr).rstrip("\n")
    assert printed == output


def yaml_block(after: str) -> str:
    text = DOC.read_text()
    start = text.index("```yaml\n", text.index(after)) + len("```yaml\n")
    return text[start : text.index("```", start)]


RULES = DOC.parent / "prometheus"


def test_the_page_shows_the_rules_file() -> None:
    assert yaml_block("as Prometheus rules") == (RULES / "maintctl-alerts.yml").read_text()


def test_the_alert_rules_pass_promtool_and_their_unit_test() -> None:
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("promtool is not installed (Debian package prometheus)")

    checked = subprocess.run(
        [promtool, "check", "rules", "maintctl-alerts.yml"],
        cwd=RULES,
        capture_output=True,
        text=True,
        check=False,
    )
    tested = subprocess.run(
        [promtool, "test", "rules", "maintctl-alerts.test.yml"],
        cwd=RULES,
        capture_output=True,
        text=True,
        check=False,
    )

    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert "SUCCESS: 3 rules found" in checked.stdout
    assert tested.returncode == 0, tested.stdout + tested.stderr


def test_the_cronjob_forbids_overlap_and_parses() -> None:
    block = yaml_block("### Kubernetes")
    assert "  concurrencyPolicy: Forbid" in block.splitlines()
    import yaml

    cronjob = yaml.safe_load(block)

    assert cronjob["kind"] == "CronJob"
    assert cronjob["spec"]["concurrencyPolicy"] == "Forbid"
    [container] = cronjob["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"]
    assert container["args"][0] == "run"
    # JSON lines only in the pod's log: no table on stdout.
    assert {"--log-format", "json", "--quiet"} <= set(container["args"])


def test_each_directory_a_transcript_writes_into_is_made_first() -> None:
    for page in (DOC, DOC.parent / "storage-outbox.md"):
        lines = page.read_text().splitlines()
        made: set[str] = set()
        for line in lines:
            if not line.startswith("$ "):
                continue
            words = shlex.split(line[2:].split("#")[0].split("|")[0].split(">")[0])
            if words[:1] == ["mkdir"]:
                made.update(word for word in words[1:] if not word.startswith("-"))
                continue
            if words[:1] != ["maintctl"] or ("cron" in words and "--output-dir" not in words):
                continue
            for flag in ("--output-dir", "--metrics-file", "--emit-paths"):
                if flag in words:
                    target = words[words.index(flag) + 1]
                    directory = target if flag == "--output-dir" else str(Path(target).parent)
                    if directory not in (".", "/nonexistent"):
                        assert directory in made, f"{page.name}: {line}"
            if words[1:2] == ["drain-outbox"]:
                assert str(Path(words[2]).parent) in made, f"{page.name}: {line}"


def test_the_output_dir_example_runs_as_shown(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    [(args, output)] = examples("maintctl cron --systemd --user root --output-dir")
    monkeypatch.chdir(tmp_path)
    (tmp_path / args[args.index("--output-dir") + 1]).mkdir()  # the page's mkdir

    result = CliRunner().invoke(app, args)

    assert result.exit_code == 0, result.stderr
    assert result.stdout.rstrip("\n") == output
