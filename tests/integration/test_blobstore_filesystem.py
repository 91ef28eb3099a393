"""FilesystemStore on a real directory: layout, crash leftovers, at-rest damage, and processes
racing for one key (the `flock` is what makes create-only hold across processes)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import zlib
from pathlib import Path

import pytest

from services.blobstore import (
    FilesystemStore,
    IntegrityError,
    ObjectConflict,
    TerminalBlobError,
    crc32c_of_bytes,
)
from services.blobstore.filesystem import LOCK_STRIPES

pytestmark = pytest.mark.integration

REPO_ROOT = Path(__file__).resolve().parents[2]


def listing(directory: Path) -> list[str]:
    return sorted(os.listdir(directory))


async def test_layout_object_beside_its_sidecar(tmp_path: Path) -> None:
    store = FilesystemStore(tmp_path)
    info = await store.put_stream("db/logs/1/0001", b"wal", {"first_lsn": "0/1"})
    directory = tmp_path / "db" / "logs" / "1"
    assert (directory / "0001").read_bytes() == b"wal"
    stripe = f".lock-{zlib.crc32(b'0001') % LOCK_STRIPES:02d}"
    assert listing(directory) == [".0001.meta.json", stripe, "0001"]  # no temp files left
    sidecar = json.loads((directory / ".0001.meta.json").read_text())
    assert sidecar["crc32c"] == info.crc32c == crc32c_of_bytes(b"wal")
    assert sidecar["metadata"] == {"first_lsn": "0/1"}
    assert sidecar["generation"] == info.generation


async def test_crash_leftovers_are_invisible_and_harmless(tmp_path: Path) -> None:
    store = FilesystemStore(tmp_path)
    await store.put_stream("db/a", b"a")
    directory = tmp_path / "db"
    # A crash after the sidecar was published but before the link, with other bytes…
    (directory / ".b.meta.json").write_text(
        json.dumps(
            {
                "format": 1,
                "size": 5,
                "crc32c": crc32c_of_bytes(b"stale"),
                "generation": 1,
                "updated": "2020-01-01T00:00:00+00:00",
                "metadata": {"stale": "yes"},
            }
        )
    )
    # …and a crash mid-copy.
    (directory / ".tmp-deadbeef").write_bytes(b"half a segm")

    assert [i.key async for i in store.list()] == ["db/a"]
    assert await store.head("db/b") is None
    info = await store.put_stream("db/b", b"fresh", {"fresh": "yes"})
    assert (await store.head("db/b")) == info
    assert info.metadata == {"fresh": "yes"}


async def test_object_without_sidecar_is_an_integrity_error(tmp_path: Path) -> None:
    store = FilesystemStore(tmp_path)
    await store.put_stream("k", b"v")
    (tmp_path / ".k.meta.json").unlink()
    with pytest.raises(IntegrityError):
        await store.head("k")


@pytest.mark.parametrize("damage", ["truncate", "append"])
async def test_size_damage_is_detected(tmp_path: Path, damage: str) -> None:
    store = FilesystemStore(tmp_path)
    await store.put_stream("k", b"0123456789")
    path = tmp_path / "k"
    if damage == "truncate":
        os.truncate(path, 5)
    else:
        with open(path, "ab") as f:
            f.write(b"!")
    with pytest.raises(IntegrityError):
        await store.get_bytes("k")


async def test_object_and_prefix_cannot_share_a_name(tmp_path: Path) -> None:
    store = FilesystemStore(tmp_path)
    await store.put_stream("a/b", b"object")
    with pytest.raises(TerminalBlobError):
        await store.put_stream("a/b/c", b"below an object")
    await store.put_stream("x/y", b"object")
    with pytest.raises(TerminalBlobError):
        await store.put_stream("x", b"over a prefix")
    assert await store.get_bytes("a/b") == b"object"
    assert [i.key async for i in store.list()] == ["a/b", "x/y"]


async def test_get_to_file_replaces_destination_atomically(tmp_path: Path) -> None:
    store = FilesystemStore(tmp_path / "store")
    await store.put_stream("k", b"new contents")
    dest = tmp_path / "dest"
    dest.write_bytes(b"old")
    await store.get_to_file("k", dest)
    assert dest.read_bytes() == b"new contents"
    assert listing(tmp_path) == ["dest", "store"]


async def test_identical_repush_does_not_touch_the_object(tmp_path: Path) -> None:
    store = FilesystemStore(tmp_path)
    first = await store.put_stream("k", b"v")
    before = os.stat(tmp_path / "k")
    assert await store.put_stream("k", b"v") == first
    after = os.stat(tmp_path / "k")
    assert (before.st_ino, before.st_mtime_ns) == (after.st_ino, after.st_mtime_ns)
    with pytest.raises(ObjectConflict):
        await store.put_stream("k", b"w")


RACER = """
import asyncio, sys
from services.blobstore import FilesystemStore, ObjectConflict

async def main():
    store = FilesystemStore(sys.argv[1])
    payload = sys.argv[2].encode() * 50_000
    try:
        await store.put_stream("race/key", payload)
        print("won")
    except ObjectConflict:
        print("conflict")

asyncio.run(main())
"""


def test_processes_racing_for_one_key(tmp_path: Path) -> None:
    racers = [
        subprocess.Popen(
            [sys.executable, "-c", RACER, str(tmp_path), f"racer-{i}"],
            cwd=REPO_ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        for i in range(6)
    ]
    results = []
    for racer in racers:
        out, err = racer.communicate(timeout=60)
        assert racer.returncode == 0, err.decode()
        results.append(out.decode().strip())
    assert sorted(results) == ["conflict"] * 5 + ["won"]
    stored = (tmp_path / "race" / "key").read_bytes()
    winner = stored[: stored.index(b"-") + 2].decode()
    assert stored == winner.encode() * 50_000
