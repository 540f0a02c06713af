-- The import system's own tables, as DESIGN.md defines them. maintctl does not own these: this
-- reference copy creates them for `make demo` and the tests. Run with search_path set to the
-- application schema.
create table import_runs (
  id            bigint generated always as identity primary key,
  status        text not null default 'pending'
                check (status in ('pending','processing','completed','failed','cancelled')),
  created_at    timestamptz not null default now(),
  started_at    timestamptz,
  heartbeat_at  timestamptz,      -- last sign of life from the worker; may stay null
  finished_at   timestamptz,
  error_message text
);
create table raw_import_items (
  id         bigint generated always as identity primary key,
  run_id     bigint not null references import_runs(id) on delete cascade,
  created_at timestamptz not null default now(),
  data       jsonb,
  error      text
);
create table temp_uploads (
  id           bigint generated always as identity primary key,
  created_at   timestamptz not null default now(),
  storage_path text not null,
  size_bytes   bigint
);
create table import_jobs (
  id          bigint generated always as identity primary key,
  run_id      bigint references import_runs(id) on delete set null,
  status      text not null default 'queued'
              check (status in ('queued','running','completed','failed','cancelled')),
  created_at  timestamptz not null default now(),
  finished_at timestamptz,
  payload     jsonb,
  result      jsonb,
  log         text
);
