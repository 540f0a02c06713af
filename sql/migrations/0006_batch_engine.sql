-- maintctl: no-transaction
-- The batch engine at scale (docs/performance-design.md) and the storage outbox
-- (docs/storage-outbox.md). Each statement runs on its own, so every one can run again after an
-- interrupted migrate: tables `if not exists`, functions `create or replace`, and each index build
-- first drops an invalid leftover. {app} is the application schema, quoted by maintctl.

------------------------------------------------------------------------------------------------------
-- The indexes each walk reads its batch boundary from (an index-only scan over the whole walk key)
-- are part of the rules' generated SQL since 0008 (sql/rules/<rule>.sql, "indexes").

------------------------------------------------------------------------------------------------------
-- The storage outbox: the file of every temp upload maintctl deleted, written by the statement that
-- deletes the row, until `maintctl drain-outbox` hands it to the storage cleaner. One row per batch,
-- the batch's uploads as arrays: an outbox row per upload (a heap tuple and an index entry each)
-- measured about twice the cost. Stored uncompressed (external): compressing a batch's paths cost
-- more time than the space is worth in a table that is drained.
create table if not exists maintenance.storage_outbox (
  id            bigint generated always as identity primary key,
  run_id        bigint,             -- maintenance.runs.id of the run that deleted the rows
  deleted_at    timestamptz not null default now(),
  upload_ids    bigint[] not null,  -- temp_uploads.id of each deleted row...
  storage_paths text[] not null,    -- ...its storage_path...
  size_bytes    bigint[] not null   -- ...and its size_bytes, in the same order
);
alter table maintenance.storage_outbox
  alter column upload_ids set storage external,
  alter column storage_paths set storage external,
  alter column size_bytes set storage external;
create index if not exists storage_outbox_run_id on maintenance.storage_outbox (run_id, id);

-- The outbox one file per row, for people and for the storage cleaner's own checks.
create or replace view maintenance.storage_outbox_files with (security_invoker = true) as
  select o.id as outbox_id, o.run_id, o.deleted_at, f.upload_id, f.storage_path, f.size_bytes
  from maintenance.storage_outbox o
  cross join lateral unnest(o.upload_ids, o.storage_paths, o.size_bytes)
    as f (upload_id, storage_path, size_bytes);

------------------------------------------------------------------------------------------------------
-- One step of each rule. A step takes where the walk stands (p_position, jsonb; null at the start)
-- and returns the rows it touched and where the next step starts (null: the walk is done). Every
-- step re-checks the whole rule inside its DELETE/UPDATE: the walk only narrows what one statement
-- looks at, it never decides on its own what is eligible.
--
-- Row locks: a step first runs without SKIP LOCKED (a plain range statement is several times
-- cheaper) but waits at most 50 ms for a lock; if the application holds a row of the range, that
-- attempt rolls back (a subtransaction) and the same range is done again skipping the locked rows,
-- which the next run picks up. That retry waits for the table lock up to MAINTCTL_LOCK_TIMEOUT:
-- the short wait is set inside the subtransaction and undone when it ends either way.

-- temp: walk (created_at, id) in index order. The boundary is the batch_size-th eligible key after
-- the position (an index-only scan); the DELETE takes the plain key range up to it. Equal
-- created_at values are split by id, so ties at a batch edge are neither skipped nor taken twice.
-- Each deleted row's file goes to the outbox in the same statement.
create or replace function maintenance.purge_temp_uploads_step(
  p_cutoff timestamptz, p_batch_size integer, p_position jsonb, p_run_id bigint,
  out rows integer, out next_position jsonb)
language plpgsql volatile set search_path = pg_catalog, pg_temp
as $$
declare
  after_at timestamptz := coalesce((p_position ->> 'createdAt')::timestamptz, '-infinity');
  after_id bigint := coalesce((p_position ->> 'id')::bigint, 0);
  upto_at timestamptz;
  upto_id bigint;
  more boolean := false;
  configured_lock_timeout text := current_setting('lock_timeout');
