-- A [[purge]] rule of the policy file: rows of any other table whose time column is before the
-- cutoff, and that its optional `where` condition selects, are deleted. A template for
-- `maintctl migrate` (maintctl/rules/purge.py), filled in once per [[purge]] entry; {where} is the
-- entry's condition, checked first (maintctl.rules.purge.check_where), or true.

-- section: indexes
-- index: target purge_{rule}
on {target} ({time_column}, {key}) where {where};

-- section: functions
create or replace function {count_function}(p_cutoff timestamptz, p_limit bigint, p_cutoffs jsonb)
returns bigint
language sql stable set search_path = pg_catalog, pg_temp
as $$
  select count(*) from (
    select from {target} t where {t.time_column} < p_cutoff and {t.where} limit p_limit) as found
$$;

-- The walk of temp's step over (time column, key) in the rule's partial index, without an outbox;
-- with p_archive, `removed` holds each deleted row whole, as temp's does.
-- A row the DELETE cannot remove: `blocked`; rows left without an error: `unchanged`, as temp's.
create or replace function {step_function}(
  p_cutoff timestamptz, p_threshold interval, p_batch_size integer, p_position jsonb,
  p_run_id bigint, p_cutoffs jsonb, p_archive text[] default null,
  out rows integer, out next_position jsonb, out removed jsonb, out blocked jsonb,
  out unchanged integer)
language plpgsql volatile set search_path = {search_path}
as $$
declare
  after_at timestamptz := coalesce((p_position ->> 'at')::timestamptz, '-infinity');
  after_id {type.key} := (p_position ->> 'id')::{type.key};  -- null at the start
  upto_at timestamptz;
  upto_id {type.key};
  more boolean := false;
  configured_lock_timeout text := current_setting('lock_timeout');
  failure text;
  failed_constraint text;
begin
  unchanged := 0;
  select {t.time_column}, {t.key} into upto_at, upto_id
    from {target} t
   where {t.time_column} < p_cutoff and {t.where}
     and ({t.time_column}, {t.key}) > (after_at, after_id)
   order by {t.time_column}, {t.key}
  offset p_batch_size - 1 limit 1;
  if upto_at is null then
    upto_at := p_cutoff;
    upto_id := null;
  else
    more := exists (select 1 from {target} t
                     where {t.time_column} < p_cutoff and {t.where}
                       and ({t.time_column}, {t.key}) > (upto_at, upto_id));
  end if;
  begin
    begin
      perform set_config('lock_timeout', '50ms', true);
      with gone as (
        delete from {target} t
         where {t.time_column} < p_cutoff and {t.where}
           and ({t.time_column}, {t.key}) > (after_at, after_id)
           and ({t.time_column}, {t.key}) <= (upto_at, upto_id)
        returning case when p_archive is not null then to_jsonb(t) end as whole
      )
      select count(*), jsonb_agg(gone.whole) filter (where p_archive is not null) into rows, removed from gone;
      perform set_config('lock_timeout', configured_lock_timeout, true);
    exception when lock_not_available then
      with picked as (
        select {t.key} as maintctl_key from {target} t
         where {t.time_column} < p_cutoff and {t.where}
           and ({t.time_column}, {t.key}) > (after_at, after_id)
           and ({t.time_column}, {t.key}) <= (upto_at, upto_id)
        for update skip locked
      ), gone as (
        delete from {target} t using picked
         where {t.key} = picked.maintctl_key and {t.time_column} < p_cutoff and {t.where}
        returning case when p_archive is not null then to_jsonb(t) end as whole
      )
      select count(*), jsonb_agg(gone.whole) filter (where p_archive is not null) into rows, removed from gone;
    end;
  exception when integrity_constraint_violation or raise_exception then
    get stacked diagnostics failure = message_text, failed_constraint = constraint_name;
    blocked := maintenance.blocked_row(upto_id::text, failure, failed_constraint);
  end;
  if blocked is null and (upto_id is null or rows < p_batch_size) then
    -- What the range still holds but the rows another session holds (skipped, the next run's):
    -- rows whose change did not happen without an error, such as a BEFORE trigger that returned
    -- null (this transaction holds their locks). A full batch that changed it all needs no look.
    select count(*) into unchanged from (
      select from {target} t
       where {t.time_column} < p_cutoff and {t.where}
         and ({t.time_column}, {t.key}) > (after_at, after_id)
         and ({t.time_column}, {t.key}) <= (upto_at, upto_id)
         for update skip locked) as still;
  end if;
  removed := maintenance.archive_document(p_archive, 'delete', removed);
  next_position := case when more then jsonb_build_object('at', upto_at, 'id', upto_id::text) end;
end
$$;
