"""The stuck rule: runs in a running status with no sign of life since the threshold become failed,
with `finished_at` set and an error message starting `Timed out` that names the threshold. Its SQL
is `sql/rules/stuck.sql`."""

from maintctl.rules import Column, Rule, Table, Value

RULE = Rule(
    name="stuck",
    command="stuck",
    summary="Mark runs stuck in processing (no heartbeat for 24h by default) as failed.",
    example="maintctl stuck --older-than 36h --dry-run",
    threshold="stuck_after",
    json_key="stuckRunsMarked",
    count_key="stuckRuns",
    label="Runs stuck in processing",
    step_function="mark_stuck_runs_step",
    count_function="count_stuck_runs",
    tables=(Table("runs", "r", ("SELECT", "UPDATE"), "import_runs"),),
    columns={
        "key": Column("runs", "id"),
        "status_column": Column("runs", "status"),
        "last_seen": Column("runs", ("heartbeat_at", "started_at", "created_at")),
        "finished_at": Column("runs", "finished_at", written=True),
        "error_column": Column("runs", "error_message"),
    },
    values={"running": Value(("processing",)), "failed": Value("failed")},
    changes="runs",
    archived=("key", "status_column", "finished_at", "error_column"),
)
