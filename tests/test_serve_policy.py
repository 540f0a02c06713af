"""`maintctl serve` under a policy file (--config or MAINTCTL_CONFIG): the route runs every rule the
policy applies, as `maintctl run` does ([[purge]] rules after the four, none turned off), the
dashboard lists those rules, and /readyz says migrate when the policy no longer matches the
installed rules."""

from __future__ import annotations

import json
import re
from pathlib import Path

import psycopg

from maintctl.web import ROUTE
from tests.conftest import Cli, make_cli
from tests.data import Conn, count, load_sample
from tests.serving import SECRET, serving
from tests.test_purge_rules import AUDIT_LOG, POLICY, add_entries, levels
from tests.test_serve import stable, twin_db_url  # noqa: F401  (the fixture)

# The four rules less raw (turned off), then the audit log's [[purge]] rule.
RULES_OFF = POLICY + "\n[rules.raw]\nenabled = false\n"
APPLIED = ["stuck", "temp", "compact", "audit-log"]


def policy_file(tmp_path: Path, text: str) -> Path:
    """The policy file, away from the working directory: found only when named."""
    path = tmp_path / "policy" / "maintctl.toml"
    path.parent.mkdir(exist_ok=True)
    path.write_text(text)
    return path


def with_audit_log(cli: Cli, conn: Conn, policy: Path) -> None:
    conn.execute(AUDIT_LOG)
    add_entries(conn)
    load_sample(conn)
    migrated = cli("migrate", "--config", str(policy))
    assert migrated.exit_code == 0, migrated.stderr


def test_the_route_runs_the_policy_s_rules_as_maintctl_run_does(
    db_url: str,
    cli: Cli,
    conn: Conn,
    twin_db_url: str,  # noqa: F811  (the fixture imported above)
    tmp_path: Path,
) -> None:
    policy = policy_file(tmp_path, RULES_OFF)
    with_audit_log(cli, conn, policy)
    twin_cli = make_cli(twin_db_url)
    with psycopg.connect(twin_db_url, autocommit=True) as twin:
        with_audit_log(twin_cli, twin, policy)
    by_cli = twin_cli("run", "--json", "--config", str(policy))
    raw_before = count(conn, "select count(*) from raw_import_items")

    with serving(db_url, "--config", str(policy)) as server:
        answer = server.get(ROUTE, x_cron_secret=SECRET)

    assert by_cli.exit_code == 0, by_cli.stderr
    assert answer.status == 200, answer.text
    document = answer.json()
    assert [task["task"] for task in document["tasks"]] == APPLIED
    assert stable(document) == stable(json.loads(by_cli.stdout))
    assert document["tasks"][-1]["rows"] == 2
    assert levels(conn) == [(3, "security"), (4, "info")]
    assert count(conn, "select count(*) from raw_import_items") == raw_before, "raw is off"


def test_the_dashboard_lists_every_rule_the_policy_applies(
    db_url: str, cli: Cli, conn: Conn, tmp_path: Path
) -> None:
    policy = policy_file(tmp_path, RULES_OFF)
    with_audit_log(cli, conn, policy)
    env = {"MAINTCTL_CONFIG": str(policy)}

    with serving(db_url, "--public-dashboard", env=env) as server:
        waiting = server.get("/").text
        run = server.get(ROUTE, x_cron_secret=SECRET).json()
        after = server.get("/").text

    assert re.search(
        r"<td class=what>Rows to purge \(audit-log\)</td><td>90d</td><td class=n>2</td>", waiting
    )
    assert "Old temp uploads" in waiting
    assert "Raw items of failed runs" not in waiting, "a rule turned off is not listed"
    heads = re.findall(r"<th class=n>([a-z-]+)</th>", after)
    assert heads == APPLIED
    assert f"run {run['runId']}: 2 rows</title>" in after, "the purge rule's bar segment"
    chart = after[after.index('<svg id="chart-rows"') : after.index('<svg id="chart-duration"')]
    assert chart.count('<rect class="bar"') == len(APPLIED)
    assert len(set(re.findall(r'fill="(#[0-9a-f]{6})"', chart))) == len(APPLIED)


def test_readyz_says_migrate_when_the_policy_no_longer_matches_the_installed_rules(
    db_url: str, conn: Conn, tmp_path: Path
) -> None:
    conn.execute(AUDIT_LOG)
    policy = policy_file(tmp_path, POLICY)  # a [[purge]] rule migrate has not installed

    with serving(db_url, "--config", str(policy)) as server:
        ready = server.get("/readyz")
        answer = server.get(ROUTE, x_cron_secret=SECRET)

    assert ready.status == 503
    assert "maintctl migrate" in ready.json()["reason"]
    assert answer.status == 500, "as maintctl run exits 78"
    assert "maintctl migrate" in answer.json()["error"]
    assert count(conn, "select count(*) from maintenance.runs") == 0
