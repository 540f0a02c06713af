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

-- name: take_run_lease
-- One non-dry run at a time, through any pooler: takes the lease row when it is free, never waits.
select maintenance.take_run_lease(%(host)s, %(pid)s, %(lease)s::interval) as taken;

-- name: attach_run_lease
-- Names the ledger row of the run that took the lease, in the same transaction.
select maintenance.attach_run_lease(%(run_id)s);

-- name: renew_run_lease
-- Inside each batch's transaction: extends the lease; false when another run took it over.
select maintenance.renew_run_lease(%(run_id)s, %(lease)s::interval) as renewed;

-- name: release_run_lease
-- Frees the lease at the end of the run.
select maintenance.release_run_lease(%(run_id)s) as released;

-- name: touch_run
-- A sign of life of a dry run (which holds no lease), so that it is not taken for abandoned.
select maintenance.touch_run(%(run_id)s, %(lease)s::interval);

-- name: run_lease_holder
-- Who holds the lease, for the "another maintenance run is in progress" message.
select run_id, host, started_at, live from maintenance.run_lease_holder();

-- name: mark_abandoned_runs
-- Ledger rows left 'running' by a run whose heartbeat lapsed become 'abandoned'.
select maintenance.mark_abandoned_runs() as rows;

-- name: start_run
-- Opens the ledger row of a run.
insert into maintenance.runs (command, host, pid, version, dry_run, thresholds, status, skipped,
                              finished_at, expires_at)
values (%(command)s, %(host)s, %(pid)s, %(version)s, %(dry_run)s, %(thresholds)s, %(status)s,
        %(skipped)s, case when %(status)s = 'running' then null else now() end,
        clock_timestamp() + %(lease)s::interval)
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
-- The most recent runs, newest first; a 'running' row whose heartbeat lapsed shows as abandoned.
-- since_time / since_age (either may be null) keep the runs started since then.
select r.id, r.command,
       case when maintenance.is_abandoned(r) then 'abandoned' else r.status end as status,
       r.started_at, r.finished_at, r.host, r.version, r.dry_run, r.thresholds, r.tasks, r.errors,
       r.skipped
from maintenance.runs r
where (%(since_time)s::timestamptz is null or r.started_at >= %(since_time)s::timestamptz)
  and (%(since_age)s::interval is null
       or r.started_at >= now() - maintenance.absolute(%(since_age)s::interval))
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

-- name: table_columns
-- The columns of an application table, for doctor's check of what the rules use.
select a.attname as name
from pg_attribute a
where a.attrelid = to_regclass(format('%%I.%%I', %(schema)s::text, %(table)s::text))
  and a.attnum > 0 and not a.attisdropped
order by a.attnum;

-- name: table_column_types
-- The columns of an application table with their types (format_type), read at migrate: the
-- generated steps declare a key's walk position in its own type.
select a.attname as name, format_type(a.atttypid, a.atttypmod) as type
from pg_attribute a
where a.attrelid = to_regclass(format('%%I.%%I', %(schema)s::text, %(table)s::text))
  and a.attnum > 0 and not a.attisdropped
order by a.attnum;

-- name: time_zone_known
-- Whether the server knows a time zone name (naive_time_zone), before anything is generated in it.
select exists (select from pg_timezone_names where name = %(zone)s) as known;

