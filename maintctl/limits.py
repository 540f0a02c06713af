"""Limits on a run: the anomaly guard refuses a task whose eligible count is far above what the
recent runs of the ledger saw (a threshold typo, a clock gone wrong, a rule pointed at the wrong
table), before it touches a row. `--force` overrides it; a task with too little history in the
ledger is never refused. `--max-rows` lives in the batch loop (maintctl.tasks).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Callable

    from maintctl.db import Connection
    from maintctl.settings import Settings

# The recent runs the guard compares with, and how many of them it needs before it judges.
RECENT_RUNS = 10
MIN_HISTORY = 3
# A baseline is never taken below this many rows: a task that touched 3 rows a day may touch 300.
MIN_BASELINE = 1000


@dataclass(frozen=True)
class SeenCount:
    eligible: int


def recent_counts(conn: Connection, task: str) -> list[int]:
    """What the last RECENT_RUNS real runs of the task saw eligible (rows touched plus rows left
    when it stopped early), newest first."""
    from maintctl import db

    params = {"task": task, "limit": RECENT_RUNS}
    return [seen.eligible for seen in db.fetch_all(conn, "recent_task_counts", params, SeenCount)]


def anomaly(
    conn: Connection, settings: Settings, task: str, count_eligible: Callable[[], int]
) -> str | None:
    """Why the task must not run (its eligible count is over MAINTCTL_ANOMALY_FACTOR times the
    largest of its recent runs), or None. Counts only when there is history to compare with."""
    factor = settings.anomaly_factor
    if factor is None:
        return None
    history = recent_counts(conn, task)
    if len(history) < MIN_HISTORY:
        return None
    baseline = max(*history, MIN_BASELINE)
    eligible = count_eligible()
    if eligible <= factor * baseline:
        return None
    return (
        f"refused: {eligible:,} rows eligible, {eligible / baseline:.0f}x the most the last "
        f"{len(history)} runs saw ({max(history):,}; baseline {baseline:,}), over "
        f"MAINTCTL_ANOMALY_FACTOR {factor:g}; check the threshold, or run with --force"
    )
