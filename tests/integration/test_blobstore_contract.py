"""One contract, three drivers: MemoryStore, FilesystemStore, and GcsStore against the emulator.

What the emulator cannot prove is skipped for it, with the reason, and proven elsewhere:
- it ignores `ifGenerationMatch`, so concurrent create-only races (and generation-conditioned
  deletes) are proven on MemoryStore/FilesystemStore here and on a scripted transport in
  tests/unit/test_blobstore_gcs_transport.py;
- its stored bytes cannot be altered behind its back, so at-rest corruption is proven on the
  other two drivers (and GcsStore's read verification on the scripted transport).
Sequential conflicts do run on the emulator: GcsStore heads and compares crc32c before writing.
"""

from __future__ import annotations

import asyncio
import gc
import io
import os
import zlib
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from services.blobstore import (
    BlobStore,
    Digest,
    FilesystemStore,
    GcsStore,
    IntegrityError,
    InvalidKey,
    MemoryStore,
    ObjectConflict,
    ObjectNotFound,
    Source,
    crc32c_of_bytes,
    open_store,
)
from services.blobstore.filesystem import LOCK_STRIPES
from tests.fixtures.gcs import TEST_CHUNK_SIZE

pytestmark = pytest.mark.integration

EMULATOR_IGNORES_PRECONDITIONS = (
    "gcp-storage-emulator ignores ifGenerationMatch; proven on MemoryStore and a scripted transport"
)


