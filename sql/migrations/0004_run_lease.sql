-- One run at a time through any pooler: a lease row replaces the session-level advisory lock,
-- which PgBouncer in transaction mode cannot keep (each transaction may run on another server
-- session, so the lock is taken on one and released, or leaked, on another).
--
-- How the lease works (README, "One run at a time, crashes and faults"):
-- * A run takes the lease in one short transaction, only when it has expired, with SKIP LOCKED: a
--   competitor never waits, it sees the row taken or locked and exits 0 naming the holder.
-- * The holder renews it inside every batch's own transaction, at its start (which locks the row
--   for the whole batch and fails if another run took the lease over) and at its end (expiry =
--   commit time + the lease). While a batch runs the row is locked, so the lease only has to cover
--   the gap between two batches, never a batch itself: a batch may take all of statement_timeout.
-- * The run releases the lease at its end. A killed run's lease lapses: the next run is blocked
--   at most the lease (60 s by default) after the last commit, or until the killed run's last
--   statement ends (statement_timeout, 60 s by default), whichever is later.
-- * A ledger row is abandoned when its heartbeat (runs.expires_at) has lapsed and its run is not
--   inside a batch: no backend pid is involved, so this works through a pooler too.

create table maintenance.run_lease (
  singleton  boolean primary key default true check (singleton),
  run_id     bigint,                        -- the ledger row of the holder (maintenance.runs.id)
  host       text,
  pid        integer,
  started_at timestamptz,
  renewed_at timestamptz,
  expires_at timestamptz not null default '-infinity'
);
insert into maintenance.run_lease default values;

-- When the run must show a sign of life again, or be taken for dead. Null for rows written before
-- this migration, which keep the old test by backend pid.
alter table maintenance.runs add column expires_at timestamptz;

-- Takes the lease when it is free (expired or released), never waiting on a competitor.
create function maintenance.take_run_lease(p_host text, p_pid integer, p_lease interval)
returns boolean
language sql volatile set search_path = pg_catalog, pg_temp
as $$
  with free as (
    select singleton, clock_timestamp() as moment from maintenance.run_lease
    where expires_at <= clock_timestamp()
    for update skip locked
  ), taken as (
    update maintenance.run_lease l
       set run_id = null, host = p_host, pid = p_pid, started_at = now(),
           renewed_at = free.moment, expires_at = free.moment + p_lease
      from free
     where l.singleton = free.singleton
    returning 1
  )
  select count(*) = 1 from taken
$$;

-- Names the ledger row of the run that just took the lease (same transaction as the take).
create function maintenance.attach_run_lease(p_run_id bigint) returns void
language sql volatile set search_path = pg_catalog, pg_temp
as $$
  update maintenance.run_lease set run_id = p_run_id where singleton;
  update maintenance.runs r set expires_at = l.expires_at
    from maintenance.run_lease l where r.id = p_run_id;
$$;

-- Extends the lease of this run from now; false when the run no longer holds it (it lapsed and
-- another run took it over), so that the caller's batch rolls back instead of working unguarded.
create function maintenance.renew_run_lease(p_run_id bigint, p_lease interval) returns boolean
language sql volatile set search_path = pg_catalog, pg_temp
as $$
  with renewed as (
    update maintenance.run_lease l
       set renewed_at = c.moment, expires_at = c.moment + p_lease
      from (select clock_timestamp() as moment) as c
     where l.singleton and l.run_id = p_run_id
    returning l.expires_at
  ), beat as (
    update maintenance.runs r set expires_at = renewed.expires_at
      from renewed where r.id = p_run_id
    returning 1
  )
  select count(*) = 1 from renewed
$$;

-- Frees the lease at the end of a run (only the holder's own).
create function maintenance.release_run_lease(p_run_id bigint) returns boolean
language sql volatile set search_path = pg_catalog, pg_temp
as $$
  with released as (
    update maintenance.run_lease set expires_at = clock_timestamp()
     where singleton and run_id = p_run_id and expires_at > clock_timestamp()
    returning 1
  )
  select count(*) = 1 from released
$$;

-- A sign of life of a run that holds no lease (a dry run).
create function maintenance.touch_run(p_run_id bigint, p_lease interval) returns void
language sql volatile set search_path = pg_catalog, pg_temp
as $$
  update maintenance.runs set expires_at = clock_timestamp() + p_lease
   where id = p_run_id and status = 'running';
$$;

-- Whether this run holds the lease and is inside a batch now: its batch transaction has updated
-- the lease row and not yet ended, so the lease's committed expiry may lag behind.
create function maintenance.run_in_batch(p_run_id bigint) returns boolean
language sql stable set search_path = pg_catalog, pg_temp
as $$
  select exists (select 1 from maintenance.run_lease where run_id = p_run_id)
     and exists (select 1 from pg_catalog.pg_locks
                 where relation = 'maintenance.run_lease'::regclass
                   and mode = 'RowExclusiveLock' and granted and pid <> pg_backend_pid())
$$;

-- Whether a ledger row left 'running' belongs to a run that is gone: its heartbeat lapsed and it
-- is not inside a batch. Rows from before the lease keep the old test by backend pid.
create function maintenance.is_abandoned(p_run maintenance.runs) returns boolean
language sql stable set search_path = pg_catalog, pg_temp
as $$
  select p_run.status = 'running'
     and case when p_run.expires_at is null
              then maintenance.is_abandoned(p_run.status, p_run.backend_pid, p_run.started_at)
              else p_run.expires_at <= clock_timestamp()
                   and not maintenance.run_in_batch(p_run.id) end
$$;

create or replace function maintenance.mark_abandoned_runs() returns integer
language sql volatile set search_path = pg_catalog, pg_temp
as $$
  with abandoned as (
    update maintenance.runs r
       set status = 'abandoned'
     where r.status = 'running' and maintenance.is_abandoned(r)
    returning 1
  )
  select count(*)::integer from abandoned
$$;

-- The holder of the lease, for the "another maintenance run is in progress" message.
create function maintenance.run_lease_holder()
returns table (run_id bigint, host text, started_at timestamptz, expires_at timestamptz,
               live boolean)
language sql stable set search_path = pg_catalog, pg_temp
as $$
  select l.run_id, l.host, l.started_at, l.expires_at,
         l.expires_at > clock_timestamp() or maintenance.run_in_batch(l.run_id)
  from maintenance.run_lease l
$$;

------------------------------------------------------------------------------------------------------
-- The pg_cron procedure takes the same lease as the CLI, for the CLI's default 60 s (its arguments
-- stay as they were). A cancel (or the CALL's statement_timeout) inside a batch records the run as
-- interrupted and releases the lease before the error reaches the caller.
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
    loop
      begin
        -- Renewed at the start (the row stays locked for the batch) and at the end of each batch.
        if not maintenance.renew_run_lease(ledger_id, lease) then
          raise exception 'the run lease lapsed and another run took it over'
            using errcode = 'lock_not_available';
        end if;
        n := case task
               when 'stuck' then maintenance.mark_stuck_runs_batch(cutoff, threshold, batch_size)
               when 'temp' then maintenance.purge_temp_uploads_batch(cutoff, batch_size)
               when 'compact' then maintenance.compact_import_jobs_batch(cutoff, batch_size)
               else maintenance.purge_raw_items_batch(cutoff, batch_size) end;
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
