-- The run lease's single row is the lease itself: without it every CLI run exited 70 and the
-- pg_cron procedure skipped as "another run is in progress". Roles granted before this migration
-- could delete it; `maintctl grant` no longer gives INSERT or DELETE on it, and taking the lease
-- puts the row back when it is missing.

-- Puts the lease's row back, free. SECURITY DEFINER (the owner's right to INSERT, which no granted
-- role holds), and it inserts nothing but that one default row. The NOT EXISTS comes first: an
-- INSERT that meets the row would wait for a batch holding it locked, and a take never waits.
create function maintenance.restore_run_lease_row() returns void
language sql volatile security definer set search_path = pg_catalog, pg_temp
as $$
  insert into maintenance.run_lease (singleton)
  select true where not exists (select 1 from maintenance.run_lease)
  on conflict (singleton) do nothing;
$$;

-- As in 0004_run_lease.sql, after restoring the row when it is missing.
create or replace function maintenance.take_run_lease(p_host text, p_pid integer, p_lease interval)
returns boolean
language sql volatile set search_path = pg_catalog, pg_temp
as $$
  select maintenance.restore_run_lease_row();
  with free as (
    select singleton, clock_timestamp() as moment from maintenance.run_lease
    where expires_at <= clock_timestamp()
    for update skip locked
  ), taken as (
    update maintenance.run_lease l
       set run_id = null, host = p_host, pid = p_pid, started_at = now(),
           renewed_at = free.moment, expires_at = free.moment + p_lease
      from free
     where l.singleton = free.singleton
    returning 1
  )
  select count(*) = 1 from taken
$$;

-- Take back from every role already granted what `maintctl grant` no longer gives on the row.
do $$
declare
  grantee text;
begin
  for grantee in
    select distinct pg_catalog.pg_get_userbyid(a.grantee)
      from pg_catalog.pg_class c, pg_catalog.aclexplode(c.relacl) a
     where c.oid = 'maintenance.run_lease'::pg_catalog.regclass
       and a.grantee <> c.relowner and a.grantee <> 0
       and a.privilege_type in ('INSERT', 'DELETE', 'TRUNCATE')
  loop
    execute pg_catalog.format(
      'revoke insert, delete, truncate on maintenance.run_lease from %I', grantee);
  end loop;
end
$$;
