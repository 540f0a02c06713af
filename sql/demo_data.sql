-- A realistic sample for `make demo` (run with search_path set to the application schema): a few
-- hundred rows per table, with rows past every threshold and rows inside each one, every row at
-- least an hour from its threshold, so that the counts stay the same for an hour.

-- Runs. Completed runs over the last 60 days.
insert into import_runs (status, created_at, started_at, heartbeat_at, finished_at)
select 'completed', t, t + interval '1 minute', t + interval '9 minutes', t + interval '10 minutes'
from (select now() - (n * interval '5 hours') as t from generate_series(1, 200) as n) as s;

-- Stuck: processing, last heartbeat 25 hours to 3 days ago.
insert into import_runs (status, created_at, started_at, heartbeat_at)
select 'processing', now() - interval '4 days', now() - interval '4 days',
       now() - interval '25 hours' - (n * interval '4 hours')
from generate_series(1, 12) as n;

-- Stuck without a heartbeat: started 30 hours ago and never heard of since.
insert into import_runs (status, created_at, started_at)
select 'processing', now() - interval '31 hours', now() - interval '30 hours'
from generate_series(1, 3);

-- Alive: started days ago but heartbeating, and one an hour inside the 24h threshold.
insert into import_runs (status, created_at, started_at, heartbeat_at)
select 'processing', now() - interval '3 days', now() - interval '3 days', now() - interval '1 minute'
from generate_series(1, 5);
insert into import_runs (status, created_at, started_at, heartbeat_at)
values ('processing', now() - interval '2 days', now() - interval '2 days',
        now() - interval '23 hours');

-- Failed runs: 25 ended 31 to 90 days ago (their raw items go), 15 ended within the last
-- 30 days (kept), one of them an hour inside the threshold.
insert into import_runs (status, created_at, started_at, finished_at, error_message)
select 'failed', t - interval '1 hour', t - interval '1 hour', t, 'CSV parse error on line 12'
from (select now() - interval '31 days' - (n * interval '2 days 10 hours') as t
      from generate_series(0, 24) as n) as s;
insert into import_runs (status, created_at, started_at, finished_at, error_message)
select 'failed', t - interval '1 hour', t - interval '1 hour', t, 'upstream API returned 503'
from (select now() - (n * interval '2 days') as t from generate_series(1, 14) as n) as s;
insert into import_runs (status, created_at, started_at, finished_at, error_message)
values ('failed', now() - interval '31 days', now() - interval '31 days',
        now() - interval '29 days 23 hours', 'row limit exceeded');

insert into import_runs (status, created_at) select 'pending', now() - interval '5 minutes'
from generate_series(1, 10);
insert into import_runs (status, created_at, finished_at)
select 'cancelled', now() - (n * interval '3 days'), now() - (n * interval '3 days')
from generate_series(1, 8) as n;

-- Raw items: ten per failed run, three per completed run.
insert into raw_import_items (run_id, created_at, data, error)
select r.id, r.created_at, jsonb_build_object('line', n, 'sku', 'SKU-' || r.id || '-' || n),
       case when n = 10 then 'invalid price' end
from import_runs r cross join generate_series(1, 10) as n
where r.status = 'failed';
insert into raw_import_items (run_id, created_at, data)
select r.id, r.created_at, jsonb_build_object('line', n, 'sku', 'SKU-' || r.id || '-' || n)
from import_runs r cross join generate_series(1, 3) as n
where r.status = 'completed';

-- Temp uploads: one every 10 minutes or so over the last 72 hours (two thirds past the 24h TTL,
-- by an hour at least; the others inside it by an hour at least), and one an hour inside it.
insert into temp_uploads (created_at, storage_path, size_bytes)
select case when n < 144 then now() - n * interval '9 minutes 30 seconds'
            when n < 150 then now() - interval '25 hours' - (n - 144) * interval '10 minutes'
            else now() - n * interval '10 minutes' end,
       'uploads/tmp/' || md5(n::text) || '.csv', 1000 + n * 37
from generate_series(1, 432) as n;
insert into temp_uploads (created_at, storage_path, size_bytes)
values (now() - interval '23 hours', 'uploads/tmp/just-inside.csv', 2048);

-- Jobs: one per run, with the bulky payload, result and log that compaction removes.
insert into import_jobs (run_id, status, created_at, finished_at, payload, result, log)
select r.id,
       case r.status when 'processing' then 'running' when 'pending' then 'queued' else r.status end,
       r.created_at,
       r.finished_at,
       jsonb_build_object('source', 's3://imports/batch-' || r.id || '.csv',
                          'options', jsonb_build_object('delimiter', ',', 'header', true),
                          'columns', (select jsonb_agg('column_' || c) from generate_series(1, 40) c)),
       case r.status
         when 'completed' then jsonb_build_object('rowsRead', 1200, 'rowsImported', 1187,
                                                  'rowsRejected', 13, 'warnings', 2)
         when 'failed' then jsonb_build_object('rowsRead', 40, 'rowsImported', 0,
                                               'error', r.error_message)
       end,
       (select string_agg(format('INFO processed chunk %s of %s for run %s', c, 30, r.id), E'\n')
        from generate_series(1, 30) c)
       || case when r.status = 'failed' then E'\nERROR ' || r.error_message else '' end
from import_runs r;
-- A job finished an hour inside the 7-day threshold.
insert into import_jobs (status, created_at, finished_at, payload, result, log)
values ('completed', now() - interval '7 days', now() - interval '6 days 23 hours',
        '{"source": "s3://imports/edge.csv"}', '{"rowsImported": 5}', 'done');
