"""Naive timestamps and partitions (DESIGN.md, "Real databases"): when temp_uploads is
range-partitioned by a `timestamp without time zone` created_at that the application writes in UTC,
purge-temp reads each partition's bound, and the rows of a detached one, in naive_time_zone (UTC)
as the rule's generated SQL does, whatever the session's TimeZone: the partitions past the TTL are
dropped, the one straddling the cutoff is trimmed row by row, no fresh upload is lost."""

from __future__ import annotations

import json
from datetime import datetime, timedelta

import psycopg
import pytest
from psycopg import sql

from tests.conftest import Cli
from tests.data import Conn

# Partitions by their bounds, in hours from the cutoff (24h before UTC now, naive): three wholly
# past it, one straddling it by an hour before and six after, one of the last 18 hours and more.
PARTITIONS = {
    "uploads_p0": (-72, -48),
    "uploads_p1": (-48, -24),
    "uploads_p2": (-24, -1),
    "uploads_p3": (-1, 6),
    "uploads_p4": (6, 30),
}
EXPIRED = {"uploads_p0", "uploads_p1", "uploads_p2"}


def partition_naive_uploads(conn: Conn, cutoff: datetime) -> None:
    conn.execute("drop table temp_uploads")
    conn.execute(
        "create table temp_uploads ("
        " id bigint generated always as identity,"
        " created_at timestamp not null default (now() at time zone 'UTC'),"
        " storage_path text not null,"
        " size_bytes bigint,"
        " primary key (id, created_at)"
        ") partition by range (created_at)"
    )
    for name, (start, end) in PARTITIONS.items():
        conn.execute(
            sql.SQL(
                "create table {} partition of temp_uploads for values from ({}) to ({})"
            ).format(
                sql.Identifier(name),
                sql.Literal(cutoff + timedelta(hours=start)),
                sql.Literal(cutoff + timedelta(hours=end)),
            )
        )
    # CREATE INDEX CONCURRENTLY cannot index a partitioned table: its owner builds maintctl's
    # index as pg_partman's users do, and migrate keeps an index of that name.
    conn.execute(
        "create index maintctl_temp_uploads_created_at_id on temp_uploads (created_at, id)"
    )


@pytest.mark.parametrize("time_zone", ["Pacific/Kiritimati", "Asia/Kolkata", "America/New_York"])
def test_naive_partitions_past_the_ttl_are_dropped_and_no_fresh_upload_is_lost(
    bare_cli: Cli, bare_db_url: str, time_zone: str
) -> None:
    with psycopg.connect(bare_db_url, autocommit=True) as conn:
        row = conn.execute(
            "select date_trunc('second', now() at time zone 'UTC'), current_database()"
        ).fetchone()
        assert row is not None
        utc_now, dbname = row
        cutoff = utc_now - timedelta(hours=24)
        partition_naive_uploads(conn, cutoff)
        # One upload every hour on the half hour, from 95 and a half hours ago to half an hour
        # ago: none within half an hour of the cutoff.
        conn.execute(
            "insert into temp_uploads (created_at, storage_path) "
            "select %s - (h * interval '1 hour') - interval '30 minutes', 'tmp/' || h "
            "from generate_series(0, 95) as h",
            [utc_now],
        )
        fresh = {
            row[0]
            for row in conn.execute(
                "select id from temp_uploads where created_at >= %s", [cutoff]
            ).fetchall()
        }
        conn.execute(
            sql.SQL("alter database {} set timezone = {}").format(
                sql.Identifier(dbname), sql.Literal(time_zone)
            )
        )
        assert bare_cli("migrate").exit_code == 0

        result = bare_cli("purge-temp", "--json")

        remaining = {
            row[0]
            for row in conn.execute(
                "select inhrelid::regclass::text from pg_inherits "
                "where inhparent = 'temp_uploads'::regclass"
            ).fetchall()
        }
        kept = {row[0] for row in conn.execute("select id from temp_uploads").fetchall()}
        outbox = conn.execute("select count(*) from maintenance.storage_outbox_files").fetchone()

    assert result.exit_code == 0, result.stdout + result.stderr
    assert len(fresh) == 24
    assert kept == fresh  # every upload past the TTL gone, none inside it
    assert json.loads(result.stdout)["tempUploadsPurged"] == 72
    assert remaining == set(PARTITIONS) - EXPIRED  # dropped whole, and only those
    assert outbox == (72,)