begin
  select t.created_at, t.id into upto_at, upto_id
    from {app}.temp_uploads t
   where t.created_at < p_cutoff and (t.created_at, t.id) > (after_at, after_id)
   order by t.created_at, t.id
  offset p_batch_size - 1 limit 1;
  if upto_at is null then  -- fewer than a batch left: this step takes them all
    upto_at := p_cutoff;
    upto_id := 0;
  else  -- exactly a batch left: this is the last step too
    more := exists (select 1 from {app}.temp_uploads t
                     where t.created_at < p_cutoff and (t.created_at, t.id) > (upto_at, upto_id));
  end if;
  begin
    perform set_config('lock_timeout', '50ms', true);
    with gone as (
      delete from {app}.temp_uploads t
       where t.created_at < p_cutoff
         and (t.created_at, t.id) > (after_at, after_id) and (t.created_at, t.id) <= (upto_at, upto_id)
      returning t.id, t.storage_path, t.size_bytes
    )
    insert into maintenance.storage_outbox (run_id, upload_ids, storage_paths, size_bytes)
    select p_run_id, array_agg(gone.id), array_agg(gone.storage_path), array_agg(gone.size_bytes)
      from gone having count(*) > 0
    returning cardinality(upload_ids) into rows;
    rows := coalesce(rows, 0);
    perform set_config('lock_timeout', configured_lock_timeout, true);
  exception when lock_not_available then
    with picked as (
      select t.id from {app}.temp_uploads t
       where t.created_at < p_cutoff
         and (t.created_at, t.id) > (after_at, after_id) and (t.created_at, t.id) <= (upto_at, upto_id)
      for update skip locked
    ), gone as (
      delete from {app}.temp_uploads t using picked
       where t.id = picked.id and t.created_at < p_cutoff
      returning t.id, t.storage_path, t.size_bytes
    )
    insert into maintenance.storage_outbox (run_id, upload_ids, storage_paths, size_bytes)
    select p_run_id, array_agg(gone.id), array_agg(gone.storage_path), array_agg(gone.size_bytes)
      from gone having count(*) > 0
    returning cardinality(upload_ids) into rows;
    rows := coalesce(rows, 0);
  end;
  next_position := case when more then jsonb_build_object('createdAt', upto_at, 'id', upto_id) end;
end
$$;

-- compact: the same walk over (coalesce(finished_at, created_at), id) in the partial index.
create or replace function maintenance.compact_import_jobs_step(
  p_cutoff timestamptz, p_batch_size integer, p_position jsonb,
  out rows integer, out next_position jsonb)
language plpgsql volatile set search_path = pg_catalog, pg_temp
as $$
declare
  after_at timestamptz := coalesce((p_position ->> 'endedAt')::timestamptz, '-infinity');
  after_id bigint := coalesce((p_position ->> 'id')::bigint, 0);
  upto_at timestamptz;
  upto_id bigint;
  more boolean := false;
  configured_lock_timeout text := current_setting('lock_timeout');
begin
  select coalesce(j.finished_at, j.created_at), j.id into upto_at, upto_id
    from {app}.import_jobs j
   where j.status in ('completed', 'failed', 'cancelled') and j.compacted_at is null
     and coalesce(j.finished_at, j.created_at) < p_cutoff
     and (coalesce(j.finished_at, j.created_at), j.id) > (after_at, after_id)
   order by coalesce(j.finished_at, j.created_at), j.id
  offset p_batch_size - 1 limit 1;
  if upto_at is null then
    upto_at := p_cutoff;
    upto_id := 0;
  else
    more := exists (select 1 from {app}.import_jobs j
                     where j.status in ('completed', 'failed', 'cancelled') and j.compacted_at is null
                       and coalesce(j.finished_at, j.created_at) < p_cutoff
                       and (coalesce(j.finished_at, j.created_at), j.id) > (upto_at, upto_id));
  end if;
  begin
    perform set_config('lock_timeout', '50ms', true);
    update {app}.import_jobs j
       set result = maintenance.import_job_summary(j.status, j.result, j.payload, j.log),
           payload = null,
           log = null,
           compacted_at = now()
     where j.status in ('completed', 'failed', 'cancelled') and j.compacted_at is null
       and coalesce(j.finished_at, j.created_at) < p_cutoff
       and (coalesce(j.finished_at, j.created_at), j.id) > (after_at, after_id)
       and (coalesce(j.finished_at, j.created_at), j.id) <= (upto_at, upto_id);
    get diagnostics rows = row_count;
    perform set_config('lock_timeout', configured_lock_timeout, true);
  exception when lock_not_available then
    with picked as (
      select j.id from {app}.import_jobs j
       where j.status in ('completed', 'failed', 'cancelled') and j.compacted_at is null
         and coalesce(j.finished_at, j.created_at) < p_cutoff
         and (coalesce(j.finished_at, j.created_at), j.id) > (after_at, after_id)
         and (coalesce(j.finished_at, j.created_at), j.id) <= (upto_at, upto_id)
      for update skip locked
    )
    update {app}.import_jobs j
       set result = maintenance.import_job_summary(j.status, j.result, j.payload, j.log),
           payload = null,
           log = null,
           compacted_at = now()
      from picked
     where j.id = picked.id
       and j.status in ('completed', 'failed', 'cancelled') and j.compacted_at is null
       and coalesce(j.finished_at, j.created_at) < p_cutoff;
    get diagnostics rows = row_count;
  end;
  next_position := case when more then jsonb_build_object('endedAt', upto_at, 'id', upto_id) end;
