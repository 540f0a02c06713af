-- The temp rule: temp uploads created before the cutoff are deleted, their files recorded in the
-- storage outbox by the statement that deletes them. A template for `maintctl migrate`
-- (maintctl/rules/temp.py; placeholders as in stuck.sql). With storage_path = false there are no
-- files: {has.storage_path} is false and the outbox gets nothing.

-- section: indexes
-- index: uploads created_at_id
on {uploads} ({created_at}, {key});

-- section: functions
create or replace function maintenance.count_old_temp_uploads(
  p_cutoff timestamptz, p_limit bigint, p_cutoffs jsonb)
returns bigint
language sql stable set search_path = pg_catalog, pg_temp
as $$
  select count(*) from (
    select from {uploads} t where {t.created_at} < p_cutoff limit p_limit) as found
$$;

-- Walks (created_at, key) in index order. The boundary is the batch_size-th eligible key after the
-- position (an index-only scan); the DELETE takes the plain key range up to it. Equal created_at
-- values are split by the key, so ties at a batch edge are neither skipped nor taken twice.
-- The key is of the column's own type ({type.key}, from the catalog). At the start the position's
-- key is null, and so is the boundary's when fewer than a batch are left: a row comparison stops
-- at its first unequal member, so (created_at, key) > ('-infinity', null) holds for every finite
-- created_at and (created_at, key) <= (cutoff, null) for every created_at before the cutoff.
--
-- Row locks: a step first runs without SKIP LOCKED (a plain range statement is several times
-- cheaper) but waits at most 50 ms for a lock; if the application holds a row of the range, that
-- attempt rolls back (a subtransaction) and the same range is done again skipping the locked rows,
-- which the next run picks up. The short wait is undone when the subtransaction ends either way.
--
-- The archive (docs/archive.md): with p_archive (not null), `removed` holds each deleted row whole,
-- from the DELETE's own RETURNING, action delete; null without it.
--
-- A row the DELETE cannot remove (a foreign key that restricts it, a trigger that raises, a check):
-- the whole step rolls back to its start and `blocked` says why, with the key of the range's last
-- row; maintenance.rule_step then splits the batch until that row is alone, and goes past it.
-- `unchanged` counts the rows of the range left without an error (see the end).
create or replace function maintenance.purge_temp_uploads_step(
  p_cutoff timestamptz, p_threshold interval, p_batch_size integer, p_position jsonb,
  p_run_id bigint, p_cutoffs jsonb, p_archive text[] default null,
  out rows integer, out next_position jsonb, out removed jsonb, out blocked jsonb,
  out unchanged integer)
language plpgsql volatile set search_path = {search_path}
as $$
declare
  after_at timestamptz := coalesce((p_position ->> 'createdAt')::timestamptz, '-infinity');
  after_id {type.key} := (p_position ->> 'id')::{type.key};  -- null at the start
  upto_at timestamptz;
  upto_id {type.key};
  more boolean := false;
  configured_lock_timeout text := current_setting('lock_timeout');
  file_keys text[];
  file_paths text[];
  file_sizes bigint[];
  failure text;
  failed_constraint text;
