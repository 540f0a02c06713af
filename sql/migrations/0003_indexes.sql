-- maintctl: no-transaction
-- The indexes the rules need on the application's tables, built without blocking its writes. Each
-- statement runs on its own; a build that was interrupted leaves an invalid index, which the drop
-- clears before the build is tried again.

-- stuck: the few runs in 'processing', by their last sign of life.
drop index concurrently if exists {app}.maintctl_import_runs_processing;
create index concurrently maintctl_import_runs_processing
  on {app}.import_runs ((coalesce(heartbeat_at, started_at, created_at)))
  where status = 'processing';

-- raw: failed runs by the time they ended.
drop index concurrently if exists {app}.maintctl_import_runs_failed;
create index concurrently maintctl_import_runs_failed
  on {app}.import_runs ((coalesce(finished_at, started_at, created_at)))
  where status = 'failed';

-- raw: the items of a run (the foreign key has no index of its own).
drop index concurrently if exists {app}.maintctl_raw_import_items_run_id;
create index concurrently maintctl_raw_import_items_run_id on {app}.raw_import_items (run_id);

-- temp: uploads by age.
drop index concurrently if exists {app}.maintctl_temp_uploads_created_at;
create index concurrently maintctl_temp_uploads_created_at on {app}.temp_uploads (created_at);

-- compact: finished jobs not yet compacted, by the time they ended.
drop index concurrently if exists {app}.maintctl_import_jobs_compactable;
create index concurrently maintctl_import_jobs_compactable
  on {app}.import_jobs ((coalesce(finished_at, created_at)))
  where status in ('completed', 'failed', 'cancelled') and compacted_at is null;
