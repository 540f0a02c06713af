-- The archive's capture (README "Archive and restore"): each removing step takes `p_archive boolean`
-- and returns, besides `rows` and `next_position`, an OUT `removed jsonb`: null when p_archive is
-- false, else a jsonb object (table, action 'delete' or 'compact', rows: an array), filled from the
-- DML's own RETURNING. A purge returns each whole deleted row (to_jsonb of the row); a compaction
-- returns the key and the values it replaced (read under FOR UPDATE, so they are the values the
-- UPDATE overwrote). The client writes `removed` to the archive and makes it durable inside the
-- still-open batch transaction, and only then commits: a kill at any point leaves a row in the
-- table, in the archive, or in both, never in neither.
--
-- This is the only place the archive touches the step SQL: one parameter, one OUT column and one
-- aggregate per DML. 0006's signatures are dropped first (a new overload beside them would make
-- the 3- and 4-argument calls ambiguous); p_archive defaults to false, so the callers of 0006
-- (the *_batch wrappers, compact_old_import_jobs, the pg_cron procedure) resolve to these, by the
-- same positional arguments, and archive nothing. The stuck step removes no row, but it
-- overwrites status, finished_at and error_message: with p_archive it returns their previous
-- values (action "mark"), so that a restore can put a run back as it was.

drop function if exists maintenance.mark_stuck_runs_step(timestamptz, interval, integer);
drop function if exists maintenance.purge_temp_uploads_step(timestamptz, integer, jsonb, bigint);
drop function if exists maintenance.compact_import_jobs_step(timestamptz, integer, jsonb);
drop function if exists maintenance.purge_raw_items_step(timestamptz, integer, jsonb);

-- stuck: without the archive, 0002's batch function; with it, the same statement returning the
-- values it replaced (read under its FOR UPDATE, so they are the ones overwritten).
create function maintenance.mark_stuck_runs_step(
  p_cutoff timestamptz, p_threshold interval, p_batch_size integer,
  p_archive boolean default false,
  out rows integer, out next_position jsonb, out removed jsonb)
language plpgsql volatile set search_path = pg_catalog, pg_temp
as $$
begin
  if not p_archive then
    rows := maintenance.mark_stuck_runs_batch(p_cutoff, p_threshold, p_batch_size);
  else
    with picked as (
      select r.id, r.status, r.finished_at, r.error_message from {app}.import_runs r
      where r.status = 'processing' and coalesce(r.heartbeat_at, r.started_at, r.created_at) < p_cutoff
      order by r.id
      limit p_batch_size
      for update skip locked
    ), marked as (
      update {app}.import_runs r
         set status = 'failed',
             finished_at = now(),
             error_message = format('Timed out: no sign of life for more than %s (maintctl stuck_after)',
                                    maintenance.duration_text(p_threshold))
        from picked
       where r.id = picked.id
         and r.status = 'processing'
         and coalesce(r.heartbeat_at, r.started_at, r.created_at) < p_cutoff
      returning jsonb_build_object('id', picked.id, 'status', picked.status,
                                   'finished_at', picked.finished_at,
                                   'error_message', picked.error_message) as old
    )
    select count(*), jsonb_agg(marked.old) into rows, removed from marked;
    removed := jsonb_build_object('table', 'import_runs', 'action', 'mark',
                                  'rows', coalesce(removed, '[]'));
  end if;
  next_position := case when rows >= p_batch_size then jsonb_build_object('more', true) end;
end
$$;

