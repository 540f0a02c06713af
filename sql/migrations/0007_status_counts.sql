-- status at scale. Each count of `maintctl status` stops at a limit (p_limit rows; null counts
-- everything): past 100,000 rows an operator needs to know that there is a backlog, not its exact
-- size, and an exact count of millions of rows reads millions of index entries every time status
-- is polled. The rules are those of 0002_rules.sql; every count is answered by the indexes of
-- 0003_indexes.sql and 0006_batch_engine.sql (tests/test_scale.py runs EXPLAIN on them).

create function maintenance.count_stuck_runs(p_cutoff timestamptz, p_limit bigint) returns bigint
language sql stable set search_path = pg_catalog, pg_temp
as $$
  select count(*) from (
    select from {app}.import_runs
    where status = 'processing' and coalesce(heartbeat_at, started_at, created_at) < p_cutoff
    limit p_limit) as found
$$;

create function maintenance.count_old_temp_uploads(p_cutoff timestamptz, p_limit bigint)
returns bigint
language sql stable set search_path = pg_catalog, pg_temp
as $$
  select count(*) from (
    select from {app}.temp_uploads where created_at < p_cutoff limit p_limit) as found
$$;

-- Always through the rule's partial index (0006's maintctl_import_jobs_compactable_key), which
-- holds only the jobs still to compact: right after a run compacted a backlog, before autovacuum
-- analyzes the table again, the statistics still show that backlog and the planner would read the
-- whole table instead (181 ms at 2,000,000 jobs, against under a millisecond through the index).
create function maintenance.count_old_import_jobs(p_cutoff timestamptz, p_limit bigint)
returns bigint
language sql stable set search_path = pg_catalog, pg_temp set enable_seqscan = off
as $$
  select count(*) from (
    select from {app}.import_jobs
    where status in ('completed', 'failed', 'cancelled')
      and compacted_at is null
      and coalesce(finished_at, created_at) < p_cutoff
    limit p_limit) as found
$$;

-- The exact count (dry runs, `status --exact`, the view) the same way.
create or replace function maintenance.count_old_import_jobs(p_cutoff timestamptz) returns bigint
language sql stable set search_path = pg_catalog, pg_temp
as $$
  select maintenance.count_old_import_jobs(p_cutoff, null)
$$;

-- Through the failed runs (their partial index), then each run's items (the run_id index). The
-- runs are looked up on their own (materialized): under a LIMIT the planner would rather read
-- every run, hoping to stop early, which with nothing to count reads them all.
create function maintenance.count_old_raw_items(p_cutoff timestamptz, p_limit bigint)
returns bigint
language sql stable set search_path = pg_catalog, pg_temp
as $$
  with failed as materialized (
    select r.id from {app}.import_runs r
    where r.status = 'failed' and coalesce(r.finished_at, r.started_at, r.created_at) < p_cutoff
  )
  select count(*) from (
    select from failed join {app}.raw_import_items i on i.run_id = failed.id
    limit p_limit) as found
$$;

create function maintenance.pending_counts(
  p_stuck_after interval, p_temp_upload_ttl interval,
  p_compact_after interval, p_raw_items_ttl interval, p_limit bigint)
returns table (stuck_runs bigint, old_temp_uploads bigint, old_raw_items bigint, old_import_jobs bigint)
language sql stable set search_path = pg_catalog, pg_temp
as $$
  select maintenance.count_stuck_runs(now() - maintenance.absolute(p_stuck_after), p_limit),
         maintenance.count_old_temp_uploads(now() - maintenance.absolute(p_temp_upload_ttl), p_limit),
         maintenance.count_old_raw_items(now() - maintenance.absolute(p_raw_items_ttl), p_limit),
         maintenance.count_old_import_jobs(now() - maintenance.absolute(p_compact_after), p_limit)
$$;
