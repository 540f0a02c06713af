-- Every query maintctl sends, each under a name. `-- name: NAME` starts a query and the next
-- comment line says what it is for. Values are always %(name)s parameters.

-- name: server_info
-- The server's version and clock, for doctor and for errors that need them.
select current_setting('server_version') as server_version,
       current_setting('server_version_num')::integer as server_version_num,
       now() as now;

-- name: schema_exists
-- Whether a schema of that name exists.
select exists (select 1 from pg_namespace where nspname = %(schema)s) as exists;

-- name: migrations_table_exists
-- Whether maintctl's migrations ledger exists at all.
select to_regclass('maintenance.schema_migrations') is not null as exists;

-- name: applied_migrations
-- The migrations applied to this database, in order, with the application schema each one used.
select version, name, app_schema from maintenance.schema_migrations order by version;

-- name: record_migration
-- Notes one applied migration in the ledger.
insert into maintenance.schema_migrations (version, name, app_schema, maintctl_version)
values (%(version)s, %(name)s, %(app_schema)s, %(maintctl_version)s);

-- name: try_migration_lock
-- Only one migrate at a time; the other polls (a waiting statement would hold a snapshot that
-- CREATE INDEX CONCURRENTLY must wait for).
select pg_try_advisory_lock(7461823191) as locked;

-- name: migration_unlock
-- Releases the migrate lock.
select pg_advisory_unlock(7461823191) as unlocked;

-- name: allow_long_statements
-- For CREATE INDEX CONCURRENTLY, which never blocks writes but may take long on a large table.
select set_config('statement_timeout', '0', false), set_config('lock_timeout', '0', false);

-- name: reset_session_limits
-- Back to the server's defaults after the index builds.
select set_config('statement_timeout', reset_val, false)
from pg_settings where name = 'statement_timeout'
union all
select set_config('lock_timeout', reset_val, false)
from pg_settings where name = 'lock_timeout';

-- name: set_transaction_timeouts
-- Per-transaction limits, so that no statement waits on a lock or runs longer than configured.
select set_config('lock_timeout', %(lock_timeout)s, true),
       set_config('statement_timeout', %(statement_timeout)s, true),
       set_config('idle_in_transaction_session_timeout', %(idle_timeout)s, true);

-- name: cutoff
-- The cutoff of a rule: the database's clock minus the threshold, in hours whatever the time zone.
select now() - maintenance.absolute(%(threshold)s::interval) as cutoff;

-- name: mark_stuck_runs_step
-- One batch of the stuck rule.
select rows, next_position
from maintenance.mark_stuck_runs_step(%(cutoff)s, %(threshold)s::interval, %(batch_size)s);

-- name: purge_temp_uploads_step
-- One batch of the temp rule, from where the walk stands; the files go to the storage outbox.
select rows, next_position
from maintenance.purge_temp_uploads_step(%(cutoff)s, %(batch_size)s, %(position)s::jsonb,
                                         %(run_id)s::bigint);

-- name: compact_import_jobs_step
-- One batch of the compact rule, from where the walk stands.
select rows, next_position
from maintenance.compact_import_jobs_step(%(cutoff)s, %(batch_size)s, %(position)s::jsonb);

-- name: purge_raw_items_step
-- One batch of the raw rule, from where the walk stands.
select rows, next_position
from maintenance.purge_raw_items_step(%(cutoff)s, %(batch_size)s, %(position)s::jsonb);

-- name: count_stuck_runs
-- What the stuck rule would touch now (dry run).
select maintenance.count_stuck_runs(%(cutoff)s) as rows;

-- name: count_old_temp_uploads
-- What the temp rule would touch now (dry run).
select maintenance.count_old_temp_uploads(%(cutoff)s) as rows;

-- name: count_old_import_jobs
-- What the compact rule would touch now (dry run).
select maintenance.count_old_import_jobs(%(cutoff)s) as rows;

-- name: count_old_raw_items
-- What the raw rule would touch now (dry run).
select maintenance.count_old_raw_items(%(cutoff)s) as rows;

-- name: pending_counts
-- The four counts of `status` at the configured thresholds.
select stuck_runs, old_temp_uploads, old_raw_items, old_import_jobs
from maintenance.pending_counts(%(stuck_after)s::interval, %(temp_upload_ttl)s::interval,
                                %(compact_after)s::interval, %(raw_items_ttl)s::interval);

