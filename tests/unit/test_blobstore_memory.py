"""Create-only semantics under races, proven on MemoryStore.

The GCS emulator ignores `ifGenerationMatch`, so this is where the precondition path shared with
GcsStore (head → conditional create → settle by crc32c on 412) is exercised: a writer that passed
the head check loses the create to another writer while its own stream is still being read.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable

import pytest

from services.blobstore import (
    MemoryStore,
    ObjectConflict,
    RetryableBlobError,
    crc32c_of_bytes,
)
from services.blobstore._checksum import Digest
from services.blobstore._common import settle
from services.blobstore.memory import _PreconditionFailed

pytestmark = pytest.mark.unit


def stream_then(
    parts: list[bytes], meanwhile: Callable[[], Awaitable[object]]
) -> AsyncIterator[bytes]:
    """A source that lets another writer act after its first chunk (after our head check)."""

    async def gen() -> AsyncIterator[bytes]:
        yield parts[0]
        await meanwhile()
        for part in parts[1:]:
            yield part

    return gen()


async def test_losing_the_create_race_with_other_bytes_is_a_conflict() -> None:
    store = MemoryStore()
    rival: dict[str, object] = {}

    async def rival_writes() -> None:
        rival["info"] = await store.put_stream("logs/1/9", b"rival bytes")

    with pytest.raises(ObjectConflict) as caught:
        await store.put_stream("logs/1/9", stream_then([b"our ", b"bytes"], rival_writes))
    assert caught.value.attempted_crc32c == crc32c_of_bytes(b"our bytes")
    assert await store.get_bytes("logs/1/9") == b"rival bytes"
    assert await store.head("logs/1/9") == rival["info"]


async def test_losing_the_create_race_with_same_bytes_is_success() -> None:
    store = MemoryStore()
    rival: dict[str, object] = {}

    async def rival_writes() -> None:
        rival["info"] = await store.put_stream("logs/1/9", b"same bytes")

    info = await store.put_stream("logs/1/9", stream_then([b"same ", b"bytes"], rival_writes))
    assert info == rival["info"]


async def test_key_deleted_during_stream_is_created_normally() -> None:
    store = MemoryStore()
    old = await store.put_stream("k", b"old")

    async def delete_it() -> None:
        await store.delete("k", generation=old.generation)

    # The head saw "old", so the verdict is judged against it: a conflict, not a silent replace.
    with pytest.raises(ObjectConflict):
        await store.put_stream("k", stream_then([b"n", b"ew"], delete_it))
    assert await store.head("k") is None
    info = await store.put_stream("k", b"new")
    assert info.generation > old.generation


def test_generation_preconditions_are_exact() -> None:
    store = MemoryStore()
    first = store._create("k", b"1", {}, if_generation_match=0)
    with pytest.raises(_PreconditionFailed):
        store._create("k", b"2", {}, if_generation_match=0)  # exists: not "absent"
    with pytest.raises(_PreconditionFailed):
        store._create("k", b"2", {}, if_generation_match=first.generation + 1)
    with pytest.raises(_PreconditionFailed):
        store._create("absent", b"2", {}, if_generation_match=first.generation)
    second = store._create("k", b"2", {}, if_generation_match=first.generation)
    assert second.generation > first.generation


async def test_generation_conditioned_delete() -> None:
    store = MemoryStore()
    info = await store.put_stream("k", b"v")
    assert await store.delete("k", generation=info.generation - 1) is False
    assert await store.delete("k", generation=info.generation) is True
    assert await store.delete("k", generation=info.generation) is False


def test_settle() -> None:
    info_digest = Digest(crc32c=crc32c_of_bytes(b"abc"), size=3)
    with pytest.raises(RetryableBlobError):
        settle("k", None, info_digest)  # precondition failed, then the object vanished


async def test_list_pages_resume_after_the_last_key() -> None:
    store = MemoryStore()
    for i in range(6):
        await store.put_stream(f"p/{i}", b"x")
    seen = []
    async for info in store.list("p/", page_size=2):
        seen.append(info.key)
        if info.key == "p/1":
            await store.delete("p/0")  # already listed: must not shift the next page
            await store.delete("p/3")  # not yet listed: simply absent
    assert seen == ["p/0", "p/1", "p/2", "p/4", "p/5"]
