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
-- ...except that the migrations ledger and the record of the generated rules are read-only and
-- the pause switch's single row stays.
revoke insert, update, delete on maintenance.schema_migrations from {role};
revoke insert, update, delete on maintenance.installed_rules from {role};
revoke insert, delete on maintenance.pause from {role};

-- The application's schema; on its tables, what the rules do to each (maintctl/rules/, granted by
-- maintctl.grants). Nothing else of {app}.
grant usage on schema {app} to {role};
