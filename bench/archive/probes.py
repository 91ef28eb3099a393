"""Which segments a store already holds durably, seen from outside the contender.

Every probe answers one question, `archived() -> set of WAL file names`, cheaply enough to be
polled every few milliseconds during the lag measurement.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Iterable
from pathlib import Path

from google.auth.credentials import AnonymousCredentials
from google.cloud import storage

from bench.archive.cluster import wal_file_name

Probe = Callable[[], set[str]]

_WAL_NAME = re.compile(r"^([0-9A-F]{24})")
_SEQUENCE = re.compile(r"^(\d+)(\.\w+)*$")


def segment_of(key: str, timeline: int) -> str | None:
    """The WAL file a stored object holds, from its key's last component.

    Peers name objects after the segment (`000000010000000000000002-<sha1>.zst`, `….zst`). Ours
    stores `<prefix>/<database>/<lineage>/logs/<thread>/<sequence>` (docs/contract.md), where a
    PostgreSQL sequence is the segment number, so a decimal last component maps back to a name.
    """
    leaf = key.rsplit("/", 1)[-1]
    match = _WAL_NAME.match(leaf)
    if match:
        return match.group(1)
    number = _SEQUENCE.match(leaf)
    if number and "/logs/" in f"/{key}":
        return wal_file_name(timeline, int(number.group(1)))
    return None


def names_in(keys: Iterable[str], timeline: int) -> set[str]:
    return {name for key in keys if (name := segment_of(key, timeline)) is not None}


def directory_probe(root: Path, timeline: int) -> Probe:
    """Objects under a local directory; dot-files (temporaries, sidecars) do not count."""

    def archived() -> set[str]:
        keys: list[str] = []
        for directory, dirs, files in os.walk(root):
            dirs[:] = [d for d in dirs if not d.startswith(".")]
            rel = os.path.relpath(directory, root)
            keys.extend(f"{rel}/{name}" for name in files if not name.startswith("."))
        return names_in(keys, timeline)

    return archived


def bucket_probe(endpoint: str, bucket: str, prefix: str, timeline: int) -> Probe:
    """Objects under `prefix` in a bucket of the emulator at `endpoint` (one client, reused)."""
    client = storage.Client(
        project="tidemark-bench",
        credentials=AnonymousCredentials(),  # type: ignore[no-untyped-call]
        client_options={"api_endpoint": endpoint},
    )

    def archived() -> set[str]:
        return names_in(
            (b.name for b in client.list_blobs(bucket, prefix=prefix or None)), timeline
        )

    return archived
