-- The four maintenance rules, each written once as a batch function (used by the CLI and by the
-- pg_cron entry points) and once as a count (used by --dry-run and status). Every cutoff is computed
-- from the database's now() by the caller and passed in, so one task uses one cutoff throughout.
-- {app} is the application schema, quoted by maintctl. Every function pins search_path and names
-- each table with its schema.

-- The key of the advisory lock that lets one non-dry run work at a time (CLI and pg_cron alike).
create function maintenance.run_lock_key() returns bigint
language sql immutable set search_path = pg_catalog, pg_temp
as $$ select 7461823190::bigint $$;

-- A duration as maintctl writes it (1d12h, 90m -> 1h30m), whatever the session's IntervalStyle.
create function maintenance.duration_text(p_duration interval) returns text
language sql immutable set search_path = pg_catalog, pg_temp
as $$
  select coalesce(nullif(concat(nullif(floor(s / 86400)::bigint, 0) || 'd',
                                nullif(floor(mod(s, 86400) / 3600)::bigint, 0) || 'h',
                                nullif(floor(mod(s, 3600) / 60)::bigint, 0) || 'm',
                                nullif(floor(mod(s, 60))::bigint, 0) || 's'), ''), '0s')
  from (select extract(epoch from p_duration) as s) as seconds
$$;

-- A threshold as a plain number of seconds (a day is 24 hours), so that now() minus it does not
-- depend on the session's time zone: '30 days' across a daylight-saving change is still 720 hours.
create function maintenance.absolute(p_duration interval) returns interval
language sql immutable set search_path = pg_catalog, pg_temp
as $$ select make_interval(secs => extract(epoch from p_duration)) $$;

