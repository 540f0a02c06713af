"""Each rule is one definition (maintctl/rules/) that everything reads: its template uses exactly
the names the definition lists, doctor checks exactly the columns the generated SQL uses, and what
migrate installed is checked against what the policy generates."""

from __future__ import annotations

import json
import re
from pathlib import Path

import psycopg
import pytest

from maintctl.rules import RULES, Rule
from maintctl.rules.generate import (
    Policy,
    index_blocks,
    installation,
    needs,
    placeholder_key,
    placeholder_names,
    placeholders,
    sections,
    table_name,
    typed_columns,
)
from maintctl.sqlfiles import read_sql
from tests.conftest import Cli
from tests.data import Conn, add_temp_upload, count

REFERENCE = Policy.of("public", {})
# Placeholders every template may use that are not names of the schema.
GENERIC = {"default_older_than", "search_path"}


def generated_sql(rule: Rule, policy: Policy = REFERENCE) -> str:
    """The rule's SQL as migrate installs it (columns, index definitions, functions)."""
    filled = placeholders(rule, policy)
    parts = sections(read_sql(rule.template))
    texts = [parts.get("columns", ""), parts["functions"]]
    texts += [body for _, _, body in index_blocks(parts.get("indexes", ""))]
    from psycopg import sql

    return "\n".join(sql.SQL(text).format(**filled).as_string(None) for text in texts)


@pytest.mark.parametrize("rule", RULES, ids=lambda rule: rule.name)
def test_the_template_uses_exactly_the_names_its_definition_lists(rule: Rule) -> None:
    template = "".join(sections(read_sql(rule.template)).values())
    used = {placeholder_key(name) for name in placeholder_names(template)}
    defined = {t.role for t in rule.tables} | set(rule.columns) | set(rule.values)

    assert used - GENERIC == defined


@pytest.mark.parametrize("rule", RULES, ids=lambda rule: rule.name)
def test_no_column_is_written_into_a_template_by_hand(rule: Rule) -> None:
    # Every column comes from a placeholder, which psycopg quotes: an unquoted alias.column in the
    # template is a name the definition (and doctor) does not know of.
    template = "".join(sections(read_sql(rule.template)).values())
    aliases = "|".join(table.alias for table in rule.tables)
    by_hand = re.findall(rf"(?<![{{\w])(?:{aliases})\.[a-z_]+\b", template)

    assert by_hand == []


@pytest.mark.parametrize("rule", RULES, ids=lambda rule: rule.name)
def test_doctor_checks_exactly_the_columns_the_generated_sql_uses(rule: Rule) -> None:
    text = generated_sql(rule)
    tables = {table_name(rule, table, REFERENCE) for table in rule.tables}
    aliases = {table.alias for table in rule.tables}
    quoted = set(re.findall(r'"([^"]+)"', text)) - tables - aliases - {"public"}
    checked = {column for need in needs(rule, REFERENCE) for column in need.columns + need.added}

    assert quoted == checked


def test_purge_temp_needs_the_columns_its_outbox_reads() -> None:
    # Doctor once checked id and created_at only, while the step also reads these two.
    temp = next(rule for rule in RULES if rule.name == "temp")

    assert {"storage_path", "size_bytes"} <= set(needs(temp, REFERENCE)[0].columns)


def test_doctor_names_a_missing_outbox_column_before_a_run_fails_on_it(
    cli: Cli, conn: Conn
) -> None:
    add_temp_upload(conn, "25 hours")
    conn.execute("alter table temp_uploads drop column size_bytes")

    doctor = cli("doctor", "--json")

    assert doctor.exit_code == 78
    assert json.loads(doctor.stdout)["checks"][-1]["detail"] == (
        "missing column temp_uploads.size_bytes (needed by temp)"
    )


def test_migrate_installs_the_steps_once_and_records_what_it_generated(
    bare_cli: Cli, bare_db_url: str
) -> None:
    first = bare_cli("migrate", "--json")
    second = bare_cli("migrate", "--json")

    assert json.loads(first.stdout)["rulesInstalled"] is True
    assert json.loads(second.stdout)["rulesInstalled"] is False
    with psycopg.connect(bare_db_url) as conn:
        recorded = conn.execute("select fingerprint from maintenance.installed_rules").fetchone()
        # The catalog's types of the columns the rules read are part of what was generated.
        catalog = conn.execute(
            "select c.relname::text, a.attname::text, format_type(a.atttypid, a.atttypmod) "
            "from pg_attribute a join pg_class c on c.oid = a.attrelid "
            "where c.relnamespace = 'public'::regnamespace and a.attnum > 0"
        ).fetchall()
    types = tuple(row for row in catalog if (row[0], row[1]) in typed_columns(REFERENCE))
    assert len(types) == len(typed_columns(REFERENCE))
    assert recorded == (installation(REFERENCE.with_types(types)).fingerprint,)


