-- The compact rule: finished jobs that ended before the cutoff lose the columns it clears, and
-- their summary column is replaced by a summary (maintenance.import_job_summary, 0002_rules.sql);
-- compacted_at marks them. A template for `maintctl migrate` (maintctl/rules/compact.py;
-- placeholders as in stuck.sql). The summary is given the first two cleared columns, {j.clear[0]} as
-- the payload and {j.clear[1]} as the log (null where the policy clears fewer); {set_null.clear}
-- sets each cleared column to null.

-- section: columns
alter table {jobs} add column if not exists {compacted_at} timestamptz;

-- section: indexes
-- index: jobs compactable_key
on {jobs} (({ended_at}), {key})
  where {status_column} in ({finished}) and {compacted_at} is null;

-- section: functions
-- Always through the rule's partial index, which holds only the jobs still to compact: right after
-- a run compacted a backlog, before autovacuum analyzes the table again, the statistics still show
-- that backlog and the planner would read the whole table instead.
create or replace function maintenance.count_old_import_jobs(
  p_cutoff timestamptz, p_limit bigint, p_cutoffs jsonb)
returns bigint
language sql stable set search_path = pg_catalog, pg_temp set enable_seqscan = off
as $$
  select count(*) from (
    select from {jobs} j
    where {j.status_column} in ({finished})
      and {j.compacted_at} is null
      and {j.ended_at} < p_cutoff
      and {j.ended_at} < coalesce((p_cutoffs ->> {j.status_column}::text)::timestamptz, p_cutoff)
    limit p_limit) as found
$$;

-- The same walk as temp's, over (ended_at, key) in the partial index. With a threshold per status,
-- p_cutoffs holds each status's cutoff and p_cutoff the latest of them, which bounds the walk.
--
-- The archive (docs/archive.md): with p_archive (the columns whose old values it keeps, the key
-- among them), the range is locked first and updated through the lock, and `removed` holds each
-- row's previous values of those columns (action compact; UPDATE ... RETURNING alone sees only
-- the new ones); without it, the plain range UPDATE.
--
-- A job the UPDATE cannot change (a trigger that raises, a check): the step rolls back to its start
-- and `blocked` says why, with the key of the range's last job; maintenance.rule_step splits the
-- batch until that job is alone, and goes past it. Jobs left without an error: `unchanged`, as
-- temp's.
create or replace function maintenance.compact_import_jobs_step(
  p_cutoff timestamptz, p_threshold interval, p_batch_size integer, p_position jsonb,
  p_run_id bigint, p_cutoffs jsonb, p_archive text[] default null,
  out rows integer, out next_position jsonb, out removed jsonb, out blocked jsonb,
  out unchanged integer)
language plpgsql volatile set search_path = {search_path}
as $$
declare
  after_at timestamptz := coalesce((p_position ->> 'endedAt')::timestamptz, '-infinity');
  after_id {type.key} := (p_position ->> 'id')::{type.key};  -- null at the start
  upto_at timestamptz;
  upto_id {type.key};
  more boolean := false;
  configured_lock_timeout text := current_setting('lock_timeout');
  failure text;
  failed_constraint text;