@pytest.fixture(params=["memory", "filesystem", "gcs"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> BlobStore:
    # A sync fixture: only the gcs case needs (and lazily starts) the emulator.
    if request.param == "memory":
        return MemoryStore()
    if request.param == "filesystem":
        return FilesystemStore(tmp_path / "store")
    gcs: GcsStore = request.getfixturevalue("gcs_store")
    return gcs


def driver(store: BlobStore) -> str:
    return type(store).__name__


async def keys(store: BlobStore, prefix: str = "", page_size: int = 1000) -> list[str]:
    return [info.key async for info in store.list(prefix, page_size=page_size)]


async def test_round_trip_with_metadata(store: BlobStore, tmp_path: Path) -> None:
    data = b"redo" * 1000
    meta = {"first_lsn": "0/16B3740", "engine": "postgres", "thread": "1"}
    put = await store.put_stream("db1/tl1/logs/1/000000010000000000000001", data, meta)
    assert put.size == len(data)
    assert put.crc32c == crc32c_of_bytes(data)
    assert put.metadata == meta

    head = await store.head(put.key)
    assert head is not None
    assert (head.size, head.crc32c, head.metadata, head.generation) == (
        put.size,
        put.crc32c,
        meta,
        put.generation,
    )
    assert await store.get_bytes(put.key) == data

    dest = tmp_path / "restored" / "segment"
    dest.parent.mkdir()
    got = await store.get_to_file(put.key, dest)
    assert dest.read_bytes() == data
    assert got.crc32c == put.crc32c
    assert sorted(os.listdir(dest.parent)) == ["segment"]  # no partial file left behind

    src = tmp_path / "manifest.json"
    src.write_bytes(b'{"backup": 1}')
    from_file = await store.put_file("db1/backups/b1/manifest.json", src, {"kind": "manifest"})
    assert await store.get_bytes(from_file.key) == b'{"backup": 1}'
    assert (await store.head(from_file.key)) == from_file


async def test_put_stream_accepts_every_source_form(store: BlobStore) -> None:
    async def agen() -> AsyncIterator[bytes]:
        for part in (b"ab", b"", b"cd"):
            await asyncio.sleep(0)
            yield part

    expected = crc32c_of_bytes(b"abcd")
    sources: list[tuple[str, Source]] = [
        ("src/bytes", b"abcd"),
        ("src/filelike", io.BytesIO(b"abcd")),
        ("src/chunks", [b"a", b"bcd"]),
        ("src/async", agen()),
    ]
    for key, source in sources:
        info = await store.put_stream(key, source)
        assert (info.crc32c, info.size) == (expected, 4), key
    empty = await store.put_stream("src/empty", b"")
    assert (empty.size, empty.crc32c) == (0, "AAAAAA==")
    assert await store.get_bytes("src/empty") == b""


async def test_identical_repush_is_success(store: BlobStore, tmp_path: Path) -> None:
    first = await store.put_stream("logs/1/7", b"segment-7", {"a": "1"})
    again = await store.put_stream("logs/1/7", io.BytesIO(b"segment-7"), {"a": "other"})
    assert again == first  # the stored object, unchanged: metadata is not rewritten either
    src = tmp_path / "seg"
    src.write_bytes(b"segment-7")
    assert await store.put_file("logs/1/7", src) == first


async def test_different_bytes_conflict_and_original_is_intact(
    store: BlobStore, tmp_path: Path
) -> None:
    original = await store.put_stream("logs/1/8", b"original bytes", {"v": "1"})
    with pytest.raises(ObjectConflict) as caught:
        await store.put_stream("logs/1/8", b"tampered bytes", {"v": "2"})
    assert caught.value.existing_crc32c == original.crc32c
    assert caught.value.attempted_crc32c == crc32c_of_bytes(b"tampered bytes")
    assert not caught.value.retryable

    src = tmp_path / "other"
    src.write_bytes(b"original bytes plus")
    with pytest.raises(ObjectConflict):
        await store.put_file("logs/1/8", src)
    assert await store.head("logs/1/8") == original
    assert await store.get_bytes("logs/1/8") == b"original bytes"


async def test_concurrent_conflicting_creates_exactly_one_wins(store: BlobStore) -> None:
    if isinstance(store, GcsStore):
        pytest.skip(EMULATOR_IGNORES_PRECONDITIONS)
    payloads = [f"writer {i} ".encode() * 4096 for i in range(8)]
    results = await asyncio.gather(
        *(store.put_stream("race/key", io.BytesIO(p)) for p in payloads), return_exceptions=True
    )
    winners = [r for r in results if not isinstance(r, BaseException)]
    losers = [r for r in results if isinstance(r, BaseException)]
    assert len(winners) == 1
    assert all(isinstance(e, ObjectConflict) for e in losers), losers
    stored = await store.get_bytes("race/key")
    assert stored in payloads
    assert winners[0].crc32c == crc32c_of_bytes(stored)


async def test_concurrent_identical_creates_all_succeed(store: BlobStore) -> None:
    if isinstance(store, GcsStore):
        pytest.skip(EMULATOR_IGNORES_PRECONDITIONS)
    results = await asyncio.gather(
        *(store.put_stream("race/same", io.BytesIO(b"same" * 10_000)) for _ in range(8))
    )
    assert len({r.generation for r in results}) == 1


async def test_list_by_prefix_with_pagination(store: BlobStore) -> None:
    names = [
        "db1/tl1/logs/1/000000010000000000000001",
        "db1/tl1/logs/1/000000010000000000000002",
        "db1/tl1/logs/1/000000010000000000000003",
        "db1/tl1/logs/1/000000010000000000000010",
        "db1/tl1/logs/2/000000010000000000000001",
        "db1/tl1/logs-old/x",
        "db1/tl10/logs/1/000000010000000000000001",
        "db2/tl1/logs/1/000000010000000000000001",
    ]
    for name in reversed(names):
        await store.put_stream(name, name.encode(), {"name": name})

    assert await keys(store) == sorted(names)
    assert await keys(store, page_size=2) == sorted(names)
    assert await keys(store, "db1/tl1/logs/1/", page_size=2) == names[:4]
    # A string prefix, not a directory: it may end mid-segment.
    assert await keys(store, "db1/tl1/logs/1/00000001000000000000000", page_size=1) == names[:3]
    assert await keys(store, "db1/tl1/logs", page_size=3) == sorted(names[:6])
    assert await keys(store, "db1/tl1") == sorted(names[:7])
    assert await keys(store, "db3/") == []
    infos = [i async for i in store.list("db2/")]
    assert [(i.metadata, i.size) for i in infos] == [({"name": names[-1]}, len(names[-1]))]


async def test_large_object_crosses_chunks(store: BlobStore, tmp_path: Path) -> None:
    data = os.urandom(9 * TEST_CHUNK_SIZE + 12345)
    expected = crc32c_of_bytes(data)
    src = tmp_path / "base.tar"
    src.write_bytes(data)

    from_file = await store.put_file("backups/b1/base.tar", src)
    assert (from_file.crc32c, from_file.size) == (expected, len(data))

    async def in_small_pieces() -> AsyncIterator[bytes]:
        view = memoryview(data)
        for start in range(0, len(data), 300_000):  # not aligned to the upload chunk
            yield bytes(view[start : start + 300_000])

    streamed = await store.put_stream("backups/b1/base-streamed.tar", in_small_pieces())
    assert (streamed.crc32c, streamed.size) == (expected, len(data))

    dest = tmp_path / "restored.tar"
    await store.get_to_file("backups/b1/base-streamed.tar", dest)
    assert dest.read_bytes() == data
    async with store.open_read("backups/b1/base.tar", chunk_size=TEST_CHUNK_SIZE) as reader:
        assert reader.info.crc32c == expected
        sizes = [len(chunk) async for chunk in reader]
    assert sum(sizes) == len(data)
    assert max(sizes) <= TEST_CHUNK_SIZE


async def test_failing_source_leaves_nothing(store: BlobStore) -> None:
    async def dies_midway() -> AsyncIterator[bytes]:
        yield os.urandom(3 * TEST_CHUNK_SIZE)  # past the first upload chunk on GCS
        raise OSError("pg_basebackup died")

    with pytest.raises(OSError, match="died"):
        await store.put_stream("partial/base.tar", dies_midway())
    gc.collect()  # an abandoned GCS upload must not be finalised by its finaliser either
    assert await store.head("partial/base.tar") is None
    assert await keys(store) == []
    if isinstance(store, FilesystemStore):
        assert os.listdir(store.root / "partial") == []  # the temp file is gone


@pytest.mark.parametrize("form", ["bytes", "file-like", "async"])
async def test_an_announced_digest_is_enforced_before_anything_is_visible(
    store: BlobStore, form: str
) -> None:
    data = os.urandom(3 * TEST_CHUNK_SIZE + 17)  # past the first upload chunk on GCS
    right = Digest(crc32c=crc32c_of_bytes(data), size=len(data))

    def source() -> Source:
        if form == "bytes":
            return data
        if form == "file-like":
            return io.BytesIO(data)

        async def pieces() -> AsyncIterator[bytes]:
            for start in range(0, len(data), 500_000):
                yield data[start : start + 500_000]

        return pieces()

    for wrong in (
        Digest(crc32c=crc32c_of_bytes(data[:-1] + b"?"), size=len(data)),  # a byte changed
        Digest(crc32c=right.crc32c, size=len(data) + 1),  # the file grew
    ):
        with pytest.raises(IntegrityError):
            await store.put_stream("logs/seg", source(), expect=wrong)
        gc.collect()  # nor may an abandoned upload be finalised later
        assert await store.head("logs/seg") is None
    info = await store.put_stream("logs/seg", source(), expect=right)
    assert (info.crc32c, info.size) == (right.crc32c, right.size)
    assert await store.get_bytes("logs/seg") == data
    # An existing key is judged by the announced digest (the source is not read again).
    assert await store.put_stream("logs/seg", source(), expect=right) == info
    with pytest.raises(ObjectConflict):
        await store.put_stream("logs/seg", source(), expect=Digest(crc32c="AAAAAA==", size=3))
    if isinstance(store, FilesystemStore):
        assert sorted(os.listdir(store.root / "logs")) == sorted(
            [".seg.meta.json", f".lock-{zlib.crc32(b'seg') % LOCK_STRIPES:02d}", "seg"]
        ), "no temporary file left"


async def test_late_metadata_is_made_from_the_digest_before_the_object_is_seen(
    store: BlobStore,
) -> None:
    data = os.urandom(2 * TEST_CHUNK_SIZE + 5)
    digests: list[Digest] = []

    def describe(digest: Digest) -> dict[str, str]:
        digests.append(digest)
        return {"crc32c": digest.crc32c, "size": str(digest.size)}

    if not store.late_metadata:  # GCS sends metadata before the bytes
        with pytest.raises(TypeError):
            await store.put_stream("logs/late", data, describe)
        assert await store.head("logs/late") is None
        return
    info = await store.put_stream("logs/late", io.BytesIO(data), describe)
    assert digests == [Digest(crc32c=crc32c_of_bytes(data), size=len(data))]
    expected = {"crc32c": crc32c_of_bytes(data), "size": str(len(data))}
    assert info.metadata == expected
    head = await store.head("logs/late")
    assert head is not None
    assert head.metadata == expected


BAD_KEYS = [
    "",
    "../escape",
    "a/../../escape",
    "/etc/passwd",
    "a//b",
    "a/",
    "./a",
    "a/./b",
    ".hidden",
    "a/.meta.json",
    "a\\..\\b",
    "a/\x00b",
    "x" * 1025,
]


@pytest.mark.parametrize("key", BAD_KEYS, ids=repr)
async def test_traversal_and_malformed_keys_rejected(
    store: BlobStore, key: str, tmp_path: Path
) -> None:
    with pytest.raises(InvalidKey):
        await store.put_stream(key, b"x")
    with pytest.raises(InvalidKey):
        await store.head(key)
    with pytest.raises(InvalidKey):
        await store.get_bytes(key)
    with pytest.raises(InvalidKey):
        await store.get_to_file(key, tmp_path / "out")
    with pytest.raises(InvalidKey):
        await store.delete(key)
    assert not (tmp_path / "out").exists()
    assert not (tmp_path / "escape").exists()


@pytest.mark.parametrize("prefix", ["../", "/", "a//", "a/../", ".x"])
async def test_traversal_prefix_rejected(store: BlobStore, prefix: str) -> None:
    with pytest.raises(InvalidKey):
        await keys(store, prefix)


async def test_missing_key(store: BlobStore, tmp_path: Path) -> None:
    assert await store.head("no/such/key") is None
    with pytest.raises(ObjectNotFound):
        await store.get_bytes("no/such/key")
    with pytest.raises(ObjectNotFound):
        await store.get_to_file("no/such/key", tmp_path / "out")
    assert not (tmp_path / "out").exists()
    with pytest.raises(ObjectNotFound):
        async with store.open_read("no/such/key"):
            pass
    assert await store.delete("no/such/key") is False


async def test_delete(store: BlobStore) -> None:
    info = await store.put_stream("gone/soon", b"bye")
    assert await store.delete("gone/soon", generation=info.generation) is True
    assert await store.head("gone/soon") is None
    assert await store.delete("gone/soon") is False
    again = await store.put_stream("gone/soon", b"a different object may now take the key")
    assert await store.get_bytes("gone/soon") == b"a different object may now take the key"
    assert again.generation != info.generation


async def test_delete_of_another_generation_is_refused(store: BlobStore) -> None:
    if isinstance(store, GcsStore):
        pytest.skip(EMULATOR_IGNORES_PRECONDITIONS)
    info = await store.put_stream("keep/me", b"keep")
    assert await store.delete("keep/me", generation=info.generation + 1) is False
    assert await store.get_bytes("keep/me") == b"keep"


async def test_corruption_at_rest_is_detected_on_read(store: BlobStore, tmp_path: Path) -> None:
    if isinstance(store, GcsStore):
        pytest.skip("the emulator's stored bytes cannot be altered behind its back")
    data = os.urandom(100_000)
    await store.put_stream("rot/obj", data)
    if isinstance(store, FilesystemStore):
        with open(store.root / "rot" / "obj", "r+b") as f:
            f.seek(54_321)
            byte = f.read(1)
            f.seek(54_321)
            f.write(bytes([byte[0] ^ 0x01]))
    else:
        assert isinstance(store, MemoryStore)
        store.corrupt("rot/obj", 54_321)

    with pytest.raises(IntegrityError):
        await store.get_bytes("rot/obj")
    dest = tmp_path / "restored"
    with pytest.raises(IntegrityError):
        await store.get_to_file("rot/obj", dest)
    assert not dest.exists()
    assert os.listdir(tmp_path) == ([] if not isinstance(store, FilesystemStore) else ["store"])
    # head reports what was recorded at write time; only a read can tell the bytes rotted.
    head = await store.head("rot/obj")
    assert head is not None
    assert head.crc32c == crc32c_of_bytes(data)


async def test_open_store_url_forms(tmp_path: Path, gcs_emulator: object) -> None:
    fs = open_store(f"file://{tmp_path}/archive")
    assert isinstance(fs, FilesystemStore)
    await fs.put_stream("k", b"v")
    assert (tmp_path / "archive" / "k").read_bytes() == b"v"

    from tests.fixtures.gcs import GcsEmulator

    assert isinstance(gcs_emulator, GcsEmulator)
    bucket = gcs_emulator.create_bucket()
    gs = open_store(f"gs://{bucket}/tidemark/prod?endpoint={gcs_emulator.endpoint}")
    assert isinstance(gs, GcsStore)
    try:
        await gs.put_stream("db/x", b"v")
        assert await keys(gs) == ["db/x"]
        # The prefix is part of the object name in the bucket, not of the key.
        client = gcs_emulator.client()
        try:
            assert [b.name for b in client.list_blobs(bucket)] == ["tidemark/prod/db/x"]
        finally:
            client.close()
    finally:
        await gs.close()