create function maintenance.purge_temp_uploads_step(
  p_cutoff timestamptz, p_batch_size integer, p_position jsonb, p_run_id bigint,
  p_archive boolean default false,
  out rows integer, out next_position jsonb, out removed jsonb)
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
  if upto_at is null then
    upto_at := p_cutoff;
    upto_id := 0;
  else
    more := exists (select 1 from {app}.temp_uploads t
                     where t.created_at < p_cutoff and (t.created_at, t.id) > (upto_at, upto_id));
  end if;
  begin
    perform set_config('lock_timeout', '50ms', true);
    with gone as (
      delete from {app}.temp_uploads t
       where t.created_at < p_cutoff
         and (t.created_at, t.id) > (after_at, after_id) and (t.created_at, t.id) <= (upto_at, upto_id)
      returning t.id, t.storage_path, t.size_bytes, case when p_archive then to_jsonb(t) end as whole
    ), outboxed as (
      insert into maintenance.storage_outbox (run_id, upload_ids, storage_paths, size_bytes)
      select p_run_id, array_agg(gone.id), array_agg(gone.storage_path), array_agg(gone.size_bytes)
        from gone having count(*) > 0
    )
    select count(*), jsonb_agg(gone.whole) filter (where p_archive) into rows, removed from gone;
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
      returning t.id, t.storage_path, t.size_bytes, case when p_archive then to_jsonb(t) end as whole
    ), outboxed as (
      insert into maintenance.storage_outbox (run_id, upload_ids, storage_paths, size_bytes)
      select p_run_id, array_agg(gone.id), array_agg(gone.storage_path), array_agg(gone.size_bytes)
        from gone having count(*) > 0
    )
    select count(*), jsonb_agg(gone.whole) filter (where p_archive) into rows, removed from gone;
  end;
  removed := case when p_archive then jsonb_build_object(
    'table', 'temp_uploads', 'action', 'delete', 'rows', coalesce(removed, '[]')) end;
  next_position := case when more then jsonb_build_object('createdAt', upto_at, 'id', upto_id) end;
end
$$;

-- compact: the rows are locked and their old values read by the same statement that updates
-- them (UPDATE ... RETURNING only sees the new values).
create function maintenance.compact_import_jobs_step(
  p_cutoff timestamptz, p_batch_size integer, p_position jsonb,
  p_archive boolean default false,
  out rows integer, out next_position jsonb, out removed jsonb)
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
  if not p_archive then  -- 0006's plain UPDATE, unchanged
    begin
      perform set_config('lock_timeout', '50ms', true);
      update {app}.import_jobs j
         set result = maintenance.import_job_summary(j.status, j.result, j.payload, j.log),
             payload = null, log = null, compacted_at = now()
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
             payload = null, log = null, compacted_at = now()
        from picked
       where j.id = picked.id
         and j.status in ('completed', 'failed', 'cancelled') and j.compacted_at is null
         and coalesce(j.finished_at, j.created_at) < p_cutoff;
      get diagnostics rows = row_count;
    end;
    next_position := case when more then jsonb_build_object('endedAt', upto_at, 'id', upto_id) end;
    return;
  end if;
  -- With the archive: the range is locked first (the values read are the latest committed), then
  -- updated through the lock; RETURNING pairs each row with the values it had.
  begin
    perform set_config('lock_timeout', '50ms', true);
    with picked as (
      select j.id, j.payload, j.log, j.result, j.compacted_at from {app}.import_jobs j
       where j.status in ('completed', 'failed', 'cancelled') and j.compacted_at is null
         and coalesce(j.finished_at, j.created_at) < p_cutoff
         and (coalesce(j.finished_at, j.created_at), j.id) > (after_at, after_id)
         and (coalesce(j.finished_at, j.created_at), j.id) <= (upto_at, upto_id)
      for update
    ), changed as (
      update {app}.import_jobs j
         set result = maintenance.import_job_summary(j.status, j.result, j.payload, j.log),
             payload = null, log = null, compacted_at = now()
        from picked
       where j.id = picked.id
      returning jsonb_build_object('id', picked.id, 'payload', picked.payload, 'log', picked.log,
                                   'result', picked.result, 'compacted_at', picked.compacted_at) as old
    )
    select count(*), jsonb_agg(changed.old) into rows, removed from changed;
    perform set_config('lock_timeout', configured_lock_timeout, true);
  exception when lock_not_available then
    with picked as (
      select j.id, j.payload, j.log, j.result, j.compacted_at from {app}.import_jobs j
       where j.status in ('completed', 'failed', 'cancelled') and j.compacted_at is null
         and coalesce(j.finished_at, j.created_at) < p_cutoff
         and (coalesce(j.finished_at, j.created_at), j.id) > (after_at, after_id)
         and (coalesce(j.finished_at, j.created_at), j.id) <= (upto_at, upto_id)
      for update skip locked
    ), changed as (
      update {app}.import_jobs j
         set result = maintenance.import_job_summary(j.status, j.result, j.payload, j.log),
             payload = null, log = null, compacted_at = now()
        from picked
       where j.id = picked.id
      returning jsonb_build_object('id', picked.id, 'payload', picked.payload, 'log', picked.log,
                                   'result', picked.result, 'compacted_at', picked.compacted_at) as old
    )
    select count(*), jsonb_agg(changed.old) into rows, removed from changed;
  end;
  removed := jsonb_build_object('table', 'import_jobs', 'action', 'compact',
                                'rows', coalesce(removed, '[]'));
  next_position := case when more then jsonb_build_object('endedAt', upto_at, 'id', upto_id) end;
