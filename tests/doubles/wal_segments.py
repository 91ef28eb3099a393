"""Synthetic PostgreSQL WAL segments for tests: a valid long page header, then filler.

Not real WAL (no records), but exactly what the archiver checks before uploading: size, page
address, timeline and system identifier in the first page's long header. Real segments from a
real cluster are used by the integration tests.
"""

from __future__ import annotations

import os
import struct
from pathlib import Path

MiB = 1 << 20
#: The smallest segment size PostgreSQL allows (initdb --wal-segsize=1): keeps tests light.
SEGMENT_SIZE = MiB
SYSTEM_ID = 7_312_001_234_567_890_123
XLP_PAGE_MAGIC = 0xD110
XLP_LONG_HEADER = 0x0002


def segment_name(timeline: int, number: int, size: int = SEGMENT_SIZE) -> str:
    per_log = (1 << 32) // size
    return f"{timeline:08X}{number // per_log:08X}{number % per_log:08X}"


def segment_bytes(
    timeline: int,
    number: int,
    *,
    system_id: int = SYSTEM_ID,
    size: int = SEGMENT_SIZE,
    seed: bytes = b"",
) -> bytes:
    """A segment `number` of `timeline`: long header + deterministic filler (varied by `seed`)."""
    header = struct.pack(
        "<HHIQI4xQII",
        XLP_PAGE_MAGIC,
        XLP_LONG_HEADER,
        timeline,
        number * size,
        0,
        system_id,
        size,
        8192,
    )
    pattern = (seed + f"{timeline}/{number}".encode()) * 64
    body = (pattern * (size // len(pattern) + 1))[: size - len(header)]
    return header + body


def write_ready(spool_ready: Path, name: str, data: bytes) -> Path:
    """Put a file into `ready/` the way walpush does: write aside, fsync, link into place."""
    spool_ready.mkdir(parents=True, exist_ok=True)
    tmp = spool_ready.parent / f".{name}.tmp"
    with open(tmp, "wb") as out:
        out.write(data)
        out.flush()
        os.fsync(out.fileno())
    os.link(tmp, spool_ready / name)
    tmp.unlink()
    return spool_ready / name
