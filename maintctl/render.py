"""Turning results into what people and machines read: Rich tables and the JSON of DESIGN.md.

Pure functions of the results; no SQL, no database. Imported only when a command prints, so
`maintctl --help` never loads Rich.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from maintctl.archive.format import VerifyReport
from maintctl.archive.restore import RestoreResult
from maintctl.durations import format_duration, iso_timestamp
from maintctl.grants import GrantResult
from maintctl.ledger import PauseState, RunRecord, pause_sentence
from maintctl.migrations import MigrateResult
from maintctl.outbox import DrainResult
from maintctl.policy import ConfigReport
from maintctl.rules import RULES
from maintctl.runner import RunReport, run_impact
from maintctl.sizes import format_size
from maintctl.status import Check, StatusReport
from maintctl.streams import STDOUT
from maintctl.tasks import TASKS, TASKS_BY_NAME, ProgressCallback, TaskProgress


def _when(moment: datetime | None) -> str | None:
    return iso_timestamp(moment) if moment else None


def emit_json(document: object) -> None:
    """The one JSON document of a command, alone on stdout."""
    STDOUT.write(json.dumps(document, ensure_ascii=False) + "\n")


PIPE_WIDTH = 10_000


def console() -> Console:
    # Sentences are never wrapped (a log shipper or grep sees whole lines); tables fit the terminal.
    # NO_COLOR means no escape codes at all (Rich alone would still send bold and italic).
    # In a pipe or a file, a table is as wide as its content: an error message in a cell is never
    # wrapped or cut at 80 columns.
    plain = bool(os.environ.get("NO_COLOR"))
    width = None if STDOUT.isatty() else PIPE_WIDTH
    return Console(
        file=STDOUT,
        highlight=False,
        soft_wrap=True,
        color_system=None if plain else "auto",
        width=width,
    )


# --- JSON --------------------------------------------------------------------------------------


def run_json(report: RunReport) -> dict[str, Any]:
    document: dict[str, Any] = {
        "timestamp": iso_timestamp(report.started),
        "runId": report.run_id,
        "dryRun": report.dry_run,
    }
    document.update({task.json_key: report.rows(task) for task in TASKS})
    document.update(
        {
            "errors": report.errors,
            "skipped": report.skipped,
            "durationMs": report.duration_ms,
            **report.impact,
            "tasks": [result.as_record() for result in report.tasks],
        }
    )
    if report.vacuum is not None:  # only with --vacuum
        document["vacuum"] = [result.as_record() for result in report.vacuum]
    return document


def run_record_json(run: RunRecord) -> dict[str, Any]:
    return {
        "id": run.id,
        "command": run.command,
        "status": run.status,
        "startedAt": _when(run.started_at),
        "finishedAt": _when(run.finished_at),
        "host": run.host,
        "version": run.version,
        "dryRun": run.dry_run,
        "thresholds": run.thresholds,
        **run_impact(run.tasks),
        "tasks": run.tasks,
        "errors": run.errors,
        "skipped": run.skipped,
    }


def pause_json(state: PauseState) -> dict[str, Any]:
    return {
        "paused": state.paused,
        "reason": state.reason,
        "pausedBy": state.paused_by,
        "pausedAt": _when(state.paused_at),
    }


def status_json(status: StatusReport) -> dict[str, Any]:
    document: dict[str, Any] = {
        **{rule.count_key: status.counts.get(rule.name) for rule in RULES},
        "paused": status.pause.paused,
        "pause": pause_json(status.pause) if status.pause.paused else None,
        "thresholds": status.thresholds,
        "lastRun": run_record_json(status.last_run) if status.last_run else None,
        "lastSuccessAt": _when(status.last_success),
        # A count equal to countLimit means at least that many (status --exact: null, exact).
        "countLimit": status.count_limit,
        "storageOutbox": {
            "paths": status.outbox.paths,
            "oldestDeletedAt": _when(status.outbox.oldest),
        },
    }
    if status.missing:  # rules not counted: their table is missing (rule: table)
        document["missingTables"] = status.missing
    purged = {name: rows for name, rows in status.counts.items() if name not in TASKS_BY_NAME}
    if purged:  # the [[purge]] rules' counts, by name
        document["purge"] = purged
    if status.max_age is not None:
        document["maxAge"] = status.max_age_text or format_duration(status.max_age)
        document["stale"] = status.stale
    return document


def migrate_json(result: MigrateResult) -> dict[str, Any]:
    return {
        "applied": result.applied,
        "alreadyApplied": result.already_applied,
        "appSchema": result.app_schema,
        "rulesInstalled": result.rules_installed,
    }


def config_json(report: ConfigReport) -> dict[str, Any]:
    return {
        "file": report.file,
        "foundBy": report.found_by,
        "values": {
            item.key: {"value": item.value, "source": item.source} for item in report.values
        },
    }


def print_config(report: ConfigReport) -> None:
    out = console()
    if report.file is None:
        out.print("No policy file (--config, MAINTCTL_CONFIG or ./maintctl.toml): the defaults.")
    else:
        out.print(f"Policy file: {escape(report.file)} (from {escape(report.found_by or '?')})")
    table = Table(title="Resolved policy", title_justify="left")
    table.add_column("Key", no_wrap=True)
    table.add_column("Value")
    table.add_column("From")
    for item in report.values:
        value = (
            ", ".join(item.value)
            if isinstance(item.value, list)
            else ", ".join(f"{k} {v}" for k, v in item.value.items())
            if isinstance(item.value, dict)
            else json.dumps(item.value)
            if isinstance(item.value, bool) or item.value is None
            else str(item.value)
        )
        table.add_row(item.key, escape(value), item.source)
    out.print(table)


def drain_json(result: DrainResult) -> dict[str, Any]:
    return {"file": result.file, "paths": result.paths, "sizeBytes": result.size_bytes}


def doctor_json(checks: Sequence[Check]) -> dict[str, Any]:
    return {
        "healthy": all(check.ok for check in checks),
        "checks": [
            {"check": c.name, "ok": c.ok, "verdict": c.verdict, "detail": c.detail} for c in checks
        ],
    }


# --- People ------------------------------------------------------------------------------------


def _command_of(task: str) -> str:
    """The command that runs a task alone (a [[purge]] rule's: purge NAME)."""
    rule = TASKS_BY_NAME.get(task)
    return rule.command if rule else f"purge {task}"


def print_run(report: RunReport) -> None:
    out = console()
    if report.skipped:
        out.print(f"Skipped: {escape(report.skipped)}")
        return
    title = "Dry run: what a run would touch now" if report.dry_run else f"Run {report.run_id}"
    table = Table(title=title, title_justify="left")
    columns = ["Task", "Status", "Rows", "Batches", "Cutoff (UTC)", "Took"]
    stopped_early = any(result.remaining is not None for result in report.tasks)
    if stopped_early:
        columns.append("Left")  # what --max-runtime left for the next run
    for column in columns:
        table.add_column(
            column, justify="left" if column in ("Task", "Status", "Cutoff (UTC)") else "right"
        )
    for result in report.tasks:
        status = result.status if result.error is None else f"{result.status}: {result.error}"
        style = {"ok": "green", "failed": "bold red"}.get(result.status, "yellow")
        table.add_row(
            _command_of(result.task),
            f"[{style}]{escape(status)}[/]",
            f"{result.rows:,}",
            "-" if report.dry_run else str(result.batches),
            f"{result.cutoff.astimezone(UTC):%Y-%m-%d %H:%M}" if result.cutoff else "-",
            _took(result.duration_ms),
            *([f"{result.remaining:,}" if result.remaining is not None else "-"] * stopped_early),
        )
    out.print(table)
    for vacuumed in report.vacuum or []:
        outcome = "vacuumed" if vacuumed.status == "ok" else f"VACUUM {vacuumed.status}:"
        detail = f" {vacuumed.error}" if vacuumed.error else ""
        out.print(
            f"{outcome} {vacuumed.table}{escape(detail)} ({vacuumed.rows_changed:,} rows changed, "
            f"{_took(vacuumed.duration_ms)})"
        )
    verdict = f"{len(report.errors)} task(s) failed" if report.errors else "all tasks ok"
    impact = report.impact
    cost = "" if report.dry_run else f", {format_size(impact['walBytes'] or 0)} of WAL"
    if impact["throttledMs"]:
        cost += f", {_took(impact['throttledMs'])} waiting on the health gate"
    out.print(f"{verdict} in {_took(report.duration_ms)}{cost}")


@contextmanager
def progress_bar(show: bool) -> Iterator[ProgressCallback | None]:
    """A Rich progress bar fed by the tasks' batches (`TaskProgress`), or None when not shown.
    It draws on stderr, with the step lines printed above it, and disappears when done."""
    if not show:
        yield None
        return
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TaskID,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    bars: dict[str, TaskID] = {}
    with Progress(
        TextColumn("{task.description:<10}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=Console(stderr=True),
        transient=True,
        redirect_stdout=False,
    ) as progress:

        def on_batch(done: TaskProgress) -> None:
            total = max(done.total, done.rows) if done.total is not None else None
            if done.task not in bars and total == 0:
                return  # nothing to do: no bar
            if done.task not in bars:
                label = _command_of(done.task)
                bars[done.task] = progress.add_task(label, total=total)
            progress.update(bars[done.task], completed=done.rows, total=total)

        yield on_batch


def print_status(status: StatusReport) -> None:
    out = console()
    table = Table(title="Waiting for maintenance", title_justify="left")
    table.add_column("What")
    table.add_column("Threshold")
    table.add_column("Rows", justify="right")
    for _, label, threshold, rows in status.waiting():
        table.add_row(label, threshold, f"{rows:,}" + ("+" if status.at_limit(rows) else ""))
    out.print(table)
    if status.outbox.paths:
        since = iso_timestamp(status.outbox.oldest) if status.outbox.oldest else "?"
        out.print(
            f"Storage outbox: {status.outbox.paths:,} file(s) waiting for maintctl drain-outbox "
            f"since {since}"
        )
    for name, missing in status.missing.items():
        out.print(f"[bold red]Not counted:[/] {name}: table {escape(missing)} is missing")
    if status.pause.paused:
        out.print(f"[bold yellow]Paused:[/] {escape(pause_sentence(status.pause))}")
    last = status.last_run
    if last is None:
        out.print("Last run: none yet")
    else:
        dry = " (dry run)" if last.dry_run else ""
        out.print(
            f"Last run: #{last.id} {last.command}{dry} {last.status}, started "
            f"{iso_timestamp(last.started_at)} on {escape(last.host or '?')}"
        )
        for why in (*last.errors, *([last.skipped] if last.skipped else [])):
            out.print(f"  {escape(why)}")
    success = iso_timestamp(status.last_success) if status.last_success else "never"
    out.print(f"Last successful full run finished: {success}")
    if status.stale and status.max_age is not None:
        age = status.max_age_text or format_duration(status.max_age)
        out.print(f"[bold red]STALE:[/] no successful full run in the last {escape(age)}")


def _took(milliseconds: float) -> str:
    return f"{milliseconds:.0f} ms" if milliseconds < 1000 else f"{milliseconds / 1000:.1f} s"


def _rows(tasks: Sequence[dict[str, Any]]) -> str:
    """Rows per task: 15/289/210/250 for a full run (see the caption), "temp 289" for one task."""
    if len(tasks) == len(TASKS):
        return "/".join(str(task["rows"]) for task in tasks)
    return ", ".join(f"{task['task']} {task['rows']}" for task in tasks) or "-"


def print_history(runs: Sequence[RunRecord], since: str | None = None) -> None:
    out = console()
    if not runs:
        out.print(f"No runs since {escape(since)}." if since else "No runs recorded yet.")
        return
    table = Table(
        title="Maintenance runs, newest first",
        title_justify="left",
        caption="rows: " + "/".join(rule.name for rule in RULES),
        caption_justify="left",
    )
    table.add_column("#", justify="right")
    table.add_column("Started (UTC)", no_wrap=True)
    table.add_column("Command", no_wrap=True)
    table.add_column("Status", no_wrap=True)
    table.add_column("Took", justify="right", no_wrap=True)
    table.add_column("Rows")
    notes = []
    for run in runs:
        took = (
            (run.finished_at - run.started_at).total_seconds() * 1000 if run.finished_at else None
        )
        table.add_row(
            str(run.id),
            f"{run.started_at.astimezone(UTC):%Y-%m-%d %H:%M}",
            f"{run.command} (dry)" if run.dry_run else run.command,
            run.status,
            _took(took) if took is not None else "-",
            _rows(run.tasks),
        )
        for note in (*run.errors, *([run.skipped] if run.skipped else [])):
            notes.append(f"#{run.id}: {note}")
    out.print(table)
    for note in notes:
        out.print(escape(note))


def print_migrate(result: MigrateResult) -> None:
    out = console()
    for name in result.applied:
        out.print(f"applied {name}")
    if result.rules_installed:
        out.print("installed the rules' steps, counts and indexes, generated from the policy")
    if result.applied or result.rules_installed:
        out.print(
            f"maintenance schema is up to date ({len(result.applied)} applied now, "
            f"{result.already_applied} before) for application schema {result.app_schema!r}"
        )
    else:
        out.print(
            f"nothing to do: all {result.already_applied} migrations were already applied "
            f"(application schema {result.app_schema!r})"
        )


def print_pause(state: PauseState, changed: bool = True) -> None:
    if state.paused:
        sentence = pause_sentence(state)
        if not changed:  # "maintenance is already paused since ... by ...: why (maintctl resume)"
            sentence = sentence.replace("maintenance is paused", "maintenance is already paused", 1)
        console().print(escape(sentence))
    else:
        console().print("maintenance resumed" if changed else "maintenance is not paused")


def drain_sentence(result: DrainResult) -> str:
    return (
        f"wrote {result.paths:,} path(s) ({result.size_bytes:,} bytes of files) to "
        f"{result.file} and cleared them from the storage outbox"
    )


def print_drain(result: DrainResult) -> None:
    console().print(escape(drain_sentence(result)))


def print_doctor(checks: Sequence[Check]) -> None:
    out = console()
    for check in checks:
        verdict = {"ok": "[green]ok[/]  ", "warn": "[yellow]warn[/]", "fail": "[bold red]FAIL[/]"}[
            check.verdict
        ]
        out.print(f"{verdict} {check.name}: {escape(check.detail)}")
    healthy = all(check.ok for check in checks)
    warnings = sum(check.verdict == "warn" for check in checks)
    noted = f" ({warnings} warning{'s' if warnings > 1 else ''})" if warnings else ""
    out.print(f"healthy{noted}" if healthy else "not healthy")


def grant_json(result: GrantResult) -> dict[str, Any]:
    return {
        "role": result.role,
        "action": "revoked" if result.revoked else "granted",
        "appSchema": result.app_schema,
        "canVacuum": result.can_vacuum,
        "statsRefused": result.stats_refused,
        # Row Level Security: the policy created (or with --revoke dropped) and on which tables.
        "rowSecurityPolicy": result.policy if result.policy_tables else None,
        "rowSecurityTables": list(result.policy_tables),
    }


def print_grant(result: GrantResult) -> None:
    if result.revoked:
        console().print(f"revoked maintctl's privileges from role {escape(result.role)}")
    else:
        console().print(
            f"granted role {escape(result.role)} what maintctl run, status, doctor and history "
            f"need: schema maintenance, and in schema {escape(result.app_schema)} "
            f"{escape(', '.join(result.tables))}, and pg_read_all_stats for the health gate"
        )
        if result.can_vacuum:
            console().print("and MAINTAIN on them, so that run --vacuum can VACUUM them")
        else:
            console().print(
                "note: before PostgreSQL 17 only the tables' owner can VACUUM them: run --vacuum "
                "as the owner (as this role each VACUUM is reported failed), or leave it to "
                "autovacuum"
            )
    if result.policy_tables:
        tables = escape(", ".join(result.policy_tables))
        if result.revoked:
            console().print(f"dropped policy {escape(result.policy)} from {tables}")
        else:
            console().print(
                f"row level security is enabled on {tables}: created policy "
                f"{escape(result.policy)} on each, for role {escape(result.role)}, using "
                "(true) with check (true), so that it sees every row (its privileges still limit "
                "what it may do)"
            )
    if result.stats_refused is not None:
        console().print(
            f"could not grant pg_read_all_stats: {escape(result.stats_refused)}; the health gate "
            f"cannot see the standbys' lag as {escape(result.role)} until a superuser runs: "
            f"grant pg_read_all_stats to {escape(result.role)}"
        )


# --- the archive -------------------------------------------------------------------------------


def verify_json(report: VerifyReport) -> dict[str, Any]:
    return {
        "archive": report.destination,
        "ok": report.ok,
        "runs": [
            {"runId": run.run_id, "finishedAt": _when(run.finished_at), "rows": run.rows}
            for run in report.runs
        ],
        "problems": report.problems,
    }


def print_verify(report: VerifyReport) -> None:
    out = console()
    for run in report.runs:
        if run.finished_at is None:
            out.print(f"run {run.run_id}: no manifest")
            continue
        rows = ", ".join(f"{table} {count:,}" for table, count in run.rows.items()) or "nothing"
        out.print(f"run {run.run_id} (ended {_when(run.finished_at)}): {escape(rows)}")
    verdict = "ok" if report.ok else f"{len(report.problems)} problem(s)"
    out.print(f"{escape(report.destination)}: {len(report.runs)} run(s), {verdict}")


def print_pruned(pruned: Sequence[int]) -> None:
    runs = ", ".join(str(run) for run in pruned)
    console().print(f"pruned {len(pruned)} run(s){': ' + runs if pruned else ''}")


def restore_json(result: RestoreResult) -> dict[str, Any]:
    return {
        "runId": result.run_id,
        "dryRun": result.dry_run,
        "complete": result.complete,
        "tables": [
            {
                "table": table.table,
                "action": table.action,
                "archived": table.archived,
                "restored": table.restored,
                "present": table.present,
                "missing": table.missing,
            }
            for table in result.tables
        ],
        "restored": result.restored,
        "filesKept": result.files_kept,
        "filesHandedOver": result.files_handed_over,
    }


def print_restore(result: RestoreResult) -> None:
    out = console()
    verb = "would put back" if result.dry_run else "put back"
    if not result.complete:
        out.print(
            f"run {result.run_id} has no manifest (it was interrupted): its whole batches only"
        )
    for table in result.tables:
        if table.action == "delete":
            line = (
                f"{table.table}: {verb} {table.restored:,} of {table.archived:,} deleted rows; "
                f"{table.present:,} were there again"
            )
        else:
            line = (
                f"{table.table}: {verb} the old values of {table.restored:,} of "
                f"{table.archived:,} rows ({table.action}); {table.present:,} had them already"
            )
        if table.missing:
            line += f", {table.missing:,} rows gone since"
        out.print(escape(line))
    if result.files_kept or result.files_handed_over:
        taken = "would be taken" if result.dry_run else "taken"
        out.print(
            f"temp uploads: {result.files_kept:,} file(s) {taken} back from the storage outbox; "
            f"{result.files_handed_over:,} were already handed to the storage cleaner "
            "(those files may be gone)"
        )
    if not result.tables:
        out.print(f"run {result.run_id} archived nothing")
