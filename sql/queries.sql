-- Every query maintctl sends, each under a name. `-- name: NAME` starts a query and the next
-- comment line says what it is for. Values are always %(name)s parameters.

-- name: server_info
-- The server's version and clock, for doctor and for errors that need them.
select current_setting('server_version') as server_version,
       current_setting('server_version_num')::integer as server_version_num,
       now() as now;

-- name: server_version_num
-- The server's version as a number (170000 for 17.0), for what depends on it.
select current_setting('server_version_num')::integer as server_version_num;

-- name: schema_exists
-- Whether a schema of that name exists.
select exists (select 1 from pg_namespace where nspname = %(schema)s) as exists;

-- name: migrate_preflight
-- Before migrate creates anything: who connects to which database, whether it may create the
-- maintenance schema (or already owns it), and whether it may create in the application schema
-- (the rules' indexes go there).
select current_user as role, current_database() as database,
       has_database_privilege(current_database(), 'CREATE') as can_create_schema,
       coalesce((select has_schema_privilege(n.oid, 'CREATE') from pg_namespace n
                 where n.nspname = %(schema)s), false) as can_create_in_app_schema,
       (select pg_get_userbyid(nspowner) from pg_namespace where nspname = 'maintenance')
         as maintenance_owner,
       coalesce((select pg_has_role(current_user, nspowner, 'USAGE')
                 from pg_namespace where nspname = 'maintenance'), true) as owns_maintenance;

-- name: application_table_owners
-- The owner of each application table migrate alters or indexes (null: the table is missing),
-- and whether this session may act as that owner.
select t.name as table_name, pg_get_userbyid(c.relowner) as owner,
       coalesce(pg_has_role(current_user, c.relowner, 'USAGE'), false) as owned
from unnest(%(tables)s::text[]) with ordinality as t(name, position)
left join pg_namespace n on n.nspname = %(schema)s
left join pg_class c on c.relnamespace = n.oid and c.relname = t.name and c.relkind in ('r', 'p')
order by t.position;

-- name: maintenance_schema_exists
-- Whether the maintenance schema exists, made by maintctl or not.
select to_regnamespace('maintenance') is not null as exists;

-- name: drop_maintenance_schema
-- What a first migrate made, when its rules could not be installed (maintctl.migrations.migrate):
-- only ever a schema that did not exist before it.
drop schema maintenance cascade;

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

-- name: set_batch_transaction_limits
-- The same limits for a batch's transaction, whose COMMIT also does not wait for the WAL flush
-- (asynchronous commit): the ledger's own commit stays synchronous and flushes every batch's WAL
-- before it, so a crash may lose a batch, never a ledger entry for one.
select set_config('lock_timeout', %(lock_timeout)s, true),
       set_config('statement_timeout', %(statement_timeout)s, true),
       set_config('idle_in_transaction_session_timeout', %(idle_timeout)s, true),
       set_config('synchronous_commit', 'off', true);

-- name: begin_batch_renewing_lease
-- set_batch_transaction_limits and, in the same round trip, the run lease renewed at the start of
-- the batch (as renew_run_lease; it keeps the lease row locked while the batch works). The select
-- list is evaluated in order: the renewal waits under the lock_timeout just set.
select set_config('lock_timeout', %(lock_timeout)s, true),
       set_config('statement_timeout', %(statement_timeout)s, true),
       set_config('idle_in_transaction_session_timeout', %(idle_timeout)s, true),
       set_config('synchronous_commit', 'off', true),
       maintenance.renew_run_lease(%(lease_run_id)s, %(lease)s::interval) as renewed;

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

-- name: run_lease_row
-- For doctor: whether the run lease's single row is there, and whether this session could delete
-- it (its owner always can; a granted role must not).
select exists (select 1 from maintenance.run_lease) as present,
       pg_has_role(current_user, c.relowner, 'USAGE') as owner,
       has_table_privilege(c.oid, 'DELETE') or has_table_privilege(c.oid, 'TRUNCATE')
         as can_delete
from pg_class c where c.oid = 'maintenance.run_lease'::regclass;

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

-- name: record_run_tasks
-- The results of the tasks a run has finished so far, written as each one ends: a run killed
-- later still shows what its finished tasks committed.
update maintenance.runs set tasks = %(tasks)s where id = %(id)s and status = 'running';

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

-- name: storage_outbox_backlog
-- The files waiting in the storage outbox for drain-outbox, and since when, for status and doctor.
select coalesce(sum(cardinality(upload_ids)), 0)::bigint as paths, min(deleted_at) as oldest
from maintenance.storage_outbox;

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
       current_user::text as role,
       c.relrowsecurity
         and not (select rolsuper or rolbypassrls from pg_roles where rolname = current_user)
         and (c.relforcerowsecurity or not pg_has_role(c.relowner, 'USAGE')) as applies,
       array(select p.polname::text || ' (' ||
                    case p.polcmd when '*' then 'ALL' when 'r' then 'SELECT' when 'a' then 'INSERT'
                                  when 'w' then 'UPDATE' when 'd' then 'DELETE' end || ')'
             from pg_policy p where p.polrelid = c.oid order by p.polname) as policies,
       -- The commands for which a permissive policy of this role (or PUBLIC, or a role whose
       -- privileges it has, as PostgreSQL applies policies) lets every row through: USING (true),
       -- WITH CHECK (true) or none.
       array(select distinct cmd
             from pg_policy p
             cross join lateral unnest(case p.polcmd when '*' then array['SELECT', 'UPDATE', 'DELETE']
                                                     when 'r' then array['SELECT']
                                                     when 'w' then array['UPDATE']
                                                     when 'd' then array['DELETE']
                                                     else array[]::text[] end) as cmd
             where p.polrelid = c.oid and p.polpermissive
               and (0::oid = any(p.polroles)
                    or exists (select from unnest(p.polroles) as r(oid)
                               where r.oid <> 0 and pg_has_role(current_user, r.oid, 'USAGE')))
               and pg_get_expr(p.polqual, p.polrelid) = 'true'
               and coalesce(pg_get_expr(p.polwithcheck, p.polrelid), 'true') = 'true'
             order by cmd) as open_commands,
       -- The restrictive policies of this role that hide rows: they narrow every permissive one.
       array(select p.polname::text
             from pg_policy p
             where p.polrelid = c.oid and not p.polpermissive and p.polcmd <> 'a'
               and (0::oid = any(p.polroles)
                    or exists (select from unnest(p.polroles) as r(oid)
                               where r.oid <> 0 and pg_has_role(current_user, r.oid, 'USAGE')))
               and not (coalesce(pg_get_expr(p.polqual, p.polrelid), 'true') = 'true'
                        and coalesce(pg_get_expr(p.polwithcheck, p.polrelid), 'true') = 'true')
             order by p.polname) as restricting,
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

-- name: referring_foreign_keys
-- The foreign keys that refer to this table, each as "table (constraint, ON DELETE ...)": those
-- that keep a row from being deleted while they refer to it (RESTRICT, NO ACTION), and those that
-- change the referring rows when it is (CASCADE, SET NULL, SET DEFAULT).
select coalesce(array_agg(k.said order by k.said) filter (where k.confdeltype in ('r', 'a')), '{}')
         as restricting,
       coalesce(array_agg(k.said order by k.said) filter (where k.confdeltype in ('c', 'n', 'd')),
                '{}') as changing
from (select c.confdeltype,
             format('%%s (%%s, ON DELETE %%s)', c.conrelid::regclass, c.conname,
                    case c.confdeltype when 'r' then 'RESTRICT' when 'a' then 'NO ACTION'
                                       when 'c' then 'CASCADE' when 'n' then 'SET NULL'
                                       else 'SET DEFAULT' end) as said
        from pg_constraint c
       where c.contype = 'f'
         and c.conparentid = 0  -- a partitioned table's key once, not once more per partition
         and c.confrelid = to_regclass(format('%%I.%%I', %(schema)s::text, %(table)s::text))) as k;

-- name: server_clock
-- The database's clock now (not the transaction's start), for doctor's clock check.
select clock_timestamp() as now;