-- name: pause_state
-- Whether maintenance is paused in the database, by whom and why.
select paused, reason, paused_by, paused_at from maintenance.pause;

-- name: set_pause
-- Pauses or resumes maintenance.
update maintenance.pause
   set paused = %(paused)s,
       reason = case when %(paused)s then %(reason)s end,
       paused_by = case when %(paused)s then %(paused_by)s end,
       paused_at = case when %(paused)s then now() end
returning paused, reason, paused_by, paused_at;

-- name: try_run_lock
-- One non-dry run at a time: a session-level advisory lock, held for the whole run.
select pg_try_advisory_lock(maintenance.run_lock_key()) as locked;

-- name: run_unlock
-- Releases the run lock.
select pg_advisory_unlock(maintenance.run_lock_key()) as unlocked;

-- name: current_run_holder
-- The ledger row of the run that holds the lock, for the "another run is in progress" message.
select r.host, r.started_at
from maintenance.runs r
join pg_locks l on l.pid = r.backend_pid
where r.status = 'running' and l.locktype = 'advisory' and l.granted
  and l.objid = (maintenance.run_lock_key() & 4294967295)::oid
order by r.id desc
limit 1;

-- name: mark_abandoned_runs
-- Ledger rows left 'running' by a process that died become 'abandoned'.
select maintenance.mark_abandoned_runs() as rows;

-- name: start_run
-- Opens the ledger row of a run.
insert into maintenance.runs (command, host, pid, version, dry_run, thresholds, status, skipped,
                              finished_at)
values (%(command)s, %(host)s, %(pid)s, %(version)s, %(dry_run)s, %(thresholds)s, %(status)s,
        %(skipped)s, case when %(status)s = 'running' then null else now() end)
returning id, started_at;

-- name: finish_run
-- Closes the ledger row of a run with its outcome.
update maintenance.runs
   set status = %(status)s, finished_at = now(), tasks = %(tasks)s, errors = %(errors)s
 where id = %(id)s;

-- name: prune_runs
-- The ledger keeps itself small: finished rows older than the retention go.
select maintenance.prune_runs(%(retention)s::interval) as rows;

-- name: history
-- The most recent runs, newest first; a 'running' row whose session is gone shows as abandoned.
select r.id, r.command,
       case when maintenance.is_abandoned(r.status, r.backend_pid, r.started_at)
            then 'abandoned' else r.status end as status,
       r.started_at, r.finished_at, r.host, r.version, r.dry_run, r.thresholds, r.tasks, r.errors,
       r.skipped
from maintenance.runs r
order by r.id desc
limit %(limit)s;

-- name: last_successful_run
-- When the last full, real run succeeded (CLI or pg_cron), for status --max-age: a single task
-- or a dry run does not count.
select max(finished_at) as finished_at
from maintenance.runs
where status = 'succeeded' and not dry_run and command in ('run', 'run_maintenance_cleanup');

-- name: table_privileges
-- Whether an application table exists, and the privileges this session has on it, for doctor.
select t.name is not null as present,
       coalesce(has_table_privilege(t.name, 'SELECT'), false) as can_select,
       coalesce(has_table_privilege(t.name, 'UPDATE'), false) as can_update,
       coalesce(has_table_privilege(t.name, 'DELETE'), false) as can_delete
from (select to_regclass(format('%%I.%%I', %(schema)s::text, %(table)s::text)) as name) as t;

-- name: outbox_batches
-- The next outbox rows (a batch of deleted uploads each), oldest first, for drain-outbox.
select id, run_id, deleted_at, upload_ids, storage_paths, size_bytes
from maintenance.storage_outbox
where id > %(after)s
order by id
limit %(limit)s;

-- name: outbox_run_batches
-- The next outbox rows of one run, for --emit-paths.
select id, run_id, deleted_at, upload_ids, storage_paths, size_bytes
from maintenance.storage_outbox
where run_id = %(run_id)s and id > %(after)s
order by run_id, id
limit %(limit)s;

-- name: outbox_clear
-- Removes the outbox rows a durable drain file now holds, by their ids.
delete from maintenance.storage_outbox where id = any(%(ids)s::bigint[]);
