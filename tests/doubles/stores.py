"""A blob store double that fails on demand: `FlakyStore` wraps a real store (usually
`MemoryStore`) and raises `RetryableBlobError` for chosen keys a chosen number of times.

The seam is composition, not monkeypatching: the archiver gets a `BlobStore` and cannot tell.
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import AsyncIterator, Mapping
from contextlib import AbstractAsyncContextManager

from services.blobstore import (
    BlobStore,
    Digest,
    Metadata,
    ObjectInfo,
    ObjectReader,
    RetryableBlobError,
    Source,
)


class FlakyStore:
    def __init__(self, inner: BlobStore) -> None:
        self.inner = inner
        #: key → how many more writes of it fail.
        self.failures: Counter[str] = Counter()
        self.writes: Counter[str] = Counter()
        self.failed: Counter[str] = Counter()

    @property
    def late_metadata(self) -> bool:
        return self.inner.late_metadata

    def fail(self, key: str, times: int) -> None:
        self.failures[key] += times

    def _maybe_fail(self, key: str) -> None:
        self.writes[key] += 1
        if self.failures[key] > 0:
            self.failures[key] -= 1
            self.failed[key] += 1
            raise RetryableBlobError(f"{key}: injected 503", key=key)

    async def put_file(
        self, key: str, path: str | os.PathLike[str], metadata: Mapping[str, str] | None = None
    ) -> ObjectInfo:
        self._maybe_fail(key)
        return await self.inner.put_file(key, path, metadata)

    async def put_stream(
        self,
        key: str,
        source: Source,
        metadata: Metadata | None = None,
        *,
        expect: Digest | None = None,
    ) -> ObjectInfo:
        self._maybe_fail(key)
        return await self.inner.put_stream(key, source, metadata, expect=expect)

    async def get_to_file(self, key: str, path: str | os.PathLike[str]) -> ObjectInfo:
        return await self.inner.get_to_file(key, path)

    def open_read(
        self, key: str, *, chunk_size: int | None = None
    ) -> AbstractAsyncContextManager[ObjectReader]:
        return self.inner.open_read(key, chunk_size=chunk_size)

    async def get_bytes(self, key: str) -> bytes:
        return await self.inner.get_bytes(key)

    async def head(self, key: str) -> ObjectInfo | None:
        return await self.inner.head(key)

    def list(self, prefix: str = "", *, page_size: int = 1000) -> AsyncIterator[ObjectInfo]:
        return self.inner.list(prefix, page_size=page_size)

    async def delete(self, key: str, *, generation: int | None = None) -> bool:
        return await self.inner.delete(key, generation=generation)

    async def close(self) -> None:
        await self.inner.close()
