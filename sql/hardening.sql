-- Applied after every migration: nobody but the owner may read maintctl's tables or call its
-- routines, neither PUBLIC nor Supabase's API roles where they exist (README, "Privileges").
revoke all on schema maintenance from public;
revoke all on all tables in schema maintenance from public;
revoke all on all sequences in schema maintenance from public;
revoke all on all routines in schema maintenance from public;
do $$
declare
  api_role text;
begin
  foreach api_role in array array['anon', 'authenticated'] loop
    if exists (select 1 from pg_catalog.pg_roles where rolname = api_role) then
      execute pg_catalog.format('revoke all on schema maintenance from %I', api_role);
      execute pg_catalog.format('revoke all on all tables in schema maintenance from %I', api_role);
      execute pg_catalog.format('revoke all on all sequences in schema maintenance from %I', api_role);
      execute pg_catalog.format('revoke all on all routines in schema maintenance from %I', api_role);
    end if;
  end loop;
end
$$;
