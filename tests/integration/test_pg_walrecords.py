"""The WAL record scanner against WAL a real PostgreSQL 15 wrote: where the whole records end,
and the newest commit's time, as the server itself reports it."""

from __future__ import annotations

from datetime import datetime

from services.engines.postgres.walfile import parse_lsn
from services.engines.postgres.walrecords import scan_records
from tests.fixtures.postgres import PgCluster


def _segment(cluster: PgCluster) -> tuple[bytes, int, int]:
    name, lsn, size = cluster.psql(
        "SELECT pg_walfile_name(pg_current_wal_lsn()), pg_current_wal_lsn(), "
        "(SELECT setting FROM pg_settings WHERE name = 'wal_segment_size')"
    ).split("|")
    data = (cluster.data_dir / "pg_wal" / name).read_bytes()
    seg_size = int(size)
    return data, parse_lsn(lsn) // seg_size * seg_size, parse_lsn(lsn)


def test_the_scan_ends_at_the_servers_insert_position_and_finds_its_last_commit_time(
    pg_cluster: PgCluster,
) -> None:
    pg_cluster.configure(track_commit_timestamp="on")
    pg_cluster.restart()
    pg_cluster.execute("CREATE TABLE t (x int, pad text)")
    pg_cluster.execute("INSERT INTO t SELECT g, repeat('x', 300) FROM generate_series(1, 3000) g")
    pg_cluster.execute("INSERT INTO t VALUES (-1, 'last')")
    committed = pg_cluster.psql("SELECT pg_xact_commit_timestamp(xmin) FROM t WHERE x = -1")
    data, start, current = _segment(pg_cluster)

    whole = scan_records(data, segment_start=start)

    # The server's insert position is the next record's start: the last one's end, aligned.
    assert start + whole.resume == current
    assert whole.commit_time == datetime.fromisoformat(committed)
    # A scan resumed where an earlier one stopped finds the same end and commit.
    half = scan_records(data[: whole.end // 2], segment_start=start)
    assert half.end < whole.end
    resumed = scan_records(data, segment_start=start, start=half.resume)
    assert (resumed.end, resumed.commit_time) == (whole.end, whole.commit_time)


def test_bytes_cut_inside_a_record_or_zero_filled_end_at_the_last_whole_record(
    pg_cluster: PgCluster,
) -> None:
    pg_cluster.execute("CREATE TABLE t (x int)")
    pg_cluster.execute("INSERT INTO t SELECT generate_series(1, 2000)")
    data, start, current = _segment(pg_cluster)
    end = current - start
    zero_filled = data[:end] + bytes(len(data) - end)
    assert scan_records(zero_filled, segment_start=start).resume == end
    cut = scan_records(data[: end - 3], segment_start=start)
    assert cut.end < end - 3
    assert scan_records(data[: cut.end], segment_start=start).end == cut.end
