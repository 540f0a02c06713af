-- `maintctl grant ROLE`, for the health gate: pg_stat_replication shows the standbys' replay
-- positions only to members of pg_read_all_stats (pg_monitor includes it; this is the narrower).
-- pg_replication_slots and pg_current_wal_lsn() need nothing. Run in its own savepoint: a role
-- that may not grant it still gets the rest.
grant pg_read_all_stats to {role};