-- A timestamp as the JSON writes it: UTC, milliseconds, Z.
create function maintenance.json_time(p_moment timestamptz) returns text
language sql immutable set search_path = pg_catalog, pg_temp
as $$ select to_char(p_moment at time zone 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.MS"Z"') $$;

------------------------------------------------------------------------------------------------------
-- stuck: runs in 'processing' with no sign of life since the cutoff become 'failed'.
create function maintenance.count_stuck_runs(p_cutoff timestamptz) returns bigint
language sql stable set search_path = pg_catalog, pg_temp
as $$
  select count(*) from {app}.import_runs
  where status = 'processing' and coalesce(heartbeat_at, started_at, created_at) < p_cutoff
$$;

create function maintenance.mark_stuck_runs_batch(
  p_cutoff timestamptz, p_threshold interval, p_batch_size integer) returns integer
language sql volatile set search_path = pg_catalog, pg_temp
as $$
  with picked as (
    select id from {app}.import_runs
    where status = 'processing' and coalesce(heartbeat_at, started_at, created_at) < p_cutoff
    order by id
    limit p_batch_size
    for update skip locked
  ), marked as (
    -- The UPDATE re-checks the rule on the row it locks: a run its worker finished or
    -- heartbeated meanwhile is left alone.
    update {app}.import_runs r
       set status = 'failed',
           finished_at = now(),
           error_message = format('Timed out: no sign of life for more than %s (maintctl stuck_after)',
                                  maintenance.duration_text(p_threshold))
      from picked
     where r.id = picked.id
       and r.status = 'processing'
       and coalesce(r.heartbeat_at, r.started_at, r.created_at) < p_cutoff
    returning 1
  )
  select count(*)::integer from marked
$$;

------------------------------------------------------------------------------------------------------
-- temp: temp uploads created before the cutoff are deleted.
create function maintenance.count_old_temp_uploads(p_cutoff timestamptz) returns bigint
language sql stable set search_path = pg_catalog, pg_temp
as $$
  select count(*) from {app}.temp_uploads where created_at < p_cutoff
$$;

create function maintenance.purge_temp_uploads_batch(p_cutoff timestamptz, p_batch_size integer)
returns integer
language sql volatile set search_path = pg_catalog, pg_temp
as $$
  with picked as (
    select id from {app}.temp_uploads
    where created_at < p_cutoff
    order by created_at
    limit p_batch_size
    for update skip locked
  ), deleted as (
    delete from {app}.temp_uploads t using picked where t.id = picked.id returning 1
  )
  select count(*)::integer from deleted
$$;

------------------------------------------------------------------------------------------------------
-- compact: finished jobs older than the cutoff lose payload and log; result becomes a summary.

-- What an auditor needs of a compacted job, in at most 1 KB (the columns id, run_id, status,
-- created_at and finished_at stay as they were):
--   compacted     true
--   totals        the result's top-level numeric and boolean fields (at most 12), e.g. row counts
--   error         the result's "error" (or "message") text, cut to 300 characters
--   lastLogLine   for failed and cancelled jobs, the last line of the log, cut to 300 characters
--   resultBytes, payloadBytes, logBytes   the size of what was removed
-- Keys without a value are left out. Past 1 KB of JSON text, totals go first, then error and
-- lastLogLine are cut to 80 characters, then dropped: the sizes alone always fit.
create function maintenance.import_job_summary(
  p_status text, p_result jsonb, p_payload jsonb, p_log text) returns jsonb
language plpgsql immutable set search_path = pg_catalog, pg_temp
as $$
declare
  totals jsonb;
  summary jsonb;
begin
  if jsonb_typeof(p_result) = 'object' then
    select jsonb_object_agg(key, value) into totals
    from (select key, value from jsonb_each(p_result)
          where jsonb_typeof(value) in ('number', 'boolean') and length(key) <= 40
          order by key limit 12) as numeric_fields;
  end if;
  summary := jsonb_strip_nulls(jsonb_build_object(
    'compacted', true,
    'totals', totals,
    'error', left(coalesce(p_result ->> 'error', p_result ->> 'message'), 300),
    -- Only the log's tail is searched: a log of many megabytes must not slow the batch down.
    'lastLogLine', case when p_status <> 'completed'
                        then left((regexp_match(right(p_log, 4096), '([^\n]*\S[^\n]*)\s*$'))[1], 300)
                   end,
    'resultBytes', octet_length(p_result::text),
    'payloadBytes', octet_length(p_payload::text),
    'logBytes', octet_length(p_log)));
  if octet_length(summary::text) > 1024 then
    summary := summary - 'totals';
  end if;
  if octet_length(summary::text) > 1024 then
    summary := summary || jsonb_strip_nulls(jsonb_build_object(
      'error', left(summary ->> 'error', 80), 'lastLogLine', left(summary ->> 'lastLogLine', 80)));
  end if;
  if octet_length(summary::text) > 1024 then
    summary := summary - 'lastLogLine';
  end if;
  if octet_length(summary::text) > 1024 then
    summary := summary - 'error';
  end if;
  return summary;
end
$$;

create function maintenance.count_old_import_jobs(p_cutoff timestamptz) returns bigint
language sql stable set search_path = pg_catalog, pg_temp
as $$
  select count(*) from {app}.import_jobs
  where status in ('completed', 'failed', 'cancelled')
    and compacted_at is null
    and coalesce(finished_at, created_at) < p_cutoff
$$;

create function maintenance.compact_import_jobs_batch(p_cutoff timestamptz, p_batch_size integer)
returns integer
language sql volatile set search_path = pg_catalog, pg_temp
as $$
  with picked as (
    select id from {app}.import_jobs
    where status in ('completed', 'failed', 'cancelled')
      and compacted_at is null
      and coalesce(finished_at, created_at) < p_cutoff
    order by id
    limit p_batch_size
    for update skip locked
  ), compacted as (
    update {app}.import_jobs j
       set result = maintenance.import_job_summary(j.status, j.result, j.payload, j.log),
           payload = null,
           log = null,
           compacted_at = now()
      from picked
     where j.id = picked.id and j.compacted_at is null
    returning 1
  )
  select count(*)::integer from compacted
$$;

------------------------------------------------------------------------------------------------------
-- raw: raw items of failed runs that finished before the cutoff are deleted; the runs stay.
create function maintenance.count_old_raw_items(p_cutoff timestamptz) returns bigint
language sql stable set search_path = pg_catalog, pg_temp
as $$
  select count(*)
  from {app}.import_runs r
  join {app}.raw_import_items i on i.run_id = r.id
  where r.status = 'failed' and coalesce(r.finished_at, r.started_at, r.created_at) < p_cutoff
$$;

create function maintenance.purge_raw_items_batch(p_cutoff timestamptz, p_batch_size integer)
returns integer
language sql volatile set search_path = pg_catalog, pg_temp
as $$
  with picked as (
    select i.id
    from {app}.import_runs r
    join {app}.raw_import_items i on i.run_id = r.id
    where r.status = 'failed' and coalesce(r.finished_at, r.started_at, r.created_at) < p_cutoff
    limit p_batch_size
    -- The run is share-locked so that a worker cannot re-queue it while its items go.
    for update of i skip locked
    for share of r skip locked
  ), deleted as (
    delete from {app}.raw_import_items i using picked where i.id = picked.id returning 1
  )
  select count(*)::integer from deleted
$$;

------------------------------------------------------------------------------------------------------
-- What is waiting, at any thresholds; maintenance_status is the same at the default thresholds.
create function maintenance.pending_counts(
  p_stuck_after interval, p_temp_upload_ttl interval,
  p_compact_after interval, p_raw_items_ttl interval)
returns table (stuck_runs bigint, old_temp_uploads bigint, old_raw_items bigint, old_import_jobs bigint)
language sql stable set search_path = pg_catalog, pg_temp
as $$
  select maintenance.count_stuck_runs(now() - maintenance.absolute(p_stuck_after)),
         maintenance.count_old_temp_uploads(now() - maintenance.absolute(p_temp_upload_ttl)),
         maintenance.count_old_raw_items(now() - maintenance.absolute(p_raw_items_ttl)),
         maintenance.count_old_import_jobs(now() - maintenance.absolute(p_compact_after))
$$;

create view maintenance.maintenance_status with (security_invoker = true) as
  select * from maintenance.pending_counts(
    interval '24 hours', interval '24 hours', interval '7 days', interval '30 days');

------------------------------------------------------------------------------------------------------
-- Whether a ledger row left 'running' belongs to a session that is gone: its process died.
create function maintenance.is_abandoned(p_status text, p_backend_pid integer, p_started_at timestamptz)
returns boolean
language sql stable set search_path = pg_catalog, pg_temp
as $$
  select p_status = 'running'
     and not exists (select 1 from pg_stat_activity a
                     where a.pid = p_backend_pid and a.backend_start <= p_started_at)
$$;

-- Ledger rows left 'running' by a process that died become 'abandoned'.
create function maintenance.mark_abandoned_runs() returns integer
language sql volatile set search_path = pg_catalog, pg_temp
as $$
  with abandoned as (
    update maintenance.runs r
       set status = 'abandoned'
     where maintenance.is_abandoned(r.status, r.backend_pid, r.started_at)
    returning 1
  )
  select count(*)::integer from abandoned
$$;

-- Finished ledger rows older than the retention go.
create function maintenance.prune_runs(p_retention interval) returns integer
language sql volatile set search_path = pg_catalog, pg_temp
as $$
  with pruned as (
    delete from maintenance.runs
    where started_at < now() - maintenance.absolute(p_retention) and status <> 'running'
    returning 1
  )
  select count(*)::integer from pruned
$$;

------------------------------------------------------------------------------------------------------
-- Entry points for pg_cron users: the same rules and batches, inside the database.

-- The pg_cron entry points refuse what the CLI refuses: a batch size under 1, a threshold that is
-- not positive, and one under an hour unless forced.
create function maintenance.check_cleanup_arguments(
  p_thresholds interval[], p_batch_size integer, p_force boolean) returns void
language plpgsql immutable set search_path = pg_catalog, pg_temp
as $$
begin
  if p_batch_size is null or p_batch_size < 1 then
    raise exception 'batch_size must be at least 1, not %', coalesce(p_batch_size::text, 'null')
      using errcode = 'invalid_parameter_value';
  end if;
  if exists (select 1 from unnest(p_thresholds) as t where t is null or t <= interval '0') then
    raise exception 'every threshold must be a positive interval'
      using errcode = 'invalid_parameter_value';
  end if;
  if not coalesce(p_force, false) and exists (
       select 1 from unnest(p_thresholds) as t where maintenance.absolute(t) < interval '1 hour') then
    raise exception 'a threshold under 1 hour needs force => true'
      using errcode = 'invalid_parameter_value';
  end if;
end
$$;

-- Compacts every eligible job, batch after batch, in the caller's transaction.
create function maintenance.compact_old_import_jobs(
  compact_after interval default interval '7 days', batch_size integer default 5000,
  force boolean default false) returns bigint
language plpgsql volatile set search_path = pg_catalog, pg_temp
as $$
declare
  cutoff timestamptz := now() - maintenance.absolute(compact_after);
  total bigint := 0;
  n integer;
begin
  perform maintenance.check_cleanup_arguments(array[compact_after], batch_size, force);
  loop
    n := maintenance.compact_import_jobs_batch(cutoff, batch_size);
    total := total + n;
    exit when n < batch_size;
  end loop;
  return total;
end
$$;

-- The CLI's lock timeout, for the current transaction of the pg_cron procedure. (Its statement
-- timeout cannot follow: the server times the whole CALL as one statement.)
create function maintenance.set_lock_timeout(p_lock_timeout interval) returns void
language sql volatile set search_path = pg_catalog, pg_temp
as $$
  select set_config('lock_timeout', (extract(epoch from p_lock_timeout) * 1000)::bigint || 'ms', true);
