"""`MemoryStore`: the in-memory fake every unit test uses.

It enforces generation preconditions exactly as GCS does (`if_generation_match=0` means "only if
absent", `N` means "only if the live generation is N"), and its create-only write takes the same
path as `GcsStore`: head first, then a conditional create, and on a failed precondition settle by
comparing crc32c. The GCS emulator ignores `ifGenerationMatch`, so this fake — not the emulator —
is where create-only behaviour under races is proven (see `tests/unit/test_blobstore_memory.py`).
"""

from __future__ import annotations

import io
import itertools
import time
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime

from services.blobstore._checksum import Crc32c, Digest
from services.blobstore._common import (
    StoreBase,
    check_expected,
    drain,
    iter_source,
    resolve_metadata,
    settle,
)
from services.blobstore._keys import validate_key, validate_prefix
from services.blobstore.errors import ObjectNotFound
from services.blobstore.model import Metadata, ObjectInfo, ObjectReader, Source


class _PreconditionFailed(Exception):
    """The live generation is not the one the write was conditioned on (GCS: 412)."""


@dataclass(slots=True)
class _Stored:
    data: bytes
    info: ObjectInfo


class MemoryStore(StoreBase):
    """Objects in a dict; safe for concurrent coroutines on one event loop."""

    late_metadata = True

    def __init__(self) -> None:
        self._objects: dict[str, _Stored] = {}
        # Generations only grow, like GCS's, so a re-created key never reuses one.
        self._generations = itertools.count(time.time_ns())

    # -- the precondition-enforcing primitives (what GCS does server-side) ---------------------

    def _create(
        self, key: str, data: bytes, metadata: Mapping[str, str], *, if_generation_match: int
    ) -> ObjectInfo:
        live = self._objects.get(key)
        live_generation = live.info.generation if live is not None else 0
        if live_generation != if_generation_match:
            raise _PreconditionFailed(key)
        hasher = Crc32c()
        hasher.update(data)
        digest = hasher.digest()
        info = ObjectInfo(
            key=key,
            size=digest.size,
            crc32c=digest.crc32c,
            metadata=dict(metadata),
            generation=next(self._generations),
            updated=datetime.now(UTC),
        )
        self._objects[key] = _Stored(data=data, info=info)
        return info

    # -- BlobStore ----------------------------------------------------------------------------

    async def put_stream(
        self,
        key: str,
        source: Source,
        metadata: Metadata | None = None,
        *,
        expect: Digest | None = None,
    ) -> ObjectInfo:
        validate_key(key)
        chunks = iter_source(source)
        existing = await self.head(key)
        if existing is not None:
            return settle(key, existing, expect or await drain(chunks))
        hasher = Crc32c()
        parts: list[bytes] = []
        async for chunk in chunks:
            hasher.update(chunk)
            parts.append(chunk)
        check_expected(key, hasher.digest(), expect)
        described = resolve_metadata(metadata, hasher.digest())
        try:
            # Another writer may have created the key while the stream was being read.
            return self._create(key, b"".join(parts), described, if_generation_match=0)
        except _PreconditionFailed:
            return settle(key, await self.head(key), hasher.digest())

    @asynccontextmanager
    async def open_read(
        self, key: str, *, chunk_size: int | None = None
    ) -> AsyncIterator[ObjectReader]:
        validate_key(key)
        stored = self._objects.get(key)
        if stored is None:
            raise ObjectNotFound(key)
        yield ObjectReader(
            stored.info,
            io.BytesIO(stored.data),
            chunk_size or self.read_chunk_size,
            blocking=False,
        )

    async def head(self, key: str) -> ObjectInfo | None:
        validate_key(key)
        stored = self._objects.get(key)
        return stored.info if stored is not None else None

    async def list(self, prefix: str = "", *, page_size: int = 1000) -> AsyncIterator[ObjectInfo]:
        validate_prefix(prefix)
        after = ""
        while True:
            # One "request" per page, resuming after the last key like a GCS page token, so
            # objects created or deleted between pages behave as they would on GCS.
            page = sorted(k for k in self._objects if k.startswith(prefix) and k > after)
            for key in page[:page_size]:
                stored = self._objects.get(key)
                if stored is not None:
                    yield stored.info
            if len(page) <= page_size:
                return
            after = page[page_size - 1]

    async def delete(self, key: str, *, generation: int | None = None) -> bool:
        validate_key(key)
        stored = self._objects.get(key)
        if stored is None:
            return False
        if generation is not None and stored.info.generation != generation:
            return False
        del self._objects[key]
        return True

    # -- test affordances ---------------------------------------------------------------------

    def corrupt(self, key: str, offset: int = 0) -> None:
        """Flip one stored byte but keep the recorded crc32c: bit rot, to prove reads verify."""
        stored = self._objects[key]
        data = bytearray(stored.data)
        data[offset] ^= 0xFF
        stored.data = bytes(data)
