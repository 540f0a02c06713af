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

-- (What the rules do to the application's tables is taken back by maintctl.grants first.)
revoke usage on schema {app} from {role};