-- name: session_writable
-- Whether this session can write: not a hot standby (in recovery), not a read-only session
-- (default_transaction_read_only, as a pooler or a role's setting may give it).
select pg_is_in_recovery() as in_recovery,
       current_setting('default_transaction_read_only')::boolean as read_only;

-- name: column_enum_labels
-- The labels of an application column's enum type, in order (none when it is not an enum): the
-- statuses the rules name must be among them.
select format_type(a.atttypid, null) as type_name,
       array(select e.enumlabel::text from pg_enum e where e.enumtypid = a.atttypid
             order by e.enumsortorder) as labels
from pg_attribute a
join pg_type t on t.oid = a.atttypid
where a.attrelid = to_regclass(format('%%I.%%I', %(schema)s::text, %(table)s::text))
  and a.attname = %(column)s and t.typtype = 'e';

-- name: table_safety
-- What of an application table can make a rule's DML fail, do nothing, or see only some rows:
-- Row Level Security (and whether it applies to this session's role: not the owner unless
-- FORCE, not a superuser or BYPASSRLS role), its policies, each NOT NULL column, and whether a
-- publication that publishes UPDATE or DELETE includes it while it has no replica identity.
select c.relrowsecurity as row_security,
       c.relforcerowsecurity as forced,
       c.relrowsecurity
         and not (select rolsuper or rolbypassrls from pg_roles where rolname = current_user)
         and (c.relforcerowsecurity or not pg_has_role(c.relowner, 'USAGE')) as applies,
       array(select p.polname::text || ' (' ||
                    case p.polcmd when '*' then 'ALL' when 'r' then 'SELECT' when 'a' then 'INSERT'
                                  when 'w' then 'UPDATE' when 'd' then 'DELETE' end || ')'
             from pg_policy p where p.polrelid = c.oid order by p.polname) as policies,
       array(select a.attname::text from pg_attribute a
             where a.attrelid = c.oid and a.attnum > 0 and not a.attisdropped and a.attnotnull
             order by a.attnum) as not_null,
       exists (select from pg_publication p
               where (p.pubupdate or p.pubdelete)
                 and (p.puballtables
                      or exists (select from pg_publication_tables t
                                 where t.pubname = p.pubname and t.schemaname = %(schema)s
                                   and t.tablename = %(table)s)))
         and (c.relreplident = 'n'
              or (c.relreplident = 'd' and not exists (
                    select from pg_index i where i.indrelid = c.oid and i.indisprimary))
              or (c.relreplident = 'i' and not exists (
                    select from pg_index i where i.indrelid = c.oid and i.indisreplident)))
         as lacks_replica_identity
from pg_class c
where c.oid = to_regclass(format('%%I.%%I', %(schema)s::text, %(table)s::text));

-- name: server_clock
-- The database's clock now (not the transaction's start), for doctor's clock check.
select clock_timestamp() as now;

-- name: role_exists
-- Whether a role of that name exists, for `maintctl grant`.
select exists (select 1 from pg_roles where rolname = %(role)s) as exists;

-- name: maintenance_owner
-- The owner of the maintenance schema (who runs migrate), whose default privileges grant extends.
select pg_get_userbyid(nspowner) as owner from pg_namespace where nspname = 'maintenance';

-- name: set_session_timeouts
-- The configured timeouts for a statement that cannot run in a transaction block.
select set_config('lock_timeout', %(lock_timeout)s, false),
       set_config('statement_timeout', %(statement_timeout)s, false);

-- name: expired_temp_uploads_partitions
-- When temp_uploads is range-partitioned by created_at alone: its plain partitions whose whole
-- range ends at or before the cutoff, oldest first (never the DEFAULT partition, nor one bounded
-- by MAXVALUE). The bound is read back from the partition's own definition.
select n.nspname as partition_schema, c.relname as partition, b.upper_bound,
       i.inhdetachpending as detach_pending, pt.partdefid <> 0 as has_default
