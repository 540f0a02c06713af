-- The stuck rule: runs in a running status with no sign of life since the cutoff become failed.
-- A template, filled in by `maintctl migrate` from the rule's definition (maintctl/rules/stuck.py)
-- and the policy: every {placeholder} is an identifier (quoted by psycopg.sql) or a literal of the
-- policy; {r.name} is a column of the runs table qualified by its alias r. {search_path} is the
-- steps' (pg_catalog, the application schema, pg_temp): the application's triggers fire in them.

-- section: indexes
-- index: runs processing
on {runs} (({last_seen})) where {status_column} in ({running});

-- section: functions
create or replace function maintenance.count_stuck_runs(
  p_cutoff timestamptz, p_limit bigint, p_cutoffs jsonb)
returns bigint
language sql stable set search_path = pg_catalog, pg_temp
as $$
  select count(*) from (
    select from {runs} r
    where {r.status_column} in ({running}) and {r.last_seen} < p_cutoff
    limit p_limit) as found
$$;

-- Few rows, so no walk: a batch takes the next batch_size eligible runs, skipping those their worker
-- holds, and its UPDATE re-checks status and cutoff on the row it locks, so a run its worker
-- finished or heartbeated meanwhile is left alone.
--
-- The archive (docs/archive.md): with p_archive (the columns whose old values it keeps, the key
-- among them), `removed` holds the rows' previous values of those columns (read under the batch's
-- FOR UPDATE, so they are the ones the UPDATE overwrote), action mark; null without it.
create or replace function maintenance.mark_stuck_runs_step(
  p_cutoff timestamptz, p_threshold interval, p_batch_size integer, p_position jsonb,
  p_run_id bigint, p_cutoffs jsonb, p_archive text[] default null,
  out rows integer, out next_position jsonb, out removed jsonb)
language plpgsql volatile set search_path = {search_path}
as $$
begin
  with picked as (
    select {r.key} as key,
           case when p_archive is not null then maintenance.archived_columns(to_jsonb(r), p_archive)
           end as old
      from {runs} r
    where {r.status_column} in ({running}) and {r.last_seen} < p_cutoff
    order by {r.key}
    limit p_batch_size
    for update skip locked
  ), marked as (
    update {runs} r
       set {status_column} = {failed},
           {finished_at} = {now.finished_at},
           {error_column} = format('Timed out: no sign of life for more than %s (maintctl stuck_after)',
                                   maintenance.duration_text(p_threshold))
      from picked
     where {r.key} = picked.key
       and {r.status_column} in ({running})
       and {r.last_seen} < p_cutoff
    returning picked.old
  )
  select count(*), jsonb_agg(marked.old) filter (where p_archive is not null) into rows, removed from marked;
  removed := maintenance.archive_document(p_archive, 'mark', removed);
  next_position := case when rows >= p_batch_size then jsonb_build_object('more', true) end;
end
$$;
