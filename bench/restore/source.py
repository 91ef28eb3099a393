"""The database both restores bring back, and the WAL both replay.

One PostgreSQL cluster (`bench.archive.cluster.BenchCluster`: run as the database OS user, on
its unix socket only, data checksums on) in the run's directory:

1. **load** (`load_table`), with `wal_level=minimal` and archiving off, so the bulk load writes
   no WAL: `bench_rows` created and filled in one transaction until its heap reaches the asked
   size, its primary key built, then `VACUUM (FREEZE, ANALYZE)`. Rows are ~800 bytes: two
   sha512 digests in hex (half the entropy of random bytes) and a repeated sentence, so lz4
   stores them at about a third and zstd at about a fifth — compressible like real rows, not
   like a column of zeros.
2. **archiving** (`archive_both`): restarted with `wal_level=replica` and an `archive_command`
   that feeds both archives, ours first (walpush into the spool), then `pgbackrest
   archive-push`; PostgreSQL counts a segment archived only when both took it.
3. the base backups (ours, then pgBackRest's; see `run.py`).
4. **WAL** (`generate_wal`): rounds of a committed transaction inserting new rows and updating a
   slice of the loaded ones, each followed by `VACUUM (FREEZE)` (what autovacuum would do: a
   restored table is then all-visible, so the timed `count(*)` reads pages instead of writing
   hint bits), until the asked WAL volume was written after the backups.
5. **close** (`close_wal`): the position after the last commit is the restores' target; the
   segment is switched and the benchmark waits until PostgreSQL's archiver reports it done
   (`pg_stat_archiver`), which it does only after every earlier segment.

Autovacuum is off on every cluster of the benchmark, so nothing runs that the workload did not
ask for (on the source, nor on a restored cluster while it is being counted).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from bench.archive.backlog import wait_until
from bench.archive.cluster import BenchCluster, SettingValue, parse_lsn

TABLE = "bench_rows"
LOAD_BATCH_ROWS = 20_000
"""Rows per INSERT while loading (~16 MiB): the load stops within one batch of the size."""
ROUND_INSERT_ROWS = 20_000
ROUND_UPDATE_ROWS = 5_000
"""Each WAL round (~25 MiB of WAL): new rows, and loaded rows updated (a moving slice)."""
SALT_SHIFT = 40
"""Updated rows get new digests: the id XOR (round << 40), beyond any id."""

SERVER_SETTINGS: dict[str, SettingValue] = {
    "max_wal_size": "2GB",
    "checkpoint_timeout": "30min",
    "autovacuum": False,
}
"""The source's settings while archiving, and the pgBackRest-restored cluster's (ours inherits
them with the data directory)."""
LOAD_SETTINGS: dict[str, SettingValue] = {
    **SERVER_SETTINGS,
    "wal_level": "minimal",
    "max_wal_senders": 0,
    "archive_mode": False,
}

MIB = 1 << 20


def _payload(column: str, salt: str) -> str:
    """~750 characters from the bigint `column`: two sha512 digests in hex (of it XOR `salt`,
    and of its negation) and a repeated sentence."""
    return (
        f"encode(sha512(int8send({column} # {salt})), 'hex') || "
        f"encode(sha512(int8send(-({column} # {salt}))), 'hex') || "
        "repeat(' tidemark restore benchmark row', 16)"
    )


_ROW = "i, (i % 9973)::int, timestamptz '2024-01-01' + i * interval '1 second', " + _payload(
    "i", "0"
)
"""The select list of the row with id `i`."""


@dataclass(frozen=True)
class Loaded:
    rows: int
    heap_bytes: int
    total_bytes: int
    """Heap, index and the rest (`pg_total_relation_size`)."""


def load_table(cluster: BenchCluster, data_mib: int) -> Loaded:
    """Create and fill the table (the cluster runs with `LOAD_SETTINGS`)."""
    # Constants and integers only (here and below): nothing from outside reaches the SQL.
    cluster.psql(
        f"""DO $$
DECLARE n bigint := 0;
BEGIN
  CREATE TABLE {TABLE} (
    id bigint NOT NULL, account int NOT NULL, created timestamptz NOT NULL, payload text NOT NULL
  );
  WHILE pg_relation_size('{TABLE}') < {data_mib * MIB} LOOP
    INSERT INTO {TABLE} SELECT {_ROW}
      FROM generate_series(n + 1, n + {LOAD_BATCH_ROWS}) i;
    n := n + {LOAD_BATCH_ROWS};
  END LOOP;
  ALTER TABLE {TABLE} ADD PRIMARY KEY (id);
