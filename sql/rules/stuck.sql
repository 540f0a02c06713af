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

-- Few rows, so a plain walk in key order: a batch takes the next batch_size eligible runs after the
-- position, skipping those their worker holds, and its UPDATE re-checks status and cutoff on the row
-- it locks, so a run its worker finished or heartbeated meanwhile is left alone.
--
-- The archive (docs/archive.md): with p_archive (the columns whose old values it keeps, the key
-- among them), `removed` holds the rows' previous values of those columns (read under the batch's
-- FOR UPDATE, so they are the ones the UPDATE overwrote), action mark; null without it.
--
-- A run the UPDATE cannot mark (a trigger that raises, a check): the step rolls back to its start
-- and `blocked` says why, with the key of the batch's last run; maintenance.rule_step splits the
-- batch until that run is alone, and goes past it.
create or replace function maintenance.mark_stuck_runs_step(
  p_cutoff timestamptz, p_threshold interval, p_batch_size integer, p_position jsonb,
  p_run_id bigint, p_cutoffs jsonb, p_archive text[] default null,
  out rows integer, out next_position jsonb, out removed jsonb, out blocked jsonb,
  out unchanged integer)
language plpgsql volatile set search_path = {search_path}
as $$
declare
  after_id {type.key} := (p_position ->> 'id')::{type.key};  -- null at the start
  keys {type.key}[];
  old jsonb;  -- with p_archive, each locked run's values before the UPDATE, by its key
  failure text;
  failed_constraint text;
begin
  unchanged := 0;
  select array_agg(k.key order by k.key), jsonb_object_agg(k.key::text, k.old) into keys, old
    from (select {r.key} as key,
                 case when p_archive is not null
                      then maintenance.archived_columns(to_jsonb(r), p_archive) end as old
            from {runs} r
           where {r.status_column} in ({running}) and {r.last_seen} < p_cutoff
             and ({r.key} > after_id or after_id is null)
           order by {r.key}
           limit p_batch_size
             for update skip locked) as k;
  -- The runs are locked: none changed since it was read. One the UPDATE did not mark without an
  -- error (a BEFORE trigger that returned null) is `unchanged`, and is not archived.
  begin
    with marked as (
      update {runs} r
         set {status_column} = {failed},
             {finished_at} = {now.finished_at},
             {error_column} = format('Timed out: no sign of life for more than %s (maintctl stuck_after)',
                                     maintenance.duration_text(p_threshold))
       where {r.key} = any (keys)
         and {r.status_column} in ({running})
         and {r.last_seen} < p_cutoff
      returning {r.key}::text as key
    )
    select count(*), jsonb_agg(old -> marked.key order by marked.key) filter (where p_archive is not null)
      into rows, removed
      from marked;
    unchanged := coalesce(cardinality(keys), 0) - rows;
  exception when integrity_constraint_violation or raise_exception then
    get stacked diagnostics failure = message_text, failed_constraint = constraint_name;
    blocked := maintenance.blocked_row(keys[cardinality(keys)]::text, failure, failed_constraint);
  end;
  removed := maintenance.archive_document(p_archive, 'mark', removed);
  next_position := case when cardinality(keys) >= p_batch_size
                        then jsonb_build_object('id', keys[cardinality(keys)]::text) end;
end
$$;