end
$$;

-- raw: walk the eligible failed runs in id order, and the items of each through (run_id, id),
-- run after run until the batch is full. Each run is share-locked (skipping one a worker holds) so
-- that it cannot be re-queued while its items go; the runs themselves stay.
create or replace function maintenance.purge_raw_items_step(
  p_cutoff timestamptz, p_batch_size integer, p_position jsonb,
  out rows integer, out next_position jsonb)
language plpgsql volatile set search_path = pg_catalog, pg_temp
as $$
declare
  from_run bigint := coalesce((p_position ->> 'runId')::bigint, 0);
  after_id bigint := coalesce((p_position ->> 'id')::bigint, 0);
  run bigint;
  upto_id bigint;
  deleted integer;
begin
  rows := 0;
  loop
    -- The lateral probe asks the (run_id, id) index of each candidate run whether items are
    -- left: its LIMIT keeps the planner from joining every item, its ORDER BY from guessing that
    -- a sequential scan finds one soon.
    select r.id into run
      from {app}.import_runs r
     cross join lateral (select i.id from {app}.raw_import_items i
                          where i.run_id = r.id
                            and i.id > case when r.id = from_run then after_id else 0 end
                          order by i.id
                          limit 1) as has_items
     where r.status = 'failed' and coalesce(r.finished_at, r.started_at, r.created_at) < p_cutoff
       and r.id >= from_run
     order by r.id
     limit 1
     for share of r skip locked;
    if run is null then  -- no eligible run has items left: the walk is done
      next_position := null;
      return;
    end if;
    if run > from_run then
      after_id := 0;
    end if;
    upto_id := null;
    select i.id into upto_id
      from {app}.raw_import_items i
     where i.run_id = run and i.id > after_id
     order by i.id
    offset p_batch_size - rows - 1 limit 1;
    delete from {app}.raw_import_items i
     where i.run_id = run and i.id > after_id and (upto_id is null or i.id <= upto_id);
    get diagnostics deleted = row_count;
    rows := rows + deleted;
    if upto_id is not null then  -- the batch is full; this run may have more
      next_position := jsonb_build_object('runId', run, 'id', upto_id);
      return;
    end if;
    from_run := run + 1;
    after_id := 0;
  end loop;
end
$$;

-- stuck: few rows; the batch function of 0002 (which skips runs their worker holds and re-checks
-- status and cutoff in its UPDATE) behind the step interface.
create or replace function maintenance.mark_stuck_runs_step(
  p_cutoff timestamptz, p_threshold interval, p_batch_size integer,
  out rows integer, out next_position jsonb)
language plpgsql volatile set search_path = pg_catalog, pg_temp
as $$
begin
  rows := maintenance.mark_stuck_runs_batch(p_cutoff, p_threshold, p_batch_size);
  next_position := case when rows >= p_batch_size then jsonb_build_object('more', true) end;
end
$$;

-- 0002's batch functions keep their signatures for anyone who calls them, now by a whole walk
-- from the start (the temp one records its files in the outbox, with no run).
create or replace function maintenance.purge_temp_uploads_batch(p_cutoff timestamptz, p_batch_size integer)
returns integer
language sql volatile set search_path = pg_catalog, pg_temp
as $$
  select rows from maintenance.purge_temp_uploads_step(p_cutoff, p_batch_size, null, null)
$$;

create or replace function maintenance.compact_import_jobs_batch(p_cutoff timestamptz, p_batch_size integer)
returns integer
language sql volatile set search_path = pg_catalog, pg_temp
as $$
  select rows from maintenance.compact_import_jobs_step(p_cutoff, p_batch_size, null)
$$;

create or replace function maintenance.purge_raw_items_batch(p_cutoff timestamptz, p_batch_size integer)
returns integer
language sql volatile set search_path = pg_catalog, pg_temp
as $$
  select rows from maintenance.purge_raw_items_step(p_cutoff, p_batch_size, null)
$$;

-- Compacts every eligible job, step after step, in the caller's transaction.
create or replace function maintenance.compact_old_import_jobs(
  compact_after interval default interval '7 days', batch_size integer default 5000,
  force boolean default false) returns bigint
language plpgsql volatile set search_path = pg_catalog, pg_temp
as $$
declare
  cutoff timestamptz := now() - maintenance.absolute(compact_after);
  total bigint := 0;
  step record;
  position jsonb;
begin
  perform maintenance.check_cleanup_arguments(array[compact_after], batch_size, force);
  loop
    select * into step from maintenance.compact_import_jobs_step(cutoff, batch_size, position);
    total := total + step.rows;
    position := step.next_position;
    exit when position is null;
  end loop;
  return total;