from pg_class p
join pg_namespace pn on pn.oid = p.relnamespace
join pg_partitioned_table pt on pt.partrelid = p.oid
join pg_inherits i on i.inhparent = p.oid
join pg_class c on c.oid = i.inhrelid
join pg_namespace n on n.oid = c.relnamespace
cross join lateral (
  select (regexp_match(pg_get_expr(c.relpartbound, c.oid),
                       $re$ TO \('([^']*)'\)$re$))[1]::timestamptz as upper_bound
) as b
where pn.nspname = %(schema)s and p.relname = %(table)s and p.relkind = 'p'
  and pt.partstrat = 'r' and pt.partnatts = 1
  and pt.partattrs[0] = (select a.attnum from pg_attribute a
                         where a.attrelid = p.oid and a.attname = %(created_at)s)
  and c.relkind = 'r' and c.oid <> pt.partdefid
  and b.upper_bound <= %(cutoff)s
order by b.upper_bound;

-- name: detach_partition_concurrently
-- Detaches a partition without blocking the application (not in a transaction block).
alter table {parent} detach partition {partition} concurrently;

-- name: finalize_detach
-- Completes a DETACH ... CONCURRENTLY that was interrupted.
alter table {parent} detach partition {partition} finalize;

-- name: detach_partition
-- Detaches a partition where CONCURRENTLY is not allowed (the parent has a DEFAULT partition).
alter table {parent} detach partition {partition};

-- name: count_detached_partition
-- The rows of a detached partition, and how many of them are at or past the cutoff (none may be).
select count(*) as rows, count(*) filter (where {created_at} >= %(cutoff)s) as fresh
from {partition};

-- name: outbox_detached_partition
-- The files of a detached temp_uploads partition about to be dropped, into the storage outbox in
-- rows of %(chunk)s uploads, as the batch loop's deletes record theirs.
insert into maintenance.storage_outbox (run_id, upload_ids, storage_paths, size_bytes)
select %(run_id)s::bigint, array_agg(key::text order by key), array_agg(storage_path order by key),
       array_agg(size_bytes order by key)
from (select {key} as key, {storage_path} as storage_path, {size_bytes} as size_bytes,
             (row_number() over (order by {key}) - 1) / %(chunk)s as chunk
      from {partition}) as files
group by chunk;

-- name: drop_partition
-- Drops a detached partition whose rows are all past the TTL.
drop table {partition};

-- name: table_reltuples
-- The planner's row count of an application table (-1 or 0 when never analyzed), for --vacuum.
select c.reltuples
from pg_class c join pg_namespace n on n.oid = c.relnamespace
where n.nspname = %(schema)s and c.relname = %(table)s;

-- name: vacuum_table
-- VACUUM (ANALYZE) of a table the run changed a lot (outside any transaction).
vacuum (analyze) {table};

-- name: server_endpoint
-- The port the server listens on and the server session (backend) serving this transaction, for
-- doctor's pooler check.
select current_setting('port')::integer as port, pg_backend_pid() as backend_pid;

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

-- name: skip_function_body_checks
-- The file migrations create functions on the reference schema's tables, which the generated rules
-- replace at the end of migrate: a renamed schema has no such tables to check them against.
select set_config('check_function_bodies', 'off', true);

-- name: installed_rules_fingerprint
-- The fingerprint of the generated rules migrate last installed (maintctl.rules.generate).
select (select fingerprint from maintenance.installed_rules) as fingerprint;

-- name: record_installed_rules
-- Notes what migrate installed: the fingerprint of the generated SQL, for the application schema.
insert into maintenance.installed_rules (id, fingerprint, app_schema, maintctl_version)
values (true, %(fingerprint)s, %(app_schema)s, %(maintctl_version)s)
on conflict (id) do update
   set fingerprint = excluded.fingerprint, app_schema = excluded.app_schema,
       maintctl_version = excluded.maintctl_version, installed_at = now();

-- name: index_state
-- Whether one of maintctl's indexes exists in the application schema, is valid, and its comment
-- (the digest of the definition it was built from).
select i.indisvalid as valid, obj_description(c.oid, 'pg_class') as comment
from pg_class c
join pg_namespace n on n.oid = c.relnamespace
join pg_index i on i.indexrelid = c.oid
where n.nspname = %(schema)s and c.relname = %(name)s;

-- name: drop_index_concurrently
-- Clears a leftover of an interrupted build, or an index built from another definition.
drop index concurrently if exists {index};

-- name: create_index_concurrently
-- Builds one of the rules' indexes without blocking the application's writes.
create index concurrently {index} {definition};

-- name: comment_index
-- Marks one of maintctl's indexes with the digest of its definition.
comment on index {index} is {comment};

-- name: rule_step
-- One batch of a rule from where its walk stands (maintenance.rule_step, sql/rules/runner.sql).
select rows, next_position
from maintenance.rule_step(%(rule)s, %(cutoff)s, %(threshold)s::interval, %(batch_size)s,
                           %(position)s::jsonb, %(run_id)s::bigint, %(cutoffs)s::jsonb);

-- name: rule_count
-- What a rule would touch now, counted up to %(limit)s rows (null: all), through its count function;
-- %(cutoffs)s: the cutoff of each status, for a rule with a threshold per status (else null).
select {count}(%(cutoff)s, %(limit)s::bigint, %(cutoffs)s::jsonb) as rows;

-- name: cutoffs
-- The cutoffs of several thresholds at one moment (the database's clock), in their order.
select array_agg(now() - maintenance.absolute(t) order by n) as cutoffs
from unnest(%(thresholds)s::interval[]) with ordinality as u(t, n);

-- name: rule_counts
-- What several rules would touch now, in one statement: {counts} is one rule_count expression,
-- maintenance.<count>(cutoff, limit, cutoffs), per rule.
select {counts};

-- name: grant_table
-- What the rules do to one application table, for `maintctl grant`.
grant {privileges} on {table} to {role};

-- name: revoke_table
-- Takes back what grant_table gave.
revoke {privileges} on {table} from {role};

-- name: where_check_table
-- An empty copy of a [[purge]] rule's table, to check its condition on (rolled back by the caller).
create temporary table maintctl_where_check (like {table});

-- name: where_check_index
-- A [[purge]] rule's condition as PostgreSQL checks an index predicate: a boolean condition on
-- that table alone, no subquery, only immutable functions (the rule's index is partial on it).
create index on maintctl_where_check ((1)) where ({where});
