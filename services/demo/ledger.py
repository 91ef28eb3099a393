"""The demo's writer and its ledger: what the table held after each commit.

Each step inserts a few rows in its own transaction, then records the commit's exact timestamp
(`track_commit_timestamp`), the row count, a checksum of the whole table and the WAL position.
A restore to any moment strictly between two commits must produce exactly the earlier entry's
table, which is what the demo checks on the clone.
"""

from __future__ import annotations

import random
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from schemas import Lsn
from services.demo.cluster import LocalCluster

TABLE = "tidemark_demo_ledger"
MIN_GAP = timedelta(milliseconds=20)

CREATE = (
    "CREATE TABLE IF NOT EXISTS tidemark_demo_ledger (id bigserial PRIMARY KEY, note text NOT NULL)"
)

STATE = """
SELECT
  coalesce(to_char((SELECT pg_xact_commit_timestamp(xmin) FROM tidemark_demo_ledger
                    ORDER BY id DESC LIMIT 1)
    AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"'), ''),
  count(*),
  md5(coalesce(string_agg(id::text || ':' || note, ',' ORDER BY id), '')),
  pg_current_wal_lsn()
FROM tidemark_demo_ledger
"""

CHECKSUM = """
SELECT count(*), md5(coalesce(string_agg(id::text || ':' || note, ',' ORDER BY id), ''))
FROM tidemark_demo_ledger
"""


@dataclass(frozen=True)
class Entry:
    """The table right after one commit."""

    committed_at: datetime
    rows: int
    checksum: str
    lsn: Lsn


def _parse_time(text: str) -> datetime:
    return datetime.strptime(text, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=UTC)


@dataclass
class Ledger:
    cluster: LocalCluster
    entries: list[Entry]

    @classmethod
    def start(cls, cluster: LocalCluster) -> Ledger:
        cluster.psql(CREATE)
        return cls(cluster, [])

    def write(self, rows: int = 5) -> Entry:
        """One transaction of `rows` rows, then the table's state as of its commit."""
        step = len(self.entries) + 1
        self.cluster.psql(
            "INSERT INTO tidemark_demo_ledger (note) "  # noqa: S608 (two integers, formatted)
            f"SELECT 'step {int(step)} row ' || g FROM generate_series(1, {int(rows)}) g"
        )
        at, count, checksum, lsn = self.cluster.psql(STATE).split("|")
        entry = Entry(_parse_time(at), int(count), checksum, Lsn.parse(lsn))
        self.entries.append(entry)
        return entry

    def run(self, steps: int, *, pause_s: float) -> None:
        for _ in range(steps):
            self.write()
            time.sleep(pause_s)

    def pick_moment(self, after: datetime, rng: random.Random) -> tuple[datetime, Entry]:
        """A moment strictly between two commits made after `after`, and the entry it must
        show: the midpoint of a random pair of consecutive commits."""
        pairs = [
            (a, b)
            for a, b in zip(self.entries, self.entries[1:], strict=False)
            if a.committed_at > after and b.committed_at - a.committed_at > MIN_GAP
        ]
        if not pairs:
            raise RuntimeError("the writer made no two commits after the backup to choose between")
        earlier, later = rng.choice(pairs)
        return earlier.committed_at + (later.committed_at - earlier.committed_at) / 2, earlier


def table_state(cluster: LocalCluster, *, port: int, host: Path) -> tuple[int, str]:
    """(row count, checksum) of the ledger table on the cluster at `host`:`port`."""
    count, checksum = cluster.psql(CHECKSUM, port=port, host=host).split("|")
    return int(count), checksum
