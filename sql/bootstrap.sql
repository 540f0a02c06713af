-- What migrate needs before the first migration: the maintenance schema and its migrations ledger.
create schema if not exists maintenance;
create table if not exists maintenance.schema_migrations (
  version          integer primary key,
  name             text not null,
  app_schema       text not null,
  maintctl_version text not null,
  applied_at       timestamptz not null default now()
);
