"""The pieces of a base backup stream that need no PostgreSQL: pg_basebackup's stderr, the tar
watcher that finds backup_label and backup_manifest in passing, and the part cutter."""

from __future__ import annotations

import io
import json
import random
import tarfile
from collections.abc import AsyncIterator
from datetime import UTC, datetime

import pytest

from schemas import parse_lsn
from services.blobstore import crc32c_of_bytes
from services.engines.postgres.basebackup import (
    PartCutter,
    StderrWatch,
    TarWatch,
    WalRange,
    parse_backup_label,
    parse_progress,
    parse_wal_ranges,
)

pytestmark = pytest.mark.unit

# What pg_basebackup 15 -P -v wrote to a pipe in a real run (see the integration tests).
STDERR = """\
pg_basebackup: initiating base backup, waiting for checkpoint to complete
pg_basebackup: checkpoint completed
    0/26499 kB (0%), 0/1 tablespace (-                                  )
26499/26499 kB (100%), 0/1 tablespace (-                                  )
NOTICE:  all required WAL segments have been archived
26499/26499 kB (100%), 1/1 tablespace
pg_basebackup: syncing data to disk ...
pg_basebackup: base backup completed
"""

LABEL = """\
START WAL LOCATION: 0/2000028 (file 000000010000000000000002)
CHECKPOINT LOCATION: 0/2000060
BACKUP METHOD: streamed
BACKUP FROM: primary
START TIME: 2026-11-21 08:59:10 UTC
LABEL: tidemark:b1
START TIMELINE: 1
"""


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        ("26499/26499 kB (100%), 1/1 tablespace", (26499 * 1024, 26499 * 1024)),
        ("    0/26499 kB (0%), 0/1 tablespace (-    )", (0, 26499 * 1024)),
        ("  1234 kB, 0/1 tablespace", (1234 * 1024, None)),  # --no-estimate-size
        ("pg_basebackup: checkpoint completed", None),
        ("NOTICE:  all required WAL segments have been archived", None),
    ],
)
def test_progress_lines_are_read_in_bytes(line: str, expected: object) -> None:
    assert parse_progress(line) == expected


def test_stderr_watch_keeps_progress_apart_from_the_lines_that_explain_a_failure() -> None:
    watch = StderrWatch()
    reported = [p for p in map(watch.feed, STDERR.splitlines()) if p is not None]

    assert reported[-1] == (26499 * 1024, 26499 * 1024)
    assert len(reported) == 3
    assert all("kB" not in line for line in watch.tail)
    assert watch.tail[-1] == "pg_basebackup: base backup completed"
    assert watch.archive_wait is None


def test_stderr_watch_notices_the_wait_for_archiving_and_bounds_its_explanation() -> None:
    watch = StderrWatch()
    watch.feed("NOTICE:  base backup done, waiting for required WAL segments to be archived")
    for n in range(100):
        watch.feed(f"pg_basebackup: error: line {n} " + "x" * 50)

    assert watch.archive_wait is not None
    explained = watch.explain(limit=300)
    assert len(explained) <= 301
    assert explained.endswith("line 99 " + "x" * 50)


def test_backup_label_gives_the_start() -> None:
    label = parse_backup_label(LABEL)

    assert label.start_lsn == parse_lsn("0/2000028")
    assert label.timeline == 1
    assert label.label == "tidemark:b1"
    assert label.start_time == datetime(2026, 11, 21, 8, 59, 10, tzinfo=UTC)


@pytest.mark.parametrize(
    ("written", "expected"),
    [
        ("2026-11-21 10:59:10 +02", datetime(2026, 11, 21, 8, 59, 10, tzinfo=UTC)),
        ("2026-11-21 03:29:10 -0530", datetime(2026, 11, 21, 8, 59, 10, tzinfo=UTC)),
        ("2026-11-21 08:59:10 GMT", datetime(2026, 11, 21, 8, 59, 10, tzinfo=UTC)),
        ("2026-11-21 02:59:10 CST", None),  # three zones share that name: not guessed
    ],
)
def test_start_time_is_used_only_when_its_zone_is_unambiguous(
    written: str, expected: datetime | None
) -> None:
    text = LABEL.replace("2026-11-21 08:59:10 UTC", written)
    assert parse_backup_label(text).start_time == expected


def test_a_label_without_its_start_is_refused() -> None:
    with pytest.raises(ValueError, match="START WAL LOCATION"):
        parse_backup_label(LABEL.replace("START WAL LOCATION", "SOMETHING"))
    with pytest.raises(ValueError, match="START TIMELINE"):
        parse_backup_label(LABEL.replace("START TIMELINE: 1", "START TIMELINE: x"))


