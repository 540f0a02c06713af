"""The compact rule: finished import jobs that ended before the threshold lose the columns it
clears (payload, log), their summary column (result) becomes a summary of at most 1 KB
(maintenance.import_job_summary), and compacted_at (added by migrate) is set. Its SQL is
`sql/rules/compact.sql`."""

from maintctl.rules import Column, Rule, Table, Value

RULE = Rule(
    name="compact",
    command="compact",
    summary=(
        "Compact finished import jobs older than 7 days: drop payload and log, summarise result."
    ),
    example="maintctl compact --older-than 14d --batch-size 1000",
    threshold="compact_after",
    json_key="importJobsCompacted",
    count_key="oldImportJobs",
    label="Import jobs to compact",
    step_function="compact_import_jobs_step",
    count_function="count_old_import_jobs",
    tables=(Table("jobs", "j", ("SELECT", "UPDATE"), "import_jobs"),),
    columns={
        "key": Column("jobs", "id"),
        "status_column": Column("jobs", "status"),
        "ended_at": Column("jobs", ("finished_at", "created_at")),
        "clear": Column("jobs", ("payload", "log")),
        "summary_column": Column("jobs", "result"),
        "compacted_at": Column("jobs", "compacted_at", added=True),
    },
    values={"finished": Value(("completed", "failed", "cancelled"))},
    changes="jobs",
    per_status="finished",
)