begin
  unchanged := 0;
  select {t.created_at}, {t.key} into upto_at, upto_id
    from {uploads} t
   where {t.created_at} < p_cutoff and ({t.created_at}, {t.key}) > (after_at, after_id)
   order by {t.created_at}, {t.key}
  offset p_batch_size - 1 limit 1;
  if upto_at is null then  -- fewer than a batch left: this step takes them all
    upto_at := p_cutoff;
    upto_id := null;
  else  -- exactly a batch left: this is the last step too
    more := exists (select 1 from {uploads} t
                     where {t.created_at} < p_cutoff
                       and ({t.created_at}, {t.key}) > (upto_at, upto_id));
  end if;
  begin
    begin
      perform set_config('lock_timeout', '50ms', true);
      if p_archive is null
         and (not {has.storage_path} or current_setting('transaction_isolation') <> 'read committed')
      then
        -- Nothing to archive: a plain range DELETE, counted by its row count (a RETURNING read back
        -- through a CTE cost a third of the batch: 1.09 M against 1.53 M rows/s). Its files, if any,
        -- are read first by a SELECT of the same range, which is the same rows only in one snapshot:
        -- so only under REPEATABLE READ (the CLI's batches, maintctl.tasks). There a row the
        -- application changed or deleted since the snapshot makes the DELETE fail (40001) and the
        -- batch roll back, never a file recorded for a row that stays or a row gone without its
        -- file; under READ COMMITTED (the pg_cron procedure) the RETURNING below records them.
        if {has.storage_path} then
          select array_agg({t.key}::text), array_agg({t.storage_path}::text),
                 array_agg({t.size_bytes}::bigint)
            into file_keys, file_paths, file_sizes
            from {uploads} t
           where {t.created_at} < p_cutoff
             and ({t.created_at}, {t.key}) > (after_at, after_id)
             and ({t.created_at}, {t.key}) <= (upto_at, upto_id);
        end if;
        delete from {uploads} t
         where {t.created_at} < p_cutoff
           and ({t.created_at}, {t.key}) > (after_at, after_id)
           and ({t.created_at}, {t.key}) <= (upto_at, upto_id);
        get diagnostics rows = row_count;
        if {has.storage_path} and rows > 0 then
          if rows <> cardinality(file_keys) then  -- cannot happen in one snapshot; never record less
            raise exception 'purge_temp_uploads_step: deleted % uploads but read % files',
              rows, cardinality(file_keys) using errcode = 'serialization_failure';
          end if;
          insert into maintenance.storage_outbox (run_id, upload_ids, storage_paths, size_bytes)
          values (p_run_id, file_keys, file_paths, file_sizes);
        end if;
      else
      with gone as (
        delete from {uploads} t
         where {t.created_at} < p_cutoff
           and ({t.created_at}, {t.key}) > (after_at, after_id)
           and ({t.created_at}, {t.key}) <= (upto_at, upto_id)
        returning {t.key} as key, {t.storage_path}::text as storage_path,
                  {t.size_bytes}::bigint as size_bytes,
                  case when p_archive is not null then to_jsonb(t) end as whole
      ), recorded as (
        insert into maintenance.storage_outbox (run_id, upload_ids, storage_paths, size_bytes)
        select p_run_id, array_agg(gone.key::text), array_agg(gone.storage_path), array_agg(gone.size_bytes)
          from gone where {has.storage_path} having count(*) > 0
        returning 1
      )
      select count(*), jsonb_agg(gone.whole) filter (where p_archive is not null) into rows, removed from gone;
      end if;
      perform set_config('lock_timeout', configured_lock_timeout, true);
    exception when lock_not_available then
      with picked as (
        select {t.key} as key from {uploads} t
         where {t.created_at} < p_cutoff
           and ({t.created_at}, {t.key}) > (after_at, after_id)
           and ({t.created_at}, {t.key}) <= (upto_at, upto_id)
        for update skip locked
      ), gone as (
        delete from {uploads} t using picked
         where {t.key} = picked.key and {t.created_at} < p_cutoff
        returning {t.key} as key, {t.storage_path}::text as storage_path,
                  {t.size_bytes}::bigint as size_bytes,
                  case when p_archive is not null then to_jsonb(t) end as whole
      ), recorded as (
        insert into maintenance.storage_outbox (run_id, upload_ids, storage_paths, size_bytes)
        select p_run_id, array_agg(gone.key::text), array_agg(gone.storage_path), array_agg(gone.size_bytes)
          from gone where {has.storage_path} having count(*) > 0
        returning 1
      )
      select count(*), jsonb_agg(gone.whole) filter (where p_archive is not null) into rows, removed from gone;
    end;
  exception when integrity_constraint_violation or raise_exception then
    get stacked diagnostics failure = message_text, failed_constraint = constraint_name;
    blocked := maintenance.blocked_row(upto_id::text, failure, failed_constraint);
  end;
  if blocked is null and (upto_id is null or rows < p_batch_size) then
    -- What the range still holds but the rows another session holds (skipped, the next run's):
    -- rows whose delete did not happen without an error, such as a BEFORE trigger that returned
    -- null (this transaction holds their locks). A full batch that deleted it all needs no look.
    select count(*) into unchanged from (
      select from {uploads} t
       where {t.created_at} < p_cutoff
         and ({t.created_at}, {t.key}) > (after_at, after_id)
         and ({t.created_at}, {t.key}) <= (upto_at, upto_id)
         for update skip locked) as still;
  end if;
  removed := maintenance.archive_document(p_archive, 'delete', removed);
  next_position := case when more then jsonb_build_object('createdAt', upto_at, 'id', upto_id::text) end;
end
$$;