begin
  unchanged := 0;
  select {j.ended_at}, {j.key} into upto_at, upto_id
    from {jobs} j
   where {j.status_column} in ({finished}) and {j.compacted_at} is null
     and {j.ended_at} < p_cutoff
      and {j.ended_at} < coalesce((p_cutoffs ->> {j.status_column}::text)::timestamptz, p_cutoff)
     and ({j.ended_at}, {j.key}) > (after_at, after_id)
   order by {j.ended_at}, {j.key}
  offset p_batch_size - 1 limit 1;
  if upto_at is null then
    upto_at := p_cutoff;
    upto_id := null;
  else
    more := exists (select 1 from {jobs} j
                     where {j.status_column} in ({finished}) and {j.compacted_at} is null
                       and {j.ended_at} < p_cutoff
      and {j.ended_at} < coalesce((p_cutoffs ->> {j.status_column}::text)::timestamptz, p_cutoff)
                       and ({j.ended_at}, {j.key}) > (upto_at, upto_id));
  end if;
  begin
    if p_archive is null then  -- the plain range UPDATE
      begin
        perform set_config('lock_timeout', '50ms', true);
        update {jobs} j
           set {summary_column} = maintenance.import_job_summary(
                 {j.status_column}::text, {j.summary_column}, to_jsonb({j.clear[0]}), {j.clear[1]}::text),
               {set_null.clear},
               {compacted_at} = now()
         where {j.status_column} in ({finished}) and {j.compacted_at} is null
           and {j.ended_at} < p_cutoff
          and {j.ended_at} < coalesce((p_cutoffs ->> {j.status_column}::text)::timestamptz, p_cutoff)
           and ({j.ended_at}, {j.key}) > (after_at, after_id)
           and ({j.ended_at}, {j.key}) <= (upto_at, upto_id);
        get diagnostics rows = row_count;
        perform set_config('lock_timeout', configured_lock_timeout, true);
      exception when lock_not_available then
        with picked as (
          select {j.key} as key from {jobs} j
           where {j.status_column} in ({finished}) and {j.compacted_at} is null
             and {j.ended_at} < p_cutoff
          and {j.ended_at} < coalesce((p_cutoffs ->> {j.status_column}::text)::timestamptz, p_cutoff)
             and ({j.ended_at}, {j.key}) > (after_at, after_id)
             and ({j.ended_at}, {j.key}) <= (upto_at, upto_id)
          for update skip locked
        )
        update {jobs} j
           set {summary_column} = maintenance.import_job_summary(
                 {j.status_column}::text, {j.summary_column}, to_jsonb({j.clear[0]}), {j.clear[1]}::text),
               {set_null.clear},
               {compacted_at} = now()
          from picked
         where {j.key} = picked.key
           and {j.status_column} in ({finished}) and {j.compacted_at} is null
           and {j.ended_at} < p_cutoff
          and {j.ended_at} < coalesce((p_cutoffs ->> {j.status_column}::text)::timestamptz, p_cutoff);
        get diagnostics rows = row_count;
      end;
    else
      -- With the archive: the range is locked first (the values read are the latest committed), then
      -- updated through the lock; RETURNING pairs each row with the values it had.
      begin
        perform set_config('lock_timeout', '50ms', true);
        with picked as (
          select {j.key} as key, maintenance.archived_columns(to_jsonb(j), p_archive) as old
            from {jobs} j
           where {j.status_column} in ({finished}) and {j.compacted_at} is null
             and {j.ended_at} < p_cutoff
          and {j.ended_at} < coalesce((p_cutoffs ->> {j.status_column}::text)::timestamptz, p_cutoff)
             and ({j.ended_at}, {j.key}) > (after_at, after_id)
             and ({j.ended_at}, {j.key}) <= (upto_at, upto_id)
          for update
        ), changed as (
          update {jobs} j
             set {summary_column} = maintenance.import_job_summary(
                   {j.status_column}::text, {j.summary_column}, to_jsonb({j.clear[0]}), {j.clear[1]}::text),
                 {set_null.clear},
                 {compacted_at} = now()
            from picked
           where {j.key} = picked.key
          returning picked.old
        )
        select count(*), jsonb_agg(changed.old) into rows, removed from changed;
        perform set_config('lock_timeout', configured_lock_timeout, true);
      exception when lock_not_available then
        with picked as (
          select {j.key} as key, maintenance.archived_columns(to_jsonb(j), p_archive) as old
            from {jobs} j
           where {j.status_column} in ({finished}) and {j.compacted_at} is null
             and {j.ended_at} < p_cutoff
          and {j.ended_at} < coalesce((p_cutoffs ->> {j.status_column}::text)::timestamptz, p_cutoff)
             and ({j.ended_at}, {j.key}) > (after_at, after_id)
             and ({j.ended_at}, {j.key}) <= (upto_at, upto_id)
          for update skip locked
        ), changed as (
          update {jobs} j
             set {summary_column} = maintenance.import_job_summary(
                   {j.status_column}::text, {j.summary_column}, to_jsonb({j.clear[0]}), {j.clear[1]}::text),
                 {set_null.clear},
                 {compacted_at} = now()
            from picked
           where {j.key} = picked.key
          returning picked.old
        )
        select count(*), jsonb_agg(changed.old) into rows, removed from changed;
      end;
      removed := maintenance.archive_document(p_archive, 'compact', removed);
    end if;
  exception when integrity_constraint_violation or raise_exception then
    get stacked diagnostics failure = message_text, failed_constraint = constraint_name;
    blocked := maintenance.blocked_row(upto_id::text, failure, failed_constraint);
  end;
  if blocked is null and (upto_id is null or rows < p_batch_size) then
    -- What the range still holds but the rows another session holds (skipped, the next run's):
    -- rows whose change did not happen without an error, such as a BEFORE trigger that returned
    -- null (this transaction holds their locks). A full batch that compacted it all needs no look.
    select count(*) into unchanged from (
      select from {jobs} j
       where {j.status_column} in ({finished}) and {j.compacted_at} is null
         and {j.ended_at} < p_cutoff
        and {j.ended_at} < coalesce((p_cutoffs ->> {j.status_column}::text)::timestamptz, p_cutoff)
         and ({j.ended_at}, {j.key}) > (after_at, after_id)
         and ({j.ended_at}, {j.key}) <= (upto_at, upto_id)
         for update skip locked) as still;
  end if;
  next_position := case when more then jsonb_build_object('endedAt', upto_at, 'id', upto_id::text) end;
end
$$;

-- Compacts every eligible job, step after step, in the caller's transaction (for pg_cron users).
create or replace function maintenance.compact_old_import_jobs(
  compact_after interval default {default_older_than}, batch_size integer default 5000,
  force boolean default false) returns bigint
language plpgsql volatile set search_path = {search_path}
as $$
declare
  cutoff timestamptz := now() - maintenance.absolute(compact_after);
  total bigint := 0;
  step record;
  position jsonb;
begin
  perform maintenance.check_cleanup_arguments(array[compact_after], batch_size, force);
  loop
    select * into step
      from maintenance.rule_step('compact', cutoff, compact_after, batch_size, position, null, null);
    if step.blocked is not null then  -- in the caller's transaction: all or nothing, as before
      raise exception 'compact_old_import_jobs: %', maintenance.blocked_sentence(step.blocked)
        using errcode = 'P0001';
    end if;
    total := total + step.rows;
    position := step.next_position;
    exit when position is null;
  end loop;
  return total;
end
$$;
