"""The raw rule: the raw items of runs that failed before the threshold are deleted; the runs stay.
The runs table, its key and its status column are those of the stuck rule. Its SQL is
`sql/rules/raw.sql`."""

from maintctl.rules import Column, Rule, Table, Value

RULE = Rule(
    name="raw",
    command="purge-raw",
    summary="Delete raw items of runs that failed more than 30 days ago (the runs stay).",
    example="maintctl purge-raw --dry-run --json",
    threshold="raw_items_ttl",
    json_key="rawItemsPurged",
    count_key="oldRawItems",
    label="Raw items of failed runs",
    step_function="purge_raw_items_step",
    count_function="count_old_raw_items",
    tables=(
        Table("items", "i", ("SELECT", "UPDATE", "DELETE"), "raw_import_items"),
        Table("runs", "r", ("SELECT", "UPDATE"), source="stuck"),
    ),
    columns={
        "key": Column("items", "id"),
        "run_column": Column("items", "run_id"),
        "run_key": Column("runs", source="stuck", source_key="key"),
        "run_status": Column("runs", source="stuck", source_key="status_column"),
        "run_ended_at": Column("runs", ("finished_at", "started_at", "created_at")),
    },
    values={"failed": Value(source="stuck", column="run_status")},
    changes="items",
)
