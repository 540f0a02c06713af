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
-- interrupted and releases the lease before the error reaches the caller. It is defined once, with
-- the batch engine that it steps with, in 0006_batch_engine.sql (both migrations apply together).
