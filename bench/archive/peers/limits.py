"""The two ceilings ours is held against, measured on the same staged segments.

- **copy limit**: one thread reads each segment, computes its crc32c, writes it to a new file,
  fsyncs it, and at the end fsyncs the directory: the least any durable local archive must do
  (no compression, no metadata, no process per segment).
- **emulator limit**: one long-lived process uploads the segments one after another with
  google-cloud-storage's `Blob.upload_from_file` over one client: what the single-threaded
  emulator can take. The bytes uploaded are the bytes ours must send: segments compressed the
  same way, compressed before the clock starts (so the limit is transport alone).
"""

from __future__ import annotations

import io
import os
import time
from pathlib import Path

import google_crc32c
import zstandard

from bench.archive.backlog import Backlog
from bench.archive.emulator import BUCKET, Emulator
from bench.archive.settings import Compression

_CHUNK = 1024 * 1024


def copy_limit(backlog: Backlog, target: Path) -> float:
    """Seconds to copy every segment durably into `target` (a new directory), with crc32c."""
    target.mkdir()
    start = time.perf_counter()
    for name in backlog.names:
        checksum = google_crc32c.Checksum()  # type: ignore[no-untyped-call]
        with (backlog.wal_dir / name).open("rb") as src, (target / name).open("wb") as dst:
            while chunk := src.read(_CHUNK):
                checksum.update(chunk)  # type: ignore[no-untyped-call]
                dst.write(chunk)
            dst.flush()
            os.fsync(dst.fileno())
        checksum.digest()  # type: ignore[no-untyped-call]
    fd = os.open(target, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    return time.perf_counter() - start


def payloads(backlog: Backlog, compression: Compression) -> list[tuple[str, bytes]]:
    """Each segment's name and the bytes an archiver compressing like ours would upload."""
    out: list[tuple[str, bytes]] = []
    compressor = zstandard.ZstdCompressor(level=compression.level)
    for name in backlog.names:
        data = (backlog.wal_dir / name).read_bytes()
        if compression.kind == "zstd":
            data = compressor.compress(data)
        out.append((name, data))
    return out


def emulator_limit(emulator: Emulator, items: list[tuple[str, bytes]]) -> float:
    """Seconds to upload `items` one after another from one client (fresh emulator expected)."""
    with emulator.client() as client:
        bucket = client.bucket(BUCKET)
        start = time.perf_counter()
        for name, data in items:
            bucket.blob(f"limit/{name}").upload_from_file(io.BytesIO(data), size=len(data))
        elapsed = time.perf_counter() - start
    stored = emulator.object_sizes("limit/")
    if len(stored) != len(items):
        raise RuntimeError(f"emulator limit: {len(stored)} of {len(items)} objects stored")
    return elapsed