$$;

-- The whole of `maintctl run`: `call maintenance.run_maintenance_cleanup();` from pg_cron. Each
-- batch is committed on its own, so it must be called outside an explicit transaction (inside one,
-- its first COMMIT fails before anything is locked or changed). A procedure that commits cannot
-- carry a SET clause, so it pins search_path itself in each transaction and names every object
-- with its schema. It honours the pause switch and the run lock, and keeps the ledger as the CLI
-- does, host 'database'. A cancel (or the CALL's statement_timeout) releases the run lock; the
-- ledger row then stays 'running' until the session ends, and the next run marks it abandoned.
create procedure maintenance.run_maintenance_cleanup(
  stuck_after interval default interval '24 hours',
  temp_upload_ttl interval default interval '24 hours',
  compact_after interval default interval '7 days',
  raw_items_ttl interval default interval '30 days',
  batch_size integer default 5000,
  lock_timeout interval default interval '5 seconds',
  history_retention interval default interval '90 days',
  force boolean default false,
  inout summary jsonb default null)
language plpgsql
as $$
declare
  run_thresholds jsonb;
  skipped_because text;
  ledger_id bigint;
  task text;
  threshold interval;
  cutoff timestamptz;
  task_started timestamptz;
  n integer;
  total bigint;
  batches integer;
  failure text;
  task_results jsonb := pg_catalog.jsonb_build_array();
  task_errors jsonb := pg_catalog.jsonb_build_array();
begin
  commit;
  perform pg_catalog.set_config('search_path', 'pg_catalog, pg_temp', true);
  perform maintenance.set_lock_timeout(lock_timeout);
  perform maintenance.check_cleanup_arguments(
    array[stuck_after, temp_upload_ttl, compact_after, raw_items_ttl], batch_size, force);
  run_thresholds := jsonb_build_object(
    'stuckAfter', maintenance.duration_text(stuck_after),
    'tempUploadTtl', maintenance.duration_text(temp_upload_ttl),
    'compactAfter', maintenance.duration_text(compact_after),
    'rawItemsTtl', maintenance.duration_text(raw_items_ttl),
    'batchSize', batch_size);

  select format('maintenance is paused by %s: %s (maintctl resume)',
                coalesce(p.paused_by, '?'), coalesce(p.reason, 'no reason given'))
    into skipped_because
    from maintenance.pause p where p.paused;
  if skipped_because is null and not pg_try_advisory_lock(maintenance.run_lock_key()) then
    skipped_because := 'another maintenance run is in progress';
  end if;
  if skipped_because is not null then
    insert into maintenance.runs (command, host, version, thresholds, status, skipped, finished_at)
    values ('run_maintenance_cleanup', 'database', 'sql', run_thresholds, 'skipped',
            skipped_because, now())
    returning id into ledger_id;
    summary := jsonb_build_object('runId', ledger_id, 'skipped', skipped_because);
    return;
  end if;

  -- From here on the lock is held: every statement that could fail releases it before raising.
  begin
    perform maintenance.mark_abandoned_runs();
    insert into maintenance.runs (command, host, version, thresholds)
    values ('run_maintenance_cleanup', 'database', 'sql', run_thresholds)
    returning id into ledger_id;
  exception when others or query_canceled then
    perform pg_advisory_unlock(maintenance.run_lock_key());
    raise;
  end;
  commit;

  foreach task in array array['stuck', 'temp', 'compact', 'raw'] loop
    perform pg_catalog.set_config('search_path', 'pg_catalog, pg_temp', true);
    perform maintenance.set_lock_timeout(lock_timeout);
    threshold := case task when 'stuck' then stuck_after when 'temp' then temp_upload_ttl
                           when 'compact' then compact_after else raw_items_ttl end;
    cutoff := now() - maintenance.absolute(threshold);
    task_started := clock_timestamp();
    total := 0;
    batches := 0;
    failure := null;
    loop
      begin
        n := case task
               when 'stuck' then maintenance.mark_stuck_runs_batch(cutoff, threshold, batch_size)
               when 'temp' then maintenance.purge_temp_uploads_batch(cutoff, batch_size)
               when 'compact' then maintenance.compact_import_jobs_batch(cutoff, batch_size)
               else maintenance.purge_raw_items_batch(cutoff, batch_size) end;
        batches := batches + 1;
        total := total + n;
      exception
        when query_canceled then  -- a cancel or the CALL's own timeout ends the whole run
          perform pg_advisory_unlock(maintenance.run_lock_key());
          raise;
        when others then
          failure := sqlerrm;
      end;
      commit;
      perform pg_catalog.set_config('search_path', 'pg_catalog, pg_temp', true);
      perform maintenance.set_lock_timeout(lock_timeout);
      exit when failure is not null or n < batch_size;
    end loop;
    task_results := task_results || jsonb_build_object(
      'task', task,
      'status', case when failure is null then 'ok' else 'failed' end,
      'rows', total,
      'batches', batches,
      'durationMs', floor(extract(epoch from clock_timestamp() - task_started) * 1000)::bigint,
      'cutoff', maintenance.json_time(cutoff),
      'error', failure);
    if failure is not null then
      task_errors := task_errors || to_jsonb(task || ': ' || failure);
    end if;
  end loop;

  begin
    update maintenance.runs
       set status = case when jsonb_array_length(task_errors) = 0 then 'succeeded' else 'failed' end,
           finished_at = now(), tasks = task_results, errors = task_errors
     where id = ledger_id;
    perform maintenance.prune_runs(history_retention);
  exception when others or query_canceled then
    perform pg_advisory_unlock(maintenance.run_lock_key());
    raise;
  end;
  commit;
  perform pg_advisory_unlock(maintenance.run_lock_key());
  summary := jsonb_build_object('runId', ledger_id, 'tasks', task_results, 'errors', task_errors);
end
$$;
