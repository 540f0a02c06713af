-- The run lease's single row is the lease itself: without it every CLI run exited 70 and the
-- pg_cron procedure skipped as "another run is in progress". Roles granted before this migration
-- could delete it; `maintctl grant` no longer gives INSERT or DELETE on it, and a row that is
-- deleted anyway (by its owner, or a TRUNCATE) is put back at once, by the triggers below.

-- Puts the lease's row back, free, when it is missing. SECURITY DEFINER: the owner's right to
-- INSERT, which no granted role holds; it inserts nothing but that one default row.
create function maintenance.restore_run_lease_row() returns trigger
language plpgsql volatile security definer set search_path = pg_catalog, pg_temp
as $$
begin
  insert into maintenance.run_lease (singleton)
  select true where not exists (select 1 from maintenance.run_lease)
  on conflict (singleton) do nothing;
  return null;
end
$$;

create trigger run_lease_row_stays after delete on maintenance.run_lease
  for each statement execute function maintenance.restore_run_lease_row();
create trigger run_lease_row_stays_truncated after truncate on maintenance.run_lease
  for each statement execute function maintenance.restore_run_lease_row();

-- A database whose row is already gone gets it back now.
insert into maintenance.run_lease (singleton)
select true where not exists (select 1 from maintenance.run_lease);

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