END $$"""  # noqa: S608
    )
    cluster.psql(f"VACUUM (FREEZE, ANALYZE) {TABLE}")
    sizes = f"pg_relation_size('{TABLE}'), pg_total_relation_size('{TABLE}')"
    rows, heap, total = cluster.psql(f"SELECT count(*), {sizes} FROM {TABLE}").split("|")  # noqa: S608
    return Loaded(int(rows), int(heap), int(total))


def archive_both(ours: str, theirs: str | None) -> str:
    """One `archive_command` feeding our spool and, when it runs here, pgBackRest's repository.

    Used by this benchmark only: pgBackRest refuses to take a backup unless `archive_command`
    runs pgBackRest, and both restores must replay the very same segments."""
    return ours if theirs is None else f"{ours} && {theirs}"


@dataclass(frozen=True)
class Generated:
    inserted: int
    start_lsn: int
    end_lsn: int

    @property
    def wal_bytes(self) -> int:
        return self.end_lsn - self.start_lsn


def generate_wal(
    cluster: BenchCluster, wal_mib: int, loaded_rows: int, log: Callable[[str], None]
) -> Generated:
    """Committed rounds of inserts and updates (and a vacuum) until `wal_mib` MiB of WAL."""
    start = parse_lsn(cluster.psql("SELECT pg_current_wal_insert_lsn()"))
    goal = start + wal_mib * MIB
    next_id = loaded_rows + 1
    inserted = 0
    round_no = 0
    lsn = start
    reported = time.monotonic()
    while lsn < goal:
        round_no += 1
        first = (round_no - 1) * ROUND_UPDATE_ROWS % max(1, loaded_rows - ROUND_UPDATE_ROWS) + 1
        salt = str(round_no << SALT_SHIFT)
        # One transaction (psql sends the two statements as one query string).
        cluster.psql(
            f"INSERT INTO {TABLE} SELECT {_ROW} "  # noqa: S608
            f"FROM generate_series({next_id}, {next_id + ROUND_INSERT_ROWS - 1}) i; "
            f"UPDATE {TABLE} SET account = account + 1, payload = {_payload('id', salt)} "
            f"WHERE id BETWEEN {first} AND {first + ROUND_UPDATE_ROWS - 1}"
        )
        next_id += ROUND_INSERT_ROWS
        inserted += ROUND_INSERT_ROWS
        cluster.psql(f"VACUUM (FREEZE) {TABLE}")
        lsn = parse_lsn(cluster.psql("SELECT pg_current_wal_insert_lsn()"))
        if time.monotonic() - reported > 10:
            reported = time.monotonic()
            log(f"  WAL: {(lsn - start) / MIB:.0f} of {wal_mib} MiB ({round_no} rounds)")
    return Generated(inserted, start, lsn)


@dataclass(frozen=True)
class Closed:
    target_lsn: int
    """Right after the last commit (and its vacuum): where the latest point's data ends."""
    last_segment: str
    """The segment holding the switch: the last one either restore reads."""


def close_wal(cluster: BenchCluster) -> Closed:
    """The target, then the switch that closes its segment.

    Our restore needs a target (`restore()` sets one for every command) and stops after the
    first record at or past it (`recovery_target_inclusive`): the switch record at the latest,
    which is in the archive, so it replays exactly what pgBackRest's `--type=default` replays
    up to the end of the archived WAL. A target at the switch's end would lie past everything
    archived and fail the recovery."""
    target = parse_lsn(cluster.psql("SELECT pg_current_wal_insert_lsn()"))
    # pg_walfile_name of the switch's end names the segment the switch record is in.
    last = cluster.psql("SELECT pg_walfile_name(pg_switch_wal())")
    return Closed(target, last)


def wait_archived(
    cluster: BenchCluster, last_segment: str, probes: Mapping[str, Callable[[], set[str]]]
) -> None:
    """Until PostgreSQL reports `last_segment` archived (`archive_command` succeeded for it, and
    so for every segment before it), and each archive's own listing shows it."""

    def archived() -> bool:
        done, failed = cluster.psql(
            "SELECT coalesce(last_archived_wal, ''), failed_count FROM pg_stat_archiver"
        ).split("|")
        if int(failed) > 0:
            raise RuntimeError(
                f"archive_command failed {failed} times on the source:\n{cluster.log_tail()}"
            )
        return done[:24] >= last_segment

    wait_until(archived, 1800, f"archiving of {last_segment}", interval=0.2)
    for name, probe in probes.items():
        wait_until(_holds(probe, last_segment), 120, f"{name} holding {last_segment}", 0.2)


def _holds(probe: Callable[[], set[str]], segment: str) -> Callable[[], bool]:
    return lambda: segment in probe()