def test_steps_generated_from_another_policy_are_refused_until_migrate(
    cli: Cli, conn: Conn
) -> None:
    add_temp_upload(conn, "25 hours")
    conn.execute("update maintenance.installed_rules set fingerprint = 'another policy'")

    refused = cli("run")

    assert refused.exit_code == 78
    assert refused.stderr == (
        "maintctl: error: the installed maintenance rules were generated from another policy or "
        "another maintctl (table or column names, schema); run: maintctl migrate\n"
    )
    assert count(conn, "select count(*) from temp_uploads") == 1
    assert cli("migrate").exit_code == 0
    assert cli("run").exit_code == 0
    assert count(conn, "select count(*) from temp_uploads") == 0


def test_a_lost_index_is_built_again_by_migrate(cli: Cli, conn: Conn) -> None:
    conn.execute("drop index maintctl_temp_uploads_created_at_id")

    result = cli("migrate", "--json")

    assert json.loads(result.stdout)["rulesInstalled"] is True
    assert (
        count(
            conn,
            "select count(*) from pg_index where indisvalid "
            "and indexrelid = 'maintctl_temp_uploads_created_at_id'::regclass",
        )
        == 1
    )


def fail_deletes_of_raw_items(conn: Conn) -> None:
    conn.execute(
        """
        create function refuse_delete() returns trigger language plpgsql as $$
        begin raise exception 'raw items are kept for the audit'; end $$;
        create trigger keep_raw before delete on raw_import_items
          for each row execute function refuse_delete();
        """
    )


def test_the_procedure_ends_in_an_error_naming_the_failed_task_after_its_ledger(
    conn: Conn,
) -> None:
    from tests.data import add_items, add_run

    run = add_run(conn, "failed", created="40 days", finished="31 days")
    add_items(conn, run, 3)
    add_temp_upload(conn, "25 hours")
    fail_deletes_of_raw_items(conn)

    with pytest.raises(psycopg.errors.RaiseException) as failed:
        conn.execute("call maintenance.run_maintenance_cleanup()")

    message = str(failed.value).splitlines()[0]
    # Each item is left as it is, named by the first one's key (the trigger refuses them all).
    said = (
        r"raw: 3 row\(s\) could not be changed and were left as they are "
        r"\(first: key \d+: raw items are kept for the audit\)"
    )
    assert re.fullmatch(rf"maintenance run \d+ failed: {said}", message)
    ledger = conn.execute("select status, errors from maintenance.runs").fetchall()
    assert [status for status, _ in ledger] == ["failed"]
    assert re.fullmatch(said, ledger[0][1][0])
    assert count(conn, "select count(*) from temp_uploads") == 0  # the other tasks ran
    assert count(conn, "select count(*) from maintenance.run_lease where expires_at > now()") == 0


def test_what_the_procedure_does_after_its_last_commit_ignores_the_callers_search_path(
    conn: Conn,
) -> None:
    from tests.data import add_items, add_run

    # Functions that an unqualified call would pick over pg_catalog's variadic ones.
    conn.execute(
        """
        create schema shadow;
        create function shadow.format(text, bigint, text) returns text language sql
          as $$ select 'hijacked' $$;
        create function shadow.jsonb_build_object(text, bigint, text, jsonb, text, jsonb)
          returns jsonb language sql as $$ select '{"hijacked": true}'::jsonb $$;
        """
    )
    conn.execute("set search_path = shadow, public, pg_catalog")
    summary = conn.execute("call maintenance.run_maintenance_cleanup()").fetchone()
    assert summary is not None
    assert "runId" in summary[0]

    run = add_run(conn, "failed", created="40 days", finished="31 days")
    add_items(conn, run, 1)
    fail_deletes_of_raw_items(conn)
    with pytest.raises(psycopg.errors.RaiseException) as failed:
        conn.execute("call maintenance.run_maintenance_cleanup()")
    assert "hijacked" not in str(failed.value)
    assert "failed: raw:" in str(failed.value)


def test_a_policy_that_repeats_the_defaults_needs_no_migrate(cli: Cli, tmp_path: Path) -> None:
    (tmp_path / "maintctl.toml").write_text(
        '[rules.stuck]\ntable = "import_runs"\nolder_than = "2d"\n'
        '[rules.compact]\nclear = ["payload", "log"]\n'
    )

    assert cli("status").exit_code == 0


def rule_facts() -> dict[str, str]:
    """Each fact a rule's definition states, with the rule it belongs to."""
    facts: dict[str, str] = {}
    for rule in RULES:
        named = [rule.json_key, rule.count_key, rule.label, rule.step_function]
        named += [rule.count_function, rule.summary, rule.example, rule.view_column]
        named += [table.default for table in rule.tables if table.default]
        for fact in named:
            facts[fact] = rule.name
    return facts


def test_no_module_spells_out_a_rule_s_facts_its_definition_states() -> None:
    import io
    import tokenize

    root = Path(__file__).resolve().parent.parent / "maintctl"
    facts = rule_facts()
    found = []
    for path in sorted(root.rglob("*.py")):
        if path.parent.name == "rules" and path.stem in {rule.name for rule in RULES}:
            continue  # the definitions themselves
        tokens = tokenize.generate_tokens(io.StringIO(path.read_text()).readline)
        for token in tokens:
            if token.type == tokenize.STRING:
                text = token.string.strip("\"'")
                if text in facts:
                    found.append(f"{path.relative_to(root)}:{token.start[0]}: {text}")

    assert found == []