end
$$;

create function maintenance.purge_raw_items_step(
  p_cutoff timestamptz, p_batch_size integer, p_position jsonb,
  p_archive boolean default false,
  out rows integer, out next_position jsonb, out removed jsonb)
language plpgsql volatile set search_path = pg_catalog, pg_temp
as $$
declare
  from_run bigint := coalesce((p_position ->> 'runId')::bigint, 0);
  after_id bigint := coalesce((p_position ->> 'id')::bigint, 0);
  run bigint;
  upto_id bigint;
  deleted integer;
  deleted_rows jsonb;
  -- Each run's deleted rows, appended in place (a growing jsonb would be copied at each run of
  -- a batch that spans thousands of small runs), joined once at the end.
  parts jsonb[] := array[]::jsonb[];
begin
  rows := 0;
  next_position := null;
  loop
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
    exit when run is null;  -- no eligible run has items left: the walk is done
    if run > from_run then
      after_id := 0;
    end if;
    upto_id := null;
    select i.id into upto_id
      from {app}.raw_import_items i
     where i.run_id = run and i.id > after_id
     order by i.id
    offset p_batch_size - rows - 1 limit 1;
    with gone as (
      delete from {app}.raw_import_items i
       where i.run_id = run and i.id > after_id and (upto_id is null or i.id <= upto_id)
      returning case when p_archive then to_jsonb(i) end as whole
    )
    select count(*), jsonb_agg(gone.whole) filter (where p_archive) into deleted, deleted_rows
      from gone;
    rows := rows + deleted;
    if deleted_rows is not null then
      parts := parts || deleted_rows;
    end if;
    if upto_id is not null then  -- the batch is full; this run may have more
      next_position := jsonb_build_object('runId', run, 'id', upto_id);
      exit;
    end if;
    from_run := run + 1;
    after_id := 0;
  end loop;
  if p_archive then
    removed := jsonb_build_object('table', 'raw_import_items', 'action', 'delete', 'rows',
      coalesce((select jsonb_agg(e.value order by p.n, e.n)
                  from unnest(parts) with ordinality as p (batch, n)
                 cross join lateral jsonb_array_elements(p.batch) with ordinality as e (value, n)),
               '[]'::jsonb));
  end if;
end
$$;

-- A step's `removed` as the client stores it: the table, the action, the columns the rows carry,
-- and the rows as JSON lines in PostgreSQL's own text (a numeric keeps every digit, which a
-- round trip through the client's JSON numbers would not). Nulls when nothing is archived.
create or replace function maintenance.archive_lines(
  p_removed jsonb,
  out archive_table text, out archive_action text, out archive_columns text[],
  out archive_rows text)
language sql immutable set search_path = pg_catalog, pg_temp
as $$
  select p_removed ->> 'table', p_removed ->> 'action',
         array(select jsonb_object_keys(p_removed -> 'rows' -> 0)),
         (select string_agg(r.value::text, E'\n' order by r.n)
            from jsonb_array_elements(p_removed -> 'rows') with ordinality as r (value, n))
$$;
