"""The temp rule: temp uploads created before the threshold are deleted; the file of each goes to
the storage outbox in the same statement (docs/storage-outbox.md). Whole range partitions past the
threshold are dropped first (maintctl.tasks.drop_expired_temp_partitions). Its SQL is
`sql/rules/temp.sql`."""

from maintctl.rules import Column, Rule, Table

RULE = Rule(
    name="temp",
    command="purge-temp",
    summary=(
        "Delete temp uploads older than the TTL (24h by default); their files go to the outbox."
    ),
    example="maintctl purge-temp --older-than 2d --emit-paths deleted-files.jsonl",
    threshold="temp_upload_ttl",
    json_key="tempUploadsPurged",
    count_key="oldTempUploads",
    label="Old temp uploads",
    step_function="purge_temp_uploads_step",
    count_function="count_old_temp_uploads",
    tables=(Table("uploads", "t", ("SELECT", "UPDATE", "DELETE"), "temp_uploads"),),
    columns={
        "key": Column("uploads", "id"),
        "created_at": Column("uploads", "created_at"),
        # storage_path = false: the uploads have no files, so no storage outbox.
        "storage_path": Column("uploads", "storage_path", optional=True),
        "size_bytes": Column("uploads", "size_bytes", optional=True, needs="storage_path"),
    },
    changes="uploads",
    emits_paths=True,
)
