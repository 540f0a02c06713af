-- The archive's capture (docs/archive.md): every generated step (sql/rules/*.sql) and
-- maintenance.rule_step take a last `p_archive text[] default null` and return, besides `rows` and
-- `next_position`, an OUT `removed jsonb`: null when p_archive is null, else what the batch
-- removed, filled from the DML's own RETURNING. A delete returns each whole row; an update
-- (compact, stuck) the previous values of the columns p_archive names, read under the batch's row
-- locks, so they are the ones it overwrote. The client makes `removed` durable in the archive
-- inside the still-open batch transaction and only then commits: a kill at any point leaves a row
-- in the table, in the archive, or in both, never in neither.
--
-- The generated steps of 0008's time took six arguments (rule_step seven) and had no `removed`:
-- migrate installs the new ones after the migrations, and an old one left beside its successor
-- would make every call by the old arguments (the pg_cron procedure's) ambiguous, so they go.
do $$
declare
  old regprocedure;
begin
  for old in
    select p.oid::regprocedure
      from pg_proc p
     where p.pronamespace = 'maintenance'::regnamespace
       and ((p.proname = 'rule_step'
             and oidvectortypes(p.proargtypes) = 'text, timestamp with time zone, interval, '
                                                 'integer, jsonb, bigint, jsonb')
            or (p.proname like '%\_step'
                and oidvectortypes(p.proargtypes) = 'timestamp with time zone, interval, '
                                                    'integer, jsonb, bigint, jsonb'))
  loop
    execute format('drop function %s', old);
  end loop;
end
$$;

-- One archived row of an update: the row's columns that p_columns names (the key among them).
create function maintenance.archived_columns(p_row jsonb, p_columns text[])
returns jsonb
language sql immutable set search_path = pg_catalog, pg_temp
as $$
  select jsonb_object_agg(c.key, c.value) from jsonb_each(p_row) as c where c.key = any (p_columns)
$$;

-- A step's `removed`: null without the archive, else the action and the rows (an array).
create function maintenance.archive_document(p_archive text[], p_action text, p_rows jsonb)
returns jsonb
language sql immutable set search_path = pg_catalog, pg_temp
as $$
  select case when p_archive is not null
              then jsonb_build_object('action', p_action, 'rows', coalesce(p_rows, '[]'))
         end
$$;

-- A step's `removed` as the client stores it: the action, the columns the rows carry, and the rows
-- as JSON lines in PostgreSQL's own text (a numeric keeps every digit, which a round trip through
-- the client's JSON numbers would not). Nulls when nothing is archived.
create function maintenance.archive_lines(
  p_removed jsonb,
  out archive_action text, out archive_columns text[], out archive_rows text)
language sql immutable set search_path = pg_catalog, pg_temp
as $$
  select p_removed ->> 'action',
         array(select jsonb_object_keys(p_removed -> 'rows' -> 0)),
         (select string_agg(r.value::text, E'\n' order by r.n)
            from jsonb_array_elements(p_removed -> 'rows') with ordinality as r (value, n))
$$;