-- name: row_security_enabled
-- Whether Row Level Security is enabled on an application table, for `maintctl grant`.
select coalesce((select c.relrowsecurity from pg_class c
                 where c.oid = to_regclass(format('%%I.%%I', %(schema)s::text, %(table)s::text))),
                false) as enabled;

-- name: policy_exists
-- Whether a policy of that name is on an application table (`grant --revoke` says what it dropped).
select exists (select from pg_policy p
               where p.polrelid = to_regclass(format('%%I.%%I', %(schema)s::text, %(table)s::text))
                 and p.polname = %(policy)s) as exists;

-- name: create_role_policy
-- `maintctl grant`: the maintenance role sees and changes every row of a table with Row Level
-- Security (its privileges on the table still say which commands it may run).
create policy {policy} on {table} as permissive for all to {role} using (true) with check (true);

-- name: drop_role_policy
-- `maintctl grant` (before creating it anew) and `grant --revoke`: the policy grant created.
drop policy {policy} on {table};

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
-- by MAXVALUE). The bound is read back from the partition's own definition: of a `timestamp
-- without time zone` created_at, as the instant it is in %(zone)s (naive_time_zone), whatever the
-- session's TimeZone.
select n.nspname as partition_schema, c.relname as partition, b.upper_bound,
       i.inhdetachpending as detach_pending, pt.partdefid <> 0 as has_default
from pg_class p
join pg_namespace pn on pn.oid = p.relnamespace
join pg_partitioned_table pt on pt.partrelid = p.oid
join pg_attribute a on a.attrelid = p.oid and a.attname = %(created_at)s
join pg_inherits i on i.inhparent = p.oid
join pg_class c on c.oid = i.inhrelid
join pg_namespace n on n.oid = c.relnamespace
cross join lateral (
  select (regexp_match(pg_get_expr(c.relpartbound, c.oid), $re$ TO \('([^']*)'\)$re$))[1]
         as bound
) as t
cross join lateral (
  select case when a.atttypid = 'timestamp'::regtype
              then t.bound::timestamp at time zone %(zone)s
              else t.bound::timestamptz end as upper_bound
) as b
where pn.nspname = %(schema)s and p.relname = %(table)s and p.relkind = 'p'
  and pt.partstrat = 'r' and pt.partnatts = 1 and pt.partattrs[0] = a.attnum
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
-- {created_at} reads the column as the rules do (a naive one: the instant it is in
-- naive_time_zone, maintctl.rules.generate).
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

-- name: vacuum_privileges
-- Whether this session may VACUUM each application table: MAINTAIN from PostgreSQL 17; before,
-- only the table's owner, the database's owner or a superuser.
select t.name as table_name,
       case when current_setting('server_version_num')::integer >= 170000
            then has_table_privilege(c.oid, 'MAINTAIN')
            else pg_has_role(current_user, c.relowner, 'USAGE')
                 or pg_has_role(current_user, d.datdba, 'USAGE')
                 or (select rolsuper from pg_roles where rolname = current_user) end
         as can_vacuum
from unnest(%(tables)s::text[]) with ordinality as t(name, position)
join pg_namespace n on n.nspname = %(schema)s
join pg_class c on c.relnamespace = n.oid and c.relname = t.name
cross join pg_database d
where d.datname = current_database()
order by t.position;

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

-- name: archive_table_columns
-- The columns of an application table as the archive records them (name, type, primary key part,
-- generated, identity), in table order.
select a.attname as name, format_type(a.atttypid, a.atttypmod) as type,
       coalesce(a.attnum = any (i.indkey), false) as key,
       a.attgenerated <> '' as generated, a.attidentity <> '' as identity
from pg_attribute a
left join pg_index i on i.indrelid = a.attrelid and i.indisprimary
where a.attrelid = to_regclass(format('%%I.%%I', %(schema)s::text, %(table)s::text))
  and a.attnum > 0 and not a.attisdropped
order by a.attnum;

-- name: archive_source
-- Which database a run's archive came from, for its manifest.
select current_database() as database;

-- name: restore_deleted_rows
-- Put one archived batch of whole rows back with their own keys; a row whose key exists again is
-- left alone. {table}, {columns} (those that can be inserted), {key} and {first_key} (its first
-- column) are identifiers. first_keys: the restored rows' first key column as text, as the
-- storage outbox holds an upload's key whatever its type (0009).
with archived as (
  select * from jsonb_populate_recordset(null::{table}, %(rows)s::jsonb)
), inserted as (
  insert into {table} ({columns}) overriding system value
  select {columns} from archived
  on conflict do nothing
  returning {key}
)
select jsonb_array_length(%(rows)s::jsonb) as archived, count(*)::integer as restored,
       coalesce(array_agg({first_key}::text), array[]::text[]) as first_keys
from inserted;

-- name: restore_compacted_values
-- Put one archived batch of compacted values back on their rows; a row already holding them is
-- left alone, a row gone since is counted. {table}; {targets}: the restored columns, and
-- {columns}/{archived_columns}, {key}/{archived_key}: them and the key in the table (t) and the
-- archive (a).
with archived as (
  select * from jsonb_populate_recordset(null::{table}, %(rows)s::jsonb)
), changed as (
  update {table} as t set ({targets}) = row({archived_columns})
    from archived as a
   where ({key}) = ({archived_key}) and row({columns}) is distinct from row({archived_columns})
  returning 1
)
select jsonb_array_length(%(rows)s::jsonb) as archived,
       (select count(*)::integer from changed) as restored,
       (select count(*)::integer from archived as a
         where not exists (select 1 from {table} as t where ({key}) = ({archived_key}))) as missing;

-- name: outbox_withdraw_uploads
-- Restored temp uploads keep their files: take their paths out of the storage outbox (the files
-- not handed to the storage cleaner yet). How many were still there. The keys as text, as the
-- outbox holds them (0009).
with hit as (
  select o.id from maintenance.storage_outbox o
   where o.upload_ids && %(ids)s::text[]
   for update
), kept as (
  select o.id,
         array_agg(f.upload_id order by f.n) filter (where f.upload_id <> all (%(ids)s::text[])) as upload_ids,
         array_agg(f.storage_path order by f.n) filter (where f.upload_id <> all (%(ids)s::text[])) as storage_paths,
         array_agg(f.size_bytes order by f.n) filter (where f.upload_id <> all (%(ids)s::text[])) as size_bytes,
         count(*) filter (where f.upload_id = any (%(ids)s::text[])) as withdrawn
    from maintenance.storage_outbox o
    join hit using (id)
   cross join lateral unnest(o.upload_ids, o.storage_paths, o.size_bytes)
     with ordinality as f (upload_id, storage_path, size_bytes, n)
   group by o.id
), shrunk as (
  update maintenance.storage_outbox o
     set upload_ids = kept.upload_ids, storage_paths = kept.storage_paths, size_bytes = kept.size_bytes
    from kept
   where o.id = kept.id and kept.upload_ids is not null
), emptied as (
  delete from maintenance.storage_outbox o using kept
   where o.id = kept.id and kept.upload_ids is null
)
select coalesce(sum(kept.withdrawn), 0)::integer as withdrawn from kept;

-- name: archive_db_schema
-- The archive database's own tables (maintctl writes them on first use; idempotent).
create schema if not exists maintctl_archive;
create table if not exists maintctl_archive.runs (
  run_id      bigint primary key,       -- maintenance.runs.id in the source database
  source      jsonb not null,           -- which database, schema, when it started
  started_at  timestamptz not null default now(),
  finished_at timestamptz,              -- null: no manifest (interrupted, or still running)
  manifest    jsonb                     -- per table: rows and batches, written last
);
create table if not exists maintctl_archive.batches (
  id         bigint generated always as identity primary key,
  run_id     bigint not null references maintctl_archive.runs on delete cascade,
  table_name text not null,
  action     text not null,             -- delete | compact
  columns    jsonb not null,
  rows       jsonb not null,            -- the batch's rows, an array
  row_count  integer not null,
  sha256     text not null,             -- of rows::text, checked by archive verify
  written_at timestamptz not null default now()
);
create index if not exists batches_run_id on maintctl_archive.batches (run_id, id);

-- name: archive_db_ready
-- Whether the archive database has maintctl's tables.
select to_regclass('maintctl_archive.batches') is not null as ready;

-- name: archive_db_start_run
-- A run begins in the archive database; false when that run is there already.
insert into maintctl_archive.runs (run_id, source) values (%(run_id)s, %(source)s)
on conflict (run_id) do nothing
returning true as started;

-- name: archive_db_durable_commit
-- The archive's commit waits for its WAL to be flushed, whatever the archive database's default.
select set_config('synchronous_commit', 'on', true);

-- name: archive_db_insert_batch
-- One batch, committed before the source's batch commits.
insert into maintctl_archive.batches (run_id, table_name, action, columns, rows, row_count, sha256)
select %(run_id)s, %(table)s, %(action)s, %(columns)s, b.rows, jsonb_array_length(b.rows),
       encode(sha256(convert_to(b.rows::text, 'UTF8')), 'hex')
from (select %(rows)s::jsonb as rows) as b;

-- name: archive_db_finish_run
-- The manifest, last: per table its rows and batches, as the archive database holds them.
update maintctl_archive.runs r
   set finished_at = %(finished_at)s,
       manifest = (select coalesce(jsonb_agg(jsonb_build_object('table', t.table_name,
                                   'action', t.action, 'rows', t.rows, 'batches', t.batches)
                                   order by t.table_name), '[]')
                     from (select b.table_name, min(b.action) as action, sum(b.row_count) as rows,
                                  count(*) as batches
                             from maintctl_archive.batches b where b.run_id = r.run_id
                            group by b.table_name) as t)
 where r.run_id = %(run_id)s;

-- name: archive_db_runs
-- Every run of the archive database with its manifest.
select run_id, finished_at, manifest from maintctl_archive.runs order by run_id;

-- name: archive_db_run
-- One run of the archive database.
select run_id, finished_at, manifest from maintctl_archive.runs where run_id = %(run_id)s;

-- name: archive_db_check_batches
-- Per table of a run, what its batches hold now, and the batches whose rows no longer match
-- their checksum or count.
select b.table_name, sum(jsonb_array_length(b.rows))::bigint as rows, count(*)::integer as batches,
       count(*) filter (where b.sha256 <> encode(sha256(convert_to(b.rows::text, 'UTF8')), 'hex')
                          or b.row_count <> jsonb_array_length(b.rows))::integer as damaged
from maintctl_archive.batches b
where b.run_id = %(run_id)s
group by b.table_name
order by b.table_name;

-- name: archive_db_tables
-- The tables of a run, in the order their first batch was written, with their columns.
select distinct on (b.table_name) b.table_name, b.action, b.columns, b.id
from maintctl_archive.batches b
where b.run_id = %(run_id)s
order by b.table_name, b.id;

-- name: archive_db_batches
-- The batches of one table of a run, a few at a time, in the order they were written.
select b.id, array(select r.value::text
                    from jsonb_array_elements(b.rows) with ordinality as r (value, n)
                    order by r.n) as rows
from maintctl_archive.batches b
where b.run_id = %(run_id)s and b.table_name = %(table)s and b.id > %(after)s
order by b.id
limit %(limit)s;

-- name: archive_db_prune
-- Runs (and their batches) that ended, or without a manifest began, before the limit.
delete from maintctl_archive.runs
where coalesce(finished_at, started_at) < now() - %(older_than)s::interval
returning run_id;

-- name: health_gate
-- The health gate before each batch, in one statement: the WAL position, the standby furthest
-- behind in replay (by bytes and by time), the slot that retains the most WAL, and whether this
-- role may read the standbys' positions (pg_stat_replication shows only pids to others). The
-- insert position, not pg_current_wal_lsn() (the write position): an asynchronous commit's WAL
-- may not be written yet.
with standbys as (
  select coalesce(nullif(application_name, ''), host(client_addr), pid::text) as name,
         pg_wal_lsn_diff(pg_current_wal_insert_lsn(), replay_lsn)::bigint as lag_bytes,
         (extract(epoch from replay_lag) * 1000)::bigint as lag_ms
  from pg_stat_replication
), slots as (
  select slot_name::text as name,
         pg_wal_lsn_diff(pg_current_wal_insert_lsn(), restart_lsn)::bigint as retained_bytes
  from pg_replication_slots
  where restart_lsn is not null
)
select pg_wal_lsn_diff(pg_current_wal_insert_lsn(), '0/0')::bigint as wal_position,
       pg_has_role(current_user, 'pg_read_all_stats', 'USAGE') as sees_standbys,
       (select count(*) from standbys)::integer as standbys,
       (select name from standbys where lag_bytes is not null
         order by lag_bytes desc limit 1) as bytes_standby,
       (select max(lag_bytes) from standbys) as lag_bytes,
       (select name from standbys where lag_ms is not null
         order by lag_ms desc limit 1) as time_standby,
       (select max(lag_ms) from standbys) as lag_ms,
       (select name from slots order by retained_bytes desc limit 1) as slot,
       (select max(retained_bytes) from slots) as slot_bytes;

-- name: recent_task_counts
-- For the anomaly guard: what the last real runs of a task saw eligible (rows touched plus rows
-- left when it stopped early), newest first; runs that failed, or refused, do not count.
select (t ->> 'rows')::bigint + coalesce((t ->> 'remaining')::bigint, 0) as eligible
from maintenance.runs r
cross join lateral jsonb_array_elements(r.tasks) as t
where not r.dry_run
  and r.status in ('succeeded', 'failed')
  and t ->> 'task' = %(task)s
  and t ->> 'status' in ('ok', 'stopped')
order by r.id desc
limit %(limit)s;

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

-- name: relation_named
-- What holds a name in the application schema (one of the rules' index names): its kind, and
-- whether it is an index of the table given.
select c.relkind::text as kind, coalesce(i.indrelid = to_regclass(%(table)s), false) as on_table
from pg_class c
join pg_namespace n on n.oid = c.relnamespace
left join pg_index i on i.indexrelid = c.oid
where n.nspname = %(schema)s and c.relname = %(name)s;

-- name: drop_index_concurrently
-- Clears a leftover of an interrupted build, or an index built from another definition.
drop index concurrently if exists {index};

-- name: create_index_concurrently
-- Builds one of the rules' indexes without blocking the application's writes.
create index concurrently {index} {definition};

-- name: rename_index
-- An index built beside the one it replaces takes that one's name (after dropping it).
alter index {index} rename to {name};

-- name: drop_added_column
-- Undoes a failed migrate's adding of one of maintctl's own columns (compacted_at): no value
-- was written to it yet.
alter table {table} drop column if exists {column};

-- name: comment_index
-- Marks one of maintctl's indexes with the digest of its definition.
comment on index {index} is {comment};

-- name: rule_step
-- One batch of a rule from where its walk stands (maintenance.rule_step, sql/rules/runner.sql);
-- with %(archive)s (not null), what it removed, as maintenance.archive_lines gives it (0012).
-- With %(lease_run_id)s (not null), the run lease is renewed at the end of the batch in the same
-- round trip (evaluated once the step's row is there); `renewed` is null without it.
select s.rows, s.next_position, s.blocked, s.unchanged, a.*,
       case when %(lease_run_id)s::bigint is not null
            then maintenance.renew_run_lease(%(lease_run_id)s::bigint, %(lease)s::interval)
       end as renewed
from maintenance.rule_step(%(rule)s, %(cutoff)s, %(threshold)s::interval, %(batch_size)s,
                           %(position)s::jsonb, %(run_id)s::bigint, %(cutoffs)s::jsonb,
                           %(archive)s::text[]) as s
cross join maintenance.archive_lines(s.removed) as a;

-- name: rule_count
-- What a rule would touch now, counted up to %(limit)s rows (null: all), through its count function;
-- %(cutoffs)s: the cutoff of each status, for a rule with a threshold per status (else null).
select {count}(%(cutoff)s, %(limit)s::bigint, %(cutoffs)s::jsonb) as rows;

-- name: left_rows_sentence
-- How a task words the rows its batches left (maintenance.left_rows_sentence, 0015).
select maintenance.left_rows_sentence(%(blocked)s::bigint, %(first)s::jsonb, %(unchanged)s::bigint);

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

-- name: procedure_comment
-- The comment of the pg_cron procedure: the digest of the thresholds its defaults were generated
-- from (maintctl.rules.generate.Thresholds); null when it is not installed.
select (select obj_description(p.oid, 'pg_proc')
        from pg_proc p
        join pg_namespace n on n.oid = p.pronamespace
        where n.nspname = 'maintenance' and p.proname = 'run_maintenance_cleanup') as comment;
