-- Rows a rule cannot change (docs/safety.md, "Rows that cannot change"): every generated step
-- (sql/rules/*.sql) and maintenance.rule_step return, besides `rows`, `next_position` and
-- `removed`, an OUT `blocked jsonb`, so that rule_step can split a batch around a row that a
-- foreign key, a trigger or a check keeps, and name it, and an OUT `unchanged integer`, the rows
-- a step left without an error (a BEFORE trigger that cancels the change). Their arguments stay; a function's OUT
-- columns cannot change in place, so the ones of 0012's time go, and migrate installs the new ones
-- right after the migrations. The helpers they share follow.
do $$
declare
  old regprocedure;
begin
  for old in
    select p.oid::regprocedure
      from pg_proc p
     where p.pronamespace = 'maintenance'::regnamespace
       and (p.proname = 'rule_step' or p.proname like '%\_step')
       and not ('blocked' = any (p.proargnames))
  loop
    execute format('drop function %s', old);
  end loop;
end
$$;

-- What a step says of the row it could not change: its key, the error and the constraint (null
-- when a trigger raised it).
create function maintenance.blocked_row(p_key text, p_error text, p_constraint text)
returns jsonb
language sql immutable set search_path = pg_catalog, pg_temp
as $$
  select jsonb_build_object('key', p_key, 'error', p_error, 'constraint', nullif(p_constraint, ''))
$$;

-- How a task words the rows it left (the CLI and the pg_cron procedure both ask it): how many
-- could not be changed, with the first one's key, error and constraint, and how many were left
-- without an error (a BEFORE trigger that cancelled the change); null when none were.
create function maintenance.left_rows_sentence(p_blocked bigint, p_first jsonb, p_unchanged bigint)
returns text
language sql immutable set search_path = pg_catalog, pg_temp
as $$
  select nullif(concat_ws('; ',
    case when p_blocked > 0 then
      format('%s row(s) could not be changed and were left as they are (first: key %s: %s%s)',
             p_blocked, coalesce(p_first ->> 'key', '?'), p_first ->> 'error',
             coalesce(' [constraint ' || (p_first ->> 'constraint') || ']', ''))
    end,
    case when p_unchanged > 0 then
      format('%s row(s) the rule selects were left unchanged without an error '
             '(a trigger that cancels the change?)', p_unchanged)
    end), '')
$$;

-- Two pieces' archive documents as one: the rows of both, in order.
create function maintenance.archive_merge(p_first jsonb, p_then jsonb)
returns jsonb
language sql immutable set search_path = pg_catalog, pg_temp
as $$
  select case when p_first is null then p_then
              when p_then is null then p_first
              else jsonb_set(p_first, array['rows'], (p_first -> 'rows') || (p_then -> 'rows')) end
$$;
