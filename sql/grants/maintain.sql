-- PostgreSQL 17 and newer: MAINTAIN, so that `maintctl run --vacuum` as {role} can VACUUM (ANALYZE)
-- the four application tables. Before 17 only their owner can: grant.py says so instead.
grant maintain on {app}.import_runs, {app}.import_jobs, {app}.temp_uploads, {app}.raw_import_items
  to {role};
