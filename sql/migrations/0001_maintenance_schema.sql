-- maintctl's own tables: the run ledger and the pause switch. (The one column maintctl adds to the
-- application, compacted_at of the compact rule's table, is added with the rules' generated SQL:
-- sql/rules/compact.sql, whatever the policy names that table.)

-- One row per maintctl run (CLI or pg_cron). A row left 'running' by a process that died is turned
-- into 'abandoned' by the next run.
create table maintenance.runs (
  id          bigint generated always as identity primary key,
  command     text not null,
  status      text not null default 'running'
              check (status in ('running','succeeded','failed','interrupted','skipped','abandoned')),
  started_at  timestamptz not null default now(),
  finished_at timestamptz,
  host        text,
  pid         integer,
  backend_pid integer not null default pg_backend_pid(),
  version     text,
  dry_run     boolean not null default false,
  thresholds  jsonb not null default jsonb_build_object(),
  tasks       jsonb not null default jsonb_build_array(),
  errors      jsonb not null default jsonb_build_array(),
  skipped     text
);
create index runs_started_at on maintenance.runs (started_at);
create index runs_running on maintenance.runs (id) where status = 'running';

-- The database-side pause switch: exactly one row.
create table maintenance.pause (
  singleton  boolean primary key default true check (singleton),
  paused     boolean not null default false,
  reason     text,
  paused_by  text,
  paused_at  timestamptz
);
insert into maintenance.pause default values;
