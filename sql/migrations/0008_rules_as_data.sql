-- Rules as data (maintctl/rules/): each rule's steps and count are generated from its definition
-- and the policy (maintctl.toml) by `maintctl migrate`, after the migrations, from sql/rules/*.sql.
-- This migration clears what they supersede and adds the record of what was generated.

-- 0002's batch functions (stepped with no walk, superseded by 0006's steps) and its advisory lock
-- key (superseded by 0004's run lease), and 0006's steps, whose generated successors all take the
-- same arguments (cutoff, threshold, batch size, position, run) so that one function, rule_step,
-- can step any rule for the CLI and the pg_cron procedure alike.
drop function if exists maintenance.run_lock_key();
drop function if exists maintenance.mark_stuck_runs_batch(timestamptz, interval, integer);
drop function if exists maintenance.purge_temp_uploads_batch(timestamptz, integer);
drop function if exists maintenance.compact_import_jobs_batch(timestamptz, integer);
drop function if exists maintenance.purge_raw_items_batch(timestamptz, integer);
drop function if exists maintenance.mark_stuck_runs_step(timestamptz, interval, integer);
drop function if exists maintenance.purge_temp_uploads_step(timestamptz, integer, jsonb, bigint);
drop function if exists maintenance.compact_import_jobs_step(timestamptz, integer, jsonb);
drop function if exists maintenance.purge_raw_items_step(timestamptz, integer, jsonb);

-- One count per rule: the (cutoff, limit) ones of 0007, generated now; the view's function calls
-- them with no limit, and 0002's one-argument counts go.
create or replace function maintenance.pending_counts(
  p_stuck_after interval, p_temp_upload_ttl interval,
  p_compact_after interval, p_raw_items_ttl interval)
returns table (stuck_runs bigint, old_temp_uploads bigint, old_raw_items bigint, old_import_jobs bigint)
language sql stable set search_path = pg_catalog, pg_temp
as $$
  select * from maintenance.pending_counts(
    p_stuck_after, p_temp_upload_ttl, p_compact_after, p_raw_items_ttl, null)
$$;
drop function if exists maintenance.count_stuck_runs(timestamptz);
drop function if exists maintenance.count_old_temp_uploads(timestamptz);
drop function if exists maintenance.count_old_import_jobs(timestamptz);
drop function if exists maintenance.count_old_raw_items(timestamptz);

-- What migrate generated and installed last: the fingerprint of that SQL. A command that finds
-- another fingerprint than its own policy generates refuses to run (run: maintctl migrate).
create table maintenance.installed_rules (
  id               boolean primary key default true check (id),
  fingerprint      text not null,
  app_schema       text not null,
  maintctl_version text not null,
  installed_at     timestamptz not null default now()
);
