-- Rows a rule cannot change (docs/safety.md, "Rows that cannot change"): every generated step
-- (sql/rules/*.sql) and maintenance.rule_step return, besides `rows`, `next_position` and
-- `removed`, an OUT `blocked jsonb`, so that rule_step can split a batch around a row that a
-- foreign key, a trigger or a check keeps, and name it. Their arguments stay; a function's OUT
-- columns cannot change in place, so the ones of 0012's time go, and migrate installs the new ones
-- right after the migrations. The helpers they share follow; with them each rule's _left function,
-- the last check of a task, which migrate generates too.
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

-- How a task words the rows it left as they are: how many, and the first of them with the error
-- (the CLI and the pg_cron procedure both ask it).
create function maintenance.blocked_sentence(p_blocked jsonb)
returns text
language sql immutable set search_path = pg_catalog, pg_temp
as $$
  select format('%s row(s) could not be changed and were left as they are (first: key %s: %s%s)',
                jsonb_array_length(p_blocked), p_blocked -> 0 ->> 'key', p_blocked -> 0 ->> 'error',
                coalesce(' [constraint ' || (p_blocked -> 0 ->> 'constraint') || ']', ''))
$$;

-- Whether a row with this xmin was there for a snapshot taken earlier (pg_current_snapshot()):
-- its inserting transaction had committed then. The 32-bit xmin is widened to the one of the last
-- 2^32 transaction ids before the next to be assigned (a row's xmin is older than that, or frozen).
create function maintenance.existed_at(p_xmin xid, p_snapshot pg_snapshot)
returns boolean
language sql stable set search_path = pg_catalog, pg_temp
as $$
  select pg_visible_in_snapshot(
           (n.next - ((n.next - p_xmin::text::bigint) & 4294967295))::text::xid8, p_snapshot)
    from (select pg_snapshot_xmax(pg_current_snapshot())::text::bigint as next) as n
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
