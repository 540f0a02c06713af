-- `maintctl grant ROLE --revoke`: takes back what grant.sql gives, and nothing else. {role},
-- {app} and {owner} as there. Idempotent.
revoke all on all tables in schema maintenance from {role};
revoke all on all sequences in schema maintenance from {role};
revoke all on all routines in schema maintenance from {role};
revoke all on schema maintenance from {role};
alter default privileges for role {owner} in schema maintenance
  revoke all on tables from {role};
alter default privileges for role {owner} in schema maintenance
  revoke all on sequences from {role};
alter default privileges for role {owner} in schema maintenance
  revoke all on routines from {role};

revoke select, update on {app}.import_runs, {app}.import_jobs from {role};
revoke select, update, delete on {app}.temp_uploads, {app}.raw_import_items from {role};
revoke usage on schema {app} from {role};
