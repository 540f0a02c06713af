-- `maintctl grant ROLE --revoke`: takes back what grant_stats.sql gives.
revoke pg_read_all_stats from {role};
