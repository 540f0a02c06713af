"""Prometheus textfile-collector files (`--metrics-file`, MAINTCTL_METRICS_FILE).

node_exporter's textfile collector reads every `*.prom` file of its directory at each scrape, so a
file must never be seen half written: it is written to a temporary file in the same directory,
flushed to disk, then renamed over the old one. prometheus_client is imported only here, and this
module only when a metrics file is asked for.
"""

from __future__ import annotations

import os
import tempfile
import time
from contextlib import suppress
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from maintctl.durable import fsync_file, sync_directory

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry

    from maintctl.runner import RunReport
    from maintctl.status import StatusReport

LAST_SUCCESS = "maintctl_last_success_timestamp_seconds"


@dataclass(frozen=True)
class RunOutcome:
    """What the metrics of one run command say: its report when it got that far, and its exit."""

    command: str
    started: float  # Unix time
    duration_seconds: float
    exit_code: int
    report: RunReport | None


def run_registry(outcome: RunOutcome, previous_success: float | None) -> CollectorRegistry:
    """The metrics of a run command. The last success time is now when this run succeeded,
    otherwise carried over from the previous file (so that the alert on its age keeps working
    while runs fail)."""
    from prometheus_client import CollectorRegistry, Gauge

    registry = CollectorRegistry()
    labels = {"command": outcome.command}

    def gauge(name: str, documentation: str, value: float, **extra: str) -> None:
        names = [*labels, *extra]
        metric = Gauge(name, documentation, names, registry=registry)
        metric.labels(**labels, **extra).set(value)

    report = outcome.report
    # Exit 0 is a success, a run skipped because another run holds the lock included (that run
    # does the work); only a run that did the work moves the last success forward.
    succeeded = outcome.exit_code == 0
    skipped = report is not None and report.skipped is not None
    dry_run = report is not None and report.dry_run
    gauge(
        "maintctl_last_run_timestamp_seconds",
        "When the last run started (Unix time).",
        outcome.started,
    )
    gauge("maintctl_last_run_success", "1 when the last run exited 0, else 0.", int(succeeded))
    gauge("maintctl_last_run_exit_code", "Exit code of the last run.", outcome.exit_code)
    gauge(
        "maintctl_last_run_duration_seconds",
        "How long the last run took.",
        outcome.duration_seconds,
    )
    gauge("maintctl_last_run_dry_run", "1 when the last run was a dry run.", int(dry_run))
    gauge(
        "maintctl_last_run_skipped",
        "1 when the last run did nothing on purpose (another run held the lock, or paused).",
        int(skipped),
    )
    did_the_work = succeeded and not dry_run and not skipped
    success = outcome.started + outcome.duration_seconds if did_the_work else None
    if success is None:
        success = previous_success
    if success is not None:
        gauge(LAST_SUCCESS, "When a run of this command last succeeded (Unix time).", success)
    if report is not None and report.tasks:
        rows = Gauge(
            "maintctl_task_rows",
            "Rows the task touched in the last run (would touch, for a dry run).",
            ["command", "task"],
            registry=registry,
        )
        took = Gauge(
            "maintctl_task_duration_seconds",
            "How long the task took in the last run.",
            ["command", "task"],
            registry=registry,
        )
        ok = Gauge(
            "maintctl_task_success",
            "1 when the task ended ok in the last run, else 0.",
            ["command", "task"],
            registry=registry,
        )
        wal = Gauge(
            "maintctl_task_wal_bytes",
            "WAL the task wrote in the last run.",
            ["command", "task"],
            registry=registry,
        )
        throttled = Gauge(
            "maintctl_task_throttled_seconds",
            "How long the task waited on the health gate (replica lag, slots, WAL rate).",
            ["command", "task"],
            registry=registry,
        )
        for result in report.tasks:
            wal.labels(outcome.command, result.task).set(result.wal_bytes)
            throttled.labels(outcome.command, result.task).set(result.throttled_ms / 1000)
            rows.labels(outcome.command, result.task).set(result.rows)
            took.labels(outcome.command, result.task).set(result.duration_ms / 1000)
            ok.labels(outcome.command, result.task).set(int(result.status == "ok"))
        peak = report.impact["peakReplicaLagBytes"]
        if peak is not None:
            gauge(
                "maintctl_last_run_peak_replica_lag_bytes",
                "The largest standby replay lag the health gate saw during the last run.",
                peak,
            )
    return registry


def status_registry(status: StatusReport) -> CollectorRegistry:
    """The metrics of `maintctl status`: what waits for each rule, the pause, the last success
    the ledger knows of (any host, or pg_cron)."""
    from prometheus_client import CollectorRegistry, Gauge

    registry = CollectorRegistry()
    pending = Gauge(
        "maintctl_pending_rows",
        "Rows waiting for each rule at the configured thresholds.",
        ["task"],
        registry=registry,
    )
    for task, value in status.counts.items():
        pending.labels(task).set(value)
    Gauge("maintctl_paused", "1 while maintenance is paused.", registry=registry).set(
        int(status.pause.paused)
    )
    Gauge(
        "maintctl_storage_outbox_paths",
        "Files of deleted temp uploads waiting in the storage outbox for drain-outbox.",
        registry=registry,
    ).set(status.outbox.paths)
    if status.outbox.oldest is not None:
        Gauge(
            "maintctl_storage_outbox_oldest_timestamp_seconds",
            "When the oldest file waiting in the storage outbox was deleted (Unix time).",
            registry=registry,
        ).set(status.outbox.oldest.timestamp())
    Gauge(
        "maintctl_status_timestamp_seconds",
        "When maintctl status last read these (Unix time).",
        registry=registry,
    ).set(time.time())
    if status.last_success is not None:
        Gauge(
            "maintctl_ledger_last_success_timestamp_seconds",
            "When the last full run recorded in the ledger succeeded (Unix time).",
            registry=registry,
        ).set(status.last_success.timestamp())
    return registry


def previous_value(path: Path, name: str) -> float | None:
    """A metric's value in an existing file, or None."""
    from prometheus_client.parser import text_string_to_metric_families

    try:
        text = path.read_text(encoding="utf-8")
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                if sample.name == name:
                    return float(sample.value)
    except (OSError, ValueError, UnicodeDecodeError):
        return None
    return None


def write_atomically(path: Path, registry: CollectorRegistry) -> None:
    """Write the registry's text format to `path`: temp file in the same directory, fsync,
    rename, so a reader sees the old file or the new one, never half of one."""
    from prometheus_client import generate_latest

    data = generate_latest(registry)
    directory = path.parent
    # node_exporter reads *.prom only: the temporary name does not end in .prom.
    fd, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=directory)
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(data)
            fsync_file(out)
        os.chmod(temporary, 0o644)  # mkstemp makes it 0600; the exporter runs as another user
        os.replace(temporary, path)
    except BaseException:
        with suppress(OSError):
            os.unlink(temporary)
        raise
    with suppress(OSError):  # the rename itself survives a crash once the directory is synced
        sync_directory(directory)
