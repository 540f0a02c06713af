-- What the rules share: one step function for every rule (the CLI's batch loop and the pg_cron
-- procedure both step through it), and the procedure itself. A template for `maintctl migrate`
-- (maintctl/rules/generate.py): the placeholders are built from the list of rules, so adding a
-- rule adds it here too.

-- section: functions
-- One batch of the named rule from where its walk stands: the rows it touched and where the next
-- batch starts (null: the walk is done).
create or replace function maintenance.rule_step(
  p_rule text, p_cutoff timestamptz, p_threshold interval, p_batch_size integer,
  p_position jsonb, p_run_id bigint, p_cutoffs jsonb, out rows integer, out next_position jsonb)
language plpgsql volatile set search_path = pg_catalog, pg_temp
as $$
begin
  {step_dispatch}
  else
    raise exception 'no maintenance rule named %', p_rule using errcode = 'invalid_parameter_value';
  end if;
end
$$;

-- Each rule's count with no per-status cutoffs, as maintenance_status and pending_counts call them.
{count_wrappers}

-- The whole of `maintctl run` for pg_cron: `call maintenance.run_maintenance_cleanup();`. Each batch
-- is committed on its own, so it must be called outside an explicit transaction (inside one, its
-- first COMMIT fails before anything is locked or changed). A procedure that commits cannot carry a
-- SET clause, so it pins search_path itself in each transaction and names every object with its
-- schema; what runs after its last COMMIT is qualified with pg_catalog, whatever the caller's
-- search_path. It honours the pause switch and takes the run lease of 0004 for the CLI's default
-- 60 s, keeps the ledger as the CLI does (host 'database'), and steps each rule with rule_step. A
-- cancel (or the CALL's statement_timeout) inside a batch records the run as interrupted and
-- releases the lease before the error reaches the caller. A run in which a task failed ends, once
-- its ledger row is committed, in an error naming the failed tasks, so that pg_cron's
-- cron.job_run_details shows the failure.
create or replace procedure maintenance.run_maintenance_cleanup(
  {threshold_parameters},
  batch_size integer default 5000,
  lock_timeout interval default interval '5 seconds',
  history_retention interval default interval '90 days',
  force boolean default false,
  inout summary jsonb default null)
language plpgsql
as $$
declare
  run_thresholds pg_catalog.jsonb;
  skipped_because pg_catalog.text;
  holder record;
  ledger_id pg_catalog.int8;
  task pg_catalog.text;
  threshold pg_catalog.interval;
  cutoff pg_catalog.timestamptz;
  task_started pg_catalog.timestamptz;
  n pg_catalog.int4;
  position pg_catalog.jsonb;
  total pg_catalog.int8;
  batches pg_catalog.int4;
  failure pg_catalog.text;
  failed_tasks pg_catalog.text;
  cancelled pg_catalog.bool := false;
  lease constant pg_catalog.interval := interval '60 seconds';
  task_results pg_catalog.jsonb := pg_catalog.jsonb_build_array();
  task_errors pg_catalog.jsonb := pg_catalog.jsonb_build_array();
begin
  commit;
  perform pg_catalog.set_config('search_path', 'pg_catalog, pg_temp', true);
  perform maintenance.set_lock_timeout(lock_timeout);
  perform maintenance.check_cleanup_arguments(array[{thresholds_array}], batch_size, force);
  run_thresholds := jsonb_build_object({thresholds_json}, 'batchSize', batch_size);

  select format('maintenance is paused by %s: %s (maintctl resume)',
                coalesce(p.paused_by, '?'), coalesce(p.reason, 'no reason given'))
    into skipped_because
    from maintenance.pause p where p.paused;
  if skipped_because is null
     and not maintenance.take_run_lease('database', pg_backend_pid(), lease) then
    select * into holder from maintenance.run_lease_holder();
    skipped_because := 'another maintenance run is in progress'
      || coalesce(format(' (host %s, started %s UTC)', holder.host,
                         to_char(holder.started_at at time zone 'UTC', 'YYYY-MM-DD HH24:MI:SS')),
                  '');
  end if;
  if skipped_because is not null then
    insert into maintenance.runs (command, host, version, thresholds, status, skipped, finished_at)
    values ('run_maintenance_cleanup', 'database', 'sql', run_thresholds, 'skipped',
            skipped_because, now())
    returning id into ledger_id;
    summary := jsonb_build_object('runId', ledger_id, 'skipped', skipped_because);
    return;
  end if;

  -- The lease was taken in this transaction: if anything fails before the commit, it was not.
  perform maintenance.mark_abandoned_runs();
  insert into maintenance.runs (command, host, version, thresholds)
  values ('run_maintenance_cleanup', 'database', 'sql', run_thresholds)
  returning id into ledger_id;
  perform maintenance.attach_run_lease(ledger_id);
  commit;

  <<tasks>>
  foreach task in array array[{rule_names}]::text[] loop
    perform pg_catalog.set_config('search_path', 'pg_catalog, pg_temp', true);
    perform maintenance.set_lock_timeout(lock_timeout);
    threshold := {threshold_of_task};
    cutoff := now() - maintenance.absolute(threshold);
    task_started := clock_timestamp();
    total := 0;
    batches := 0;
    failure := null;
    position := null;
    loop
      begin
        -- Renewed at the start (the row stays locked for the batch) and at the end of each batch.
        if not maintenance.renew_run_lease(ledger_id, lease) then
          raise exception 'the run lease lapsed and another run took it over'
            using errcode = 'lock_not_available';
        end if;
        select s.rows, s.next_position into n, position
          from maintenance.rule_step(task, cutoff, threshold, batch_size, position, ledger_id,
                                     null) as s;
        perform maintenance.renew_run_lease(ledger_id, lease);
        batches := batches + 1;
        total := total + n;
      exception
        when query_canceled then  -- a cancel or the CALL's own timeout ends the whole run
          cancelled := true;
          failure := 'canceling statement: the batch in flight rolled back';
        when others then
          failure := sqlerrm;
      end;
      commit;
      perform pg_catalog.set_config('search_path', 'pg_catalog, pg_temp', true);
      perform maintenance.set_lock_timeout(lock_timeout);
      exit tasks when cancelled;
      exit when failure is not null or position is null;
    end loop;
    task_results := task_results || jsonb_build_object(
      'task', task,
      'status', case when failure is null then 'ok' else 'failed' end,
      'rows', total,
      'batches', batches,
      'durationMs', floor(extract(epoch from clock_timestamp() - task_started) * 1000)::bigint,
      'cutoff', maintenance.json_time(cutoff),
      'error', failure);
    if failure is not null then
      task_errors := task_errors || to_jsonb(task || ': ' || failure);
    end if;
  end loop;

  if cancelled then
    task_results := task_results || jsonb_build_object(
      'task', task, 'status', 'interrupted', 'rows', total, 'batches', batches,
      'durationMs', floor(extract(epoch from clock_timestamp() - task_started) * 1000)::bigint,
      'cutoff', maintenance.json_time(cutoff), 'error', failure);
  end if;
  update maintenance.runs
     set status = case when cancelled then 'interrupted'
                       when jsonb_array_length(task_errors) = 0 then 'succeeded'
                       else 'failed' end,
         finished_at = now(), tasks = task_results, errors = task_errors
   where id = ledger_id;
  perform maintenance.prune_runs(history_retention);
  perform maintenance.release_run_lease(ledger_id);
  select string_agg(e.value, '; ') into failed_tasks from jsonb_array_elements_text(task_errors) e;
  commit;
  -- From here on the caller's search_path applies: everything is qualified.
  if cancelled then
    raise exception 'canceling statement due to user request or statement timeout'
      using errcode = 'query_canceled',
            detail = pg_catalog.format('maintenance run %s was interrupted; its lease is released',
                                       ledger_id);
  end if;
  if failed_tasks is not null then
    raise exception '%', pg_catalog.format('maintenance run %s failed: %s', ledger_id, failed_tasks)
      using errcode = 'P0001',
            hint = pg_catalog.format('the ledger has the details: '
                                     'select * from maintenance.runs where id = %s', ledger_id);
  end if;
  summary := pg_catalog.jsonb_build_object('runId', ledger_id, 'tasks', task_results,
                                           'errors', task_errors);
end
$$;
