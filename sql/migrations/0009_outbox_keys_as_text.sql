-- The storage outbox holds the key of each deleted upload as text: the uploads' key may be of any
-- orderable type (bigint, integer, uuid, text), and one outbox serves them all. A bigint key reads
-- back as its digits (maintctl.outbox gives an integer key to the storage cleaner as a number).
drop view maintenance.storage_outbox_files;
alter table maintenance.storage_outbox
  alter column upload_ids type text[] using upload_ids::text[];
alter table maintenance.storage_outbox alter column upload_ids set storage external;

-- The outbox one file per row, for people and for the storage cleaner's own checks (as 0006).
create view maintenance.storage_outbox_files with (security_invoker = true) as
  select o.id as outbox_id, o.run_id, o.deleted_at, f.upload_id, f.storage_path, f.size_bytes
  from maintenance.storage_outbox o
  cross join lateral unnest(o.upload_ids, o.storage_paths, o.size_bytes)
    as f (upload_id, storage_path, size_bytes);
