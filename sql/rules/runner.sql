-- What the rules share: one step function for every rule (the CLI's batch loop and the pg_cron
-- procedure both step through it), and the procedure itself. A template for `maintctl migrate`
-- (maintctl/rules/generate.py): the placeholders are built from the list of rules, so adding a
-- rule adds it here too.

-- section: functions
-- One batch of the named rule from where its walk stands: the rows it touched and where the next
-- batch starts (null: the walk is done). With p_archive (not null: for a rule that updates, the
-- columns whose old values it keeps), `removed` is what the batch removed, for the archive
-- (docs/archive.md): an object of its action (delete, compact or mark) and its rows; null
-- without it.
--
-- A row the rule cannot change (a foreign key restricting its delete, a trigger that raises, a
-- check) fails the rule's step, which then rolls back to its start and says so (`blocked`). The
-- batch is then split: the step is tried again over half as many rows, down to that row alone,
-- which is left as it is and named in `blocked` (an array of maintenance.blocked_row objects);
-- the walk goes on past it, and the rest of the batch is done in pieces that double again. A
-- batch without such a row is one step, as before. Each piece is a subtransaction or two: after
-- 24 of them, once the batch got somewhere, it ends, and the next batch carries on (past 64 in one
-- transaction, every session's snapshots would look up pg_subtrans). Deferred constraints are
-- checked at each statement here, so that a deferrable foreign key fails its piece too and not
-- the batch's COMMIT. `unchanged` sums what the pieces left without an error.
create or replace function maintenance.rule_step(
  p_rule text, p_cutoff timestamptz, p_threshold interval, p_batch_size integer,
  p_position jsonb, p_run_id bigint, p_cutoffs jsonb, p_archive text[] default null,
  out rows integer, out next_position jsonb, out removed jsonb, out blocked jsonb,
  out unchanged integer)
language plpgsql volatile set search_path = pg_catalog, pg_temp
as $$
declare
  piece_size integer := p_batch_size;  -- of the next piece
  uncovered integer := p_batch_size;  -- of the batch's rows, those no piece has covered yet
  pieces integer := 0;
  piece record;
begin
  set constraints all immediate;
  rows := 0;
  unchanged := 0;
  next_position := p_position;
  loop
    {step_dispatch}
    else
      raise exception 'no maintenance rule named %', p_rule using errcode = 'invalid_parameter_value';
    end if;
    pieces := pieces + 1;
    if piece.blocked is null then
      rows := rows + piece.rows;
      unchanged := unchanged + piece.unchanged;
      removed := maintenance.archive_merge(removed, piece.removed);
      uncovered := uncovered - piece_size;
    elsif piece_size > 1 then
      piece_size := (piece_size + 1) / 2;
      continue when pieces < 24 or (rows = 0 and blocked is null);
      exit;
    else
      blocked := coalesce(blocked, '[]') || jsonb_build_array(piece.blocked);
      uncovered := uncovered - 1;
    end if;
    next_position := piece.next_position;
    exit when next_position is null or uncovered <= 0 or pieces >= 24;
    piece_size := least(uncovered, piece_size * 2);
  end loop;
end
$$;

-- Each rule's count with no per-status cutoffs, as maintenance_status and pending_counts call them.
{count_wrappers}

-- The whole of `maintctl run` for pg_cron: `call maintenance.run_maintenance_cleanup();`: the four
-- rules the policy applies, then its [[purge]] rules. Its thresholds default to the policy's as
-- migrate resolved them (generated: see the procedure's comment); a rule with a threshold per
-- status defaults to null, each status's own, and a threshold given is every status's, as a flag
-- is for the CLI. A [[purge]] rule's threshold is its older_than. Each batch is committed on its
-- own, so it must be called outside an explicit transaction (inside one, its first COMMIT fails
-- before anything is locked or changed). A procedure that commits cannot carry a
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
  rule_thresholds pg_catalog.jsonb;  -- each rule's threshold, by name
  status_thresholds pg_catalog.jsonb;  -- by rule name, each status's threshold (none given)
  cutoffs pg_catalog.jsonb;
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
  blocked pg_catalog.int8;  -- the task's rows left as they are (maintenance.rule_step)
  first_blocked pg_catalog.jsonb;
  unchanged pg_catalog.int8;  -- and those left without an error
  step record;
  failed_tasks pg_catalog.text;
  cancelled pg_catalog.bool := false;
  lease constant pg_catalog.interval := interval '60 seconds';
  task_results pg_catalog.jsonb := pg_catalog.jsonb_build_array();
  task_errors pg_catalog.jsonb := pg_catalog.jsonb_build_array();
begin
  commit;
  perform pg_catalog.set_config('search_path', 'pg_catalog, pg_temp', true);
  perform maintenance.set_lock_timeout(lock_timeout);
  rule_thresholds := {rule_thresholds};
  status_thresholds := {status_thresholds};
  perform maintenance.check_cleanup_arguments(
    array(select t.value::interval from jsonb_each_text(rule_thresholds) t)
      || array(select s.value::interval
                 from jsonb_each(status_thresholds) r, jsonb_each_text(r.value) s),
    batch_size, force);
  -- As the CLI's ledger shows them: a threshold per status only where it applies.
  run_thresholds := jsonb_strip_nulls(
    jsonb_build_object({thresholds_json}, 'batchSize', batch_size));

  -- Worded as the CLI words it (maintctl.ledger.pause_sentence), so the ledger reads the same
  -- whichever of the two a pause stopped.
  select 'maintenance is paused'
         || coalesce(to_char(p.paused_at at time zone 'UTC', ' "since" YYYY-MM-DD HH24:MI "UTC"'), '')
         || coalesce(' by ' || nullif(p.paused_by, ''), '')
         || coalesce(': ' || nullif(p.reason, ''), '')
         || ' (maintctl resume)'
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
    threshold := (rule_thresholds ->> task)::interval;
    -- With a threshold per status, each status's cutoff, and the latest of them bounds the walk.
    select jsonb_object_agg(s.key, now() - maintenance.absolute(s.value::interval)),
           max(now() - maintenance.absolute(s.value::interval))
      into cutoffs, cutoff
      from jsonb_each_text(status_thresholds -> task) s;
    cutoff := coalesce(cutoff, now() - maintenance.absolute(threshold));
    task_started := clock_timestamp();
    total := 0;
    batches := 0;
    failure := null;
    blocked := 0;
    first_blocked := null;
    unchanged := 0;
    position := null;
    loop
      begin
        -- Renewed at the start (the row stays locked for the batch) and at the end of each batch.
        if not maintenance.renew_run_lease(ledger_id, lease) then
          raise exception 'the run lease lapsed and another run took it over'
            using errcode = 'lock_not_available';
        end if;
        select * into step
          from maintenance.rule_step(task, cutoff, threshold, batch_size, position, ledger_id,
                                     cutoffs) as s;
        perform maintenance.renew_run_lease(ledger_id, lease);
        position := step.next_position;
        batches := batches + 1;
        total := total + step.rows;
        blocked := blocked + coalesce(jsonb_array_length(step.blocked), 0);
        first_blocked := coalesce(first_blocked, step.blocked -> 0);
        unchanged := unchanged + step.unchanged;
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
    -- The rows left, as the CLI words them, after what ended the task.
    failure := nullif(concat_ws('; ', failure,
                                maintenance.left_rows_sentence(blocked, first_blocked, unchanged)),
                      '');
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

-- What the procedure's defaults were generated from (maintctl.rules.generate.Thresholds): migrate
-- installs it anew when the policy's thresholds change.
comment on procedure maintenance.run_maintenance_cleanup is {thresholds_digest};
