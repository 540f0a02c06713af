-- PostgreSQL 17 and newer: takes back the MAINTAIN that maintain.sql gives.
revoke maintain on {app}.import_runs, {app}.import_jobs, {app}.temp_uploads, {app}.raw_import_items
  from {role};