def manifest(ranges: list[dict[str, object]]) -> bytes:
    body = {
        "PostgreSQL-Backup-Manifest-Version": 1,
        "Files": [{"Path": f"base/1/{n}", "Size": 8192} for n in range(3)],
        "WAL-Ranges": ranges,
        "Manifest-Checksum": "0" * 64,
    }
    return json.dumps(body, indent=1).encode()


def test_wal_ranges_give_the_end_and_the_timeline() -> None:
    ranges = [
        {"Timeline": 1, "Start-LSN": "0/2000028", "End-LSN": "0/3000000"},
        {"Timeline": 2, "Start-LSN": "0/3000000", "End-LSN": "0/3000100"},
    ]
    assert parse_wal_ranges(manifest(ranges)) == [
        WalRange(1, parse_lsn("0/2000028"), parse_lsn("0/3000000")),
        WalRange(2, parse_lsn("0/3000000"), parse_lsn("0/3000100")),
    ]
    with pytest.raises(ValueError, match="empty"):
        parse_wal_ranges(manifest([]))
    with pytest.raises(ValueError, match="no WAL-Ranges"):
        parse_wal_ranges(b'{"Files": []}')


def tar_stream(members: list[tuple[str, bytes]]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.USTAR_FORMAT) as archive:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def feed_in_pieces(watch: TarWatch, data: bytes, seed: int) -> None:
    rng = random.Random(seed)
    pos = 0
    while pos < len(data):
        step = rng.choice([1, 7, 511, 512, 513, 4096, 100_000])
        watch.feed(data[pos : pos + step])
        pos += step


@pytest.mark.parametrize("seed", range(5))
def test_tar_watch_finds_the_label_and_the_manifest_end_however_the_stream_is_cut(
    seed: int,
) -> None:
    big = bytes(range(256)) * 800  # 200 kB: more than the manifest tail that is kept
    ranges = [{"Timeline": 3, "Start-LSN": "1/2000028", "End-LSN": "1/2000100"}]
    padding = json.dumps({"Files": [{"Path": "x" * 100}] * 2000}).encode()
    manifest_bytes = padding[:-1] + b', "WAL-Ranges": ' + json.dumps(ranges).encode() + b"}"
    stream = tar_stream(
        [
            ("backup_label", LABEL.encode()),
            ("tablespace_map", b""),
            ("base/1/1259", big),
            ("global/pg_control", b"\0" * 8192),
            ("backup_manifest", manifest_bytes),
        ]
    )
    watch = TarWatch()
    feed_in_pieces(watch, stream, seed)

    assert watch.ended
    assert watch.members == 5
    assert watch.size == len(stream)
    assert watch.label_text == LABEL.encode()
    assert watch.manifest_tail is not None
    assert len(watch.manifest_tail) <= 64 << 10
    assert manifest_bytes.endswith(watch.manifest_tail)
    assert parse_wal_ranges(watch.manifest_tail)[0].timeline == 3


def test_tar_watch_sees_a_truncated_stream_as_unfinished() -> None:
    stream = tar_stream([("backup_label", LABEL.encode()), ("base/1/1", b"x" * 5000)])
    watch = TarWatch()
    watch.feed(stream[:3000])
    assert not watch.ended
    assert watch.label_text == LABEL.encode()
    assert watch.manifest_tail is None


async def chunks_of(data: bytes, sizes: list[int]) -> AsyncIterator[bytes]:
    pos = 0
    for size in sizes:
        yield data[pos : pos + size]
        pos += size
    if pos < len(data):
        yield data[pos:]


@pytest.mark.parametrize(
    ("length", "sizes"),
    [
        (10_000, [3000, 3000, 4000]),  # chunks straddle the boundaries
        (9_000, [9_000]),  # one chunk, three parts
        (6_000, [1000] * 6),  # ends exactly on a boundary: no empty trailing part
        (1, [1]),
    ],
)
async def test_part_cutter_cuts_at_exact_boundaries(length: int, sizes: list[int]) -> None:
    data = random.Random(length).randbytes(length)
    cutter = PartCutter(chunks_of(data, sizes), part_size=3000)
    parts: list[bytes] = []
    while await cutter.has_more():
        part = b"".join([chunk async for chunk in cutter.part()])
        digest = cutter.hasher.digest()
        assert (digest.size, digest.crc32c) == (len(part), crc32c_of_bytes(part))
        parts.append(part)

    assert b"".join(parts) == data
    assert [len(p) for p in parts[:-1]] == [3000] * (len(parts) - 1)
    assert 0 < len(parts[-1]) <= 3000


async def test_part_cutter_of_an_empty_stream_makes_no_part() -> None:
    cutter = PartCutter(chunks_of(b"", []), part_size=10)
    assert not await cutter.has_more()
