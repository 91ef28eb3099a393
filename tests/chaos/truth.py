"""Ground truth for the soak: the segments PostgreSQL completed, and what the bucket holds.

The cluster runs with a large `wal_keep_size`, so `pg_wal` still holds every segment it ever
completed when the soak ends: the expected set is every segment number from the first (1, what
initdb writes) up to the one being written now, exclusive, each with the crc32c of its bytes on
disk. PostgreSQL's own `archive_status` must show each as `.done` (its archive_command reported
success), which is checked too: a `.ready` left over means the spool never took the segment.

The bucket is listed directly on the emulator (not through the faulty proxy). A segment is stored
exactly once when exactly one object under the database's `logs/` keys names it and that object's
crc32c and size are the segment's.
"""

from __future__ import annotations

import asyncio
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

from services.blobstore import BlobStore, Crc32c
from services.blobstore.model import ObjectInfo
from services.engines.postgres.walfile import (
    WalFileKind,
    WalNameError,
    parse_lsn,
    parse_name,
    segment_name,
)
from tests.e2e.pitr_stack import Protected

FIRST_SEGMENT = 1


@dataclass(frozen=True)
class Segment:
    name: str
    size: int
    crc32c: str


@dataclass
class Produced:
    """Every segment PostgreSQL completed, in order, with its bytes' digest."""

    segments: list[Segment]
    not_done: list[str]
    """Completed segments PostgreSQL has not marked `.done` (archive_command never succeeded)."""
    missing_from_pg_wal: list[str]
    """Completed segments no longer in pg_wal: their bytes cannot be checked (wal_keep_size)."""


def _digest(path: Path) -> Segment:
    hasher = Crc32c()
    with open(path, "rb") as segment:
        while chunk := segment.read(1 << 20):
            hasher.update(chunk)
    digest = hasher.digest()
    return Segment(path.name, digest.size, digest.crc32c)


def _segment_size(db: Protected) -> int:
    return int(db.cluster.psql("SELECT setting FROM pg_settings WHERE name = 'wal_segment_size'"))


def produced_segments(db: Protected) -> Produced:
    """Read after the writer stopped and a last `pg_switch_wal()`; blocking."""
    size = _segment_size(db)
    timeline = int(db.cluster.psql("SELECT timeline_id FROM pg_control_checkpoint()"))
    insert = parse_lsn(db.cluster.psql("SELECT pg_current_wal_insert_lsn()"))
    current = insert // size  # the segment being written: not complete, not expected
    pg_wal = db.cluster.data_dir / "pg_wal"
    segments, not_done, missing = [], [], []
    for number in range(FIRST_SEGMENT, current):
        name = segment_name(timeline, number, size)
        path = pg_wal / name
        if not path.exists():
            missing.append(name)
            continue
        if not (pg_wal / "archive_status" / f"{name}.done").exists():
            not_done.append(name)
        segments.append(_digest(path))
    return Produced(segments, not_done, missing)


def pending_in_pg(db: Protected) -> list[str]:
    """Segments PostgreSQL still wants archived (`.ready`): the spool has not taken them yet."""
    status = Path(db.cluster.data_dir / "pg_wal" / "archive_status")
    return sorted(p.name.removesuffix(".ready") for p in status.glob("*.ready"))


@dataclass
class Stored:
    """The database's log objects in the bucket, the WAL segments among them by segment name."""

    by_segment: dict[str, list[ObjectInfo]] = field(default_factory=dict)
    history: int = 0
    """Objects under `history/` (backup history files): stored, not part of the log chain."""
    other: list[str] = field(default_factory=list)
    """Objects under `logs/` whose name is no WAL segment."""


async def stored_logs(store: BlobStore, uid: str) -> Stored:
    found = Stored()
    grouped: dict[str, list[ObjectInfo]] = defaultdict(list)
    async for info in store.list(f"{uid}/"):
        parts = info.key.split("/")
        if "history" in parts:
            found.history += 1
        if "logs" not in parts:
            continue
        try:
            parsed = parse_name(parts[-1])
        except WalNameError:
            found.other.append(info.key)
            continue
        if parsed.kind not in (WalFileKind.SEGMENT, WalFileKind.PARTIAL):
            found.other.append(info.key)
            continue
        # A `.partial` copy of a segment is a second copy of it.
        grouped[parts[-1][:24]].append(info)
    found.by_segment = dict(grouped)
    return found


@dataclass
class Verdict:
    produced: int
    stored: int
    lost: list[str]
    """Expected segments with no object in the bucket."""
    corrupt: list[str]
    """Expected segments whose only object differs from the bytes PostgreSQL wrote."""
    duplicated: list[str]
    """Segments with more than one object."""
    unexpected: list[str]
    """Objects for segments PostgreSQL never completed, or that name no segment."""


def compare(produced: Produced, stored: Stored) -> Verdict:
    expected = {s.name: s for s in produced.segments}
    lost, corrupt, duplicated = [], [], []
    for name, segment in expected.items():
        objects = stored.by_segment.get(name, [])
        if not objects:
            lost.append(name)
        elif len(objects) > 1:
            duplicated.append(name)
        elif (objects[0].crc32c, objects[0].size) != (segment.crc32c, segment.size):
            corrupt.append(name)
    unexpected = sorted(set(stored.by_segment) - set(expected) - set(produced.missing_from_pg_wal))
    return Verdict(
        produced=len(produced.segments) + len(produced.missing_from_pg_wal),
        stored=sum(len(objects) for objects in stored.by_segment.values()),
        lost=lost,
        corrupt=corrupt,
        duplicated=duplicated,
        unexpected=unexpected + stored.other,
    )


async def read_produced(db: Protected) -> Produced:
    return await asyncio.to_thread(produced_segments, db)