end
$$;

-- The whole of `maintctl run` for pg_cron, stepping with the functions above (the same ones the
-- CLI calls) under the run lease of 0004, for the CLI's default 60 s (its arguments stay as 0002
-- had them). A cancel (or the CALL's statement_timeout) inside a batch records the run as
-- interrupted and releases the lease before the error reaches the caller. Its outbox rows carry
-- its ledger id.
create or replace procedure maintenance.run_maintenance_cleanup(
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
  holder record;
  ledger_id bigint;
  task text;
  threshold interval;
  cutoff timestamptz;
  task_started timestamptz;
  n integer;
  position jsonb;
  total bigint;
  batches integer;
  failure text;
  cancelled boolean := false;
  lease constant interval := interval '60 seconds';
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
  if skipped_because is null
     and not maintenance.take_run_lease('database', pg_backend_pid(), lease) then
    select * into holder from maintenance.run_lease_holder();
    skipped_because := 'another maintenance run is in progress'
      || coalesce(format(' (host %s, started %s UTC)', holder.host,
                         to_char(holder.started_at at time zone 'UTC', 'YYYY-MM-DD HH24:MI:SS')),
                  '');
  end if;
  if skipped_because is not null then
    insert into maintenance.runs (command, host, version, thresholds, status, skipped, finished_at)
    values ('run_maintenance_cleanup', 'database', 'sql', run_thresholds, 'skipped',
            skipped_because, now())
    returning id into ledger_id;
    summary := jsonb_build_object('runId', ledger_id, 'skipped', skipped_because);
    return;
  end if;

  -- The lease was taken in this transaction: if anything fails before the commit, it was not.
  perform maintenance.mark_abandoned_runs();
  insert into maintenance.runs (command, host, version, thresholds)
  values ('run_maintenance_cleanup', 'database', 'sql', run_thresholds)
  returning id into ledger_id;
  perform maintenance.attach_run_lease(ledger_id);
  commit;

  <<tasks>>
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
    position := null;
    loop
      begin
        -- Renewed at the start (the row stays locked for the batch) and at the end of each batch.
        if not maintenance.renew_run_lease(ledger_id, lease) then
          raise exception 'the run lease lapsed and another run took it over'
            using errcode = 'lock_not_available';
        end if;
        if task = 'stuck' then
          select s.rows, s.next_position into n, position
            from maintenance.mark_stuck_runs_step(cutoff, threshold, batch_size) as s;
        elsif task = 'temp' then
          select s.rows, s.next_position into n, position
            from maintenance.purge_temp_uploads_step(cutoff, batch_size, position, ledger_id) as s;
        elsif task = 'compact' then
          select s.rows, s.next_position into n, position
            from maintenance.compact_import_jobs_step(cutoff, batch_size, position) as s;
        else
          select s.rows, s.next_position into n, position
            from maintenance.purge_raw_items_step(cutoff, batch_size, position) as s;
        end if;
        perform maintenance.renew_run_lease(ledger_id, lease);
        batches := batches + 1;
        total := total + n;
      exception
        when query_canceled then  -- a cancel or the CALL's own timeout ends the whole run
          cancelled := true;
          failure := 'canceling statement: the batch in flight rolled back';
        when others then
          failure := sqlerrm;
      end;
      commit;
      perform pg_catalog.set_config('search_path', 'pg_catalog, pg_temp', true);
      perform maintenance.set_lock_timeout(lock_timeout);
      exit tasks when cancelled;
      exit when failure is not null or position is null;
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

  if cancelled then
    task_results := task_results || jsonb_build_object(
      'task', task, 'status', 'interrupted', 'rows', total, 'batches', batches,
      'durationMs', floor(extract(epoch from clock_timestamp() - task_started) * 1000)::bigint,
      'cutoff', maintenance.json_time(cutoff), 'error', failure);
  end if;
  update maintenance.runs
     set status = case when cancelled then 'interrupted'
                       when jsonb_array_length(task_errors) = 0 then 'succeeded'
                       else 'failed' end,
         finished_at = now(), tasks = task_results, errors = task_errors
   where id = ledger_id;
  perform maintenance.prune_runs(history_retention);
  perform maintenance.release_run_lease(ledger_id);
  commit;
  if cancelled then
    raise exception 'canceling statement due to user request or statement timeout'
      using errcode = 'query_canceled',
            detail = 'maintenance run ' || ledger_id || ' was interrupted; its lease is released';
  end if;
  summary := jsonb_build_object('runId', ledger_id, 'tasks', task_results, 'errors', task_errors);
end
$$;
