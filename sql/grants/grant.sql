-- `maintctl grant ROLE`: exactly what `maintctl run`, `status`, `doctor` and `history` need, for a
-- role that owns nothing. {role} is the role, {app} the application schema, {owner} the owner of
-- the maintenance schema (who runs migrate); maintctl quotes all three. Idempotent.

-- maintctl's own objects, by catalog: every table, sequence and routine of the schema, so objects
-- that later migrations add are covered (default privileges of their creator, the owner).
grant usage on schema maintenance to {role};
grant select, insert, update, delete on all tables in schema maintenance to {role};
grant usage, select on all sequences in schema maintenance to {role};
grant execute on all routines in schema maintenance to {role};
alter default privileges for role {owner} in schema maintenance
  grant select, insert, update, delete on tables to {role};
alter default privileges for role {owner} in schema maintenance
  grant usage, select on sequences to {role};
alter default privileges for role {owner} in schema maintenance
  grant execute on routines to {role};
-- ...except that the migrations ledger is read-only, and the single rows of the pause switch and
-- the run lease stay (a deleted lease row stopped every run; taking the lease restores it).
revoke insert, update, delete on maintenance.schema_migrations from {role};
revoke insert, delete on maintenance.pause from {role};
revoke insert, delete on maintenance.run_lease from {role};

-- The application's tables: what the tasks do to each (every batch locks its rows first, and
-- PostgreSQL asks UPDATE for that even where the batch then deletes). Nothing else of {app}.
grant usage on schema {app} to {role};
grant select, update on {app}.import_runs, {app}.import_jobs to {role};
grant select, update, delete on {app}.temp_uploads, {app}.raw_import_items to {role};
