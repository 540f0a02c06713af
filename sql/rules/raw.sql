-- The raw rule: the raw items of runs that failed before the cutoff are deleted; the runs stay. The
-- runs table, its key and status column are those of the stuck rule. A template for
-- `maintctl migrate` (maintctl/rules/raw.py; placeholders as in stuck.sql).

-- section: indexes
-- index: runs failed
on {runs} (({run_ended_at})) where {run_status} = {failed};
-- index: items run_id_id
on {items} ({run_column}, {key});

-- section: functions
-- Through the failed runs (their partial index), then each run's items (the (run, key) index). The
-- runs are looked up on their own (materialized): under a LIMIT the planner would rather read
-- every run, hoping to stop early, which with nothing to count reads them all.
create or replace function maintenance.count_old_raw_items(
  p_cutoff timestamptz, p_limit bigint, p_cutoffs jsonb)
returns bigint
language sql stable set search_path = pg_catalog, pg_temp
as $$
  with failed as materialized (
    select {r.run_key} as key from {runs} r
    where {r.run_status} = {failed} and {r.run_ended_at} < p_cutoff
  )
  select count(*) from (
    select from failed join {items} i on {i.run_column} = failed.key
    limit p_limit) as found
$$;

-- Walks the eligible failed runs in key order, and the items of each through (run, key), run after
-- run until the batch is full. Each run is share-locked (skipping one a worker holds) so that it
-- cannot be re-queued while its items go. With p_archive, `removed` holds each deleted item whole
-- (action delete): each run's rows are appended to an array in place (a growing jsonb would be
-- copied at each run of a batch that spans thousands of small runs) and joined once at the end.
--
-- An item the DELETE cannot remove (a foreign key, a trigger that raises): the step rolls back to
-- its start and `blocked` says why, with the key and position of the last item it tried;
-- maintenance.rule_step splits the batch until that item is alone, and goes past it. Items left
-- without an error: `unchanged` (see the end).
create or replace function maintenance.purge_raw_items_step(
  p_cutoff timestamptz, p_threshold interval, p_batch_size integer, p_position jsonb,
  p_run_id bigint, p_cutoffs jsonb, p_archive text[] default null,
  out rows integer, out next_position jsonb, out removed jsonb, out blocked jsonb,
  out unchanged integer)
language plpgsql volatile set search_path = {search_path}
as $$
declare
  -- The run in progress and its last item deleted, each in its column's own type ({type.run_key},
  -- {type.key}); null at the start. past_run: that run is done, the walk goes on after it.
  from_run {type.run_key} := (p_position ->> 'runId')::{type.run_key};
  after_id {type.key} := (p_position ->> 'id')::{type.key};
  past_run boolean := false;
  run {type.run_key};
  upto_id {type.key};
  deleted integer;
  deleted_rows jsonb;
  parts jsonb[] := array[]::jsonb[];
  visited {type.run_key}[] := array[]::{type.run_key}[];  -- the runs whose items this step deleted
  start_run {type.run_key} := from_run;
  start_after {type.key} := after_id;
  failure text;
  failed_constraint text;
begin
  rows := 0;
  unchanged := 0;
  next_position := null;
  begin
    loop
      -- The lateral probe asks the (run, key) index of each candidate run whether items are left:
      -- its LIMIT keeps the planner from joining every item, its ORDER BY from guessing that a
      -- sequential scan finds one soon. Two statements, so that after the first run the walk starts
      -- at from_run by an index condition: an OR with a test of from_run for null would make every probe
      -- start again at the first failed run, each step reading every run the walk has passed.
      if from_run is null then
        select {r.run_key} into run
          from {runs} r
         cross join lateral (select {i.key} from {items} i
                              where {i.run_column} = {r.run_key}
                              order by {i.key}
                              limit 1) as has_items
         where {r.run_status} = {failed} and {r.run_ended_at} < p_cutoff
         order by {r.run_key}
         limit 1
         for share of r skip locked;
      else
        select {r.run_key} into run
          from {runs} r
         cross join lateral (select {i.key} from {items} i
                              where {i.run_column} = {r.run_key}
                                and ({r.run_key} <> from_run or after_id is null
                                     or {i.key} > after_id)
                              order by {i.key}
                              limit 1) as has_items
         where {r.run_status} = {failed} and {r.run_ended_at} < p_cutoff
           and {r.run_key} >= from_run and ({r.run_key} > from_run or not past_run)
         order by {r.run_key}
         limit 1
         for share of r skip locked;
      end if;
      exit when run is null;  -- no eligible run has items left: the walk is done
      if run is distinct from from_run then
        after_id := null;
      end if;
      upto_id := null;
      -- Two statements each, so that each is a plain range of the (run, key) index.
      if after_id is null then
        select {i.key} into upto_id
          from {items} i
         where {i.run_column} = run
         order by {i.key}
        offset p_batch_size - rows - 1 limit 1;
        with gone as (
          delete from {items} i
           where {i.run_column} = run and (upto_id is null or {i.key} <= upto_id)
          returning case when p_archive is not null then to_jsonb(i) end as whole
        )
        select count(*), jsonb_agg(gone.whole) filter (where p_archive is not null)
          into deleted, deleted_rows
          from gone;
      else
        select {i.key} into upto_id
          from {items} i
         where {i.run_column} = run and {i.key} > after_id
         order by {i.key}
        offset p_batch_size - rows - 1 limit 1;
        with gone as (
          delete from {items} i
           where {i.run_column} = run and {i.key} > after_id
             and (upto_id is null or {i.key} <= upto_id)
          returning case when p_archive is not null then to_jsonb(i) end as whole
        )
        select count(*), jsonb_agg(gone.whole) filter (where p_archive is not null)
          into deleted, deleted_rows
          from gone;
      end if;
      rows := rows + deleted;
      visited := visited || run;
      if deleted_rows is not null then
        parts := parts || deleted_rows;
      end if;
      if upto_id is not null then  -- the batch is full; this run may have more
        next_position := jsonb_build_object('runId', run::text, 'id', upto_id::text);
        exit;
      end if;
      from_run := run;
      past_run := true;
      after_id := null;
    end loop;
  exception when integrity_constraint_violation or raise_exception then
    get stacked diagnostics failure = message_text, failed_constraint = constraint_name;
    parts := array[]::jsonb[];
    blocked := maintenance.blocked_row(upto_id::text, failure, failed_constraint);
    next_position := jsonb_build_object('runId', run::text, 'id', upto_id::text);
  end;
  if blocked is null and cardinality(visited) > 0 then
    -- What the ranges it deleted still hold (each visited run's items, after the position the step
    -- began at in its first run, up to the last item the batch took in its last): items whose
    -- delete did not happen without an error, such as a BEFORE trigger that returned null.
    select count(*) into unchanged
      from {items} i
     where {i.run_column} = any (visited)
       and ({i.run_column} <> start_run or start_after is null or {i.key} > start_after)
       and ({i.run_column} <> run or upto_id is null or {i.key} <= upto_id);
  end if;
  if p_archive is not null then
    removed := maintenance.archive_document(p_archive, 'delete',
      (select jsonb_agg(e.value order by p.n, e.n)
         from unnest(parts) with ordinality as p (batch, n)
        cross join lateral jsonb_array_elements(p.batch) with ordinality as e (value, n)));
  end if;
end
$$;
