"""The blob store contract: `BlobStore`, the `ObjectInfo` it returns, the `ObjectReader` it opens.

Writes are create-only (pgBackRest's rule for archived logs): writing bytes whose crc32c and size
equal the stored object's is success and returns the stored object (an idempotent re-push after a
crash); anything else under an existing key raises `ObjectConflict` and the stored object is left
exactly as it was. Every read is verified against the crc32c recorded when the object was written.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterable, AsyncIterator, Callable, Iterable, Mapping
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from datetime import datetime
from typing import Protocol, runtime_checkable

from services.blobstore._checksum import Crc32c, Digest
from services.blobstore.errors import IntegrityError


@dataclass(frozen=True, slots=True)
class ObjectInfo:
    """One stored object, as `head`, `list` and the writes report it."""

    key: str
    size: int
    #: base64 of the big-endian 4-byte crc32c, exactly as GCS reports it.
    crc32c: str
    metadata: dict[str, str] = field(hash=False)
    #: Changes whenever the key is re-created (GCS generation; a timestamp in the other drivers).
    generation: int
    updated: datetime


@runtime_checkable
class Readable(Protocol):
    """A blocking file-like source: anything with `read(n) -> bytes`."""

    def read(self, size: int = -1, /) -> bytes: ...


#: An object's metadata, or — for a store whose `late_metadata` is True — a function giving it
#: from the digest of the bytes, called once they are all in, before the object is published.
Metadata = Mapping[str, str] | Callable[[Digest], Mapping[str, str]]

#: What `put_stream` accepts. File-likes are read in a worker thread; sync iterables are consumed on
#: the event loop, so they must not block (prefer an async iterator for pipes and sockets).
Source = bytes | bytearray | memoryview | Readable | AsyncIterable[bytes] | Iterable[bytes]


class ObjectReader:
    """The chunks of one object, verified against its crc32c and size when the end is reached.

    Iterate it (`async for chunk in reader`) or call `read_all()`. Until iteration has finished
    without error the bytes are unverified: a consumer that writes them somewhere must be ready to
    discard them when the last step raises `IntegrityError`.
    """

    def __init__(
        self,
        info: ObjectInfo,
        source: Readable,
        chunk_size: int,
        *,
        blocking: bool = True,
        stop_at_size: bool = False,
    ) -> None:
        """`blocking`: read in a worker thread. `stop_at_size`: end after `info.size` bytes
        without reading to EOF (for remote sources, where EOF costs a request); local sources
        read to EOF, so bytes appended behind the store's back are caught too."""
        self.info = info
        self._source = source
        self._chunk_size = chunk_size
        self._blocking = blocking
        self._stop_at_size = stop_at_size
        self._hasher = Crc32c()
        self._done = False

    def __aiter__(self) -> AsyncIterator[bytes]:
        return self

    async def __anext__(self) -> bytes:
        if self._done:
            raise StopAsyncIteration
        if self._blocking:
            chunk = await asyncio.to_thread(self._read_and_hash)
        else:
            chunk = self._read_and_hash()
        if chunk:
            return chunk
        self._done = True
        self._verify()
        raise StopAsyncIteration

    async def read_all(self) -> bytes:
        return b"".join([chunk async for chunk in self])

    def _read_and_hash(self) -> bytes:
        if self._stop_at_size and self._hasher.size == self.info.size:
            return b""
        chunk = self._source.read(self._chunk_size)
        self._hasher.update(chunk)
        # A source that keeps returning bytes past the recorded size is not the object we headed.
        if self._hasher.size > self.info.size:
            self._done = True
            self._verify()
        return chunk

    def _verify(self) -> None:
        got = self._hasher.digest()
        if got.crc32c != self.info.crc32c or got.size != self.info.size:
            raise IntegrityError(
                f"{self.info.key}: read crc32c={got.crc32c} size={got.size}, "
                f"recorded crc32c={self.info.crc32c} size={self.info.size}",
                key=self.info.key,
            )


class BlobStore(Protocol):
    """Object storage for logs and backups. All methods are coroutines; keys are validated by
    `services.blobstore.validate_key` in every driver, so all drivers share one key space."""

    async def put_file(
        self, key: str, path: str | os.PathLike[str], metadata: Mapping[str, str] | None = None
    ) -> ObjectInfo:
        """Create `key` from a local file (create-only, see the module docstring)."""
        ...

    #: Whether `put_stream` takes its metadata as a function of the digest (the store writes
    #: metadata after the bytes), so a caller need not read its source twice to describe it.
    late_metadata: bool

    async def put_stream(
        self,
        key: str,
        source: Source,
        metadata: Metadata | None = None,
        *,
        expect: Digest | None = None,
    ) -> ObjectInfo:
        """Create `key` from a stream of unknown length without staging it whole (create-only).

        `expect`: the crc32c and size the bytes must have (a caller that hashed its source
        beforehand). Other bytes are refused before the object can be seen — `IntegrityError`,
        nothing created — so the caller need not hash the stream a second time to be sure.
        `metadata` may be a function of the bytes' digest only where `late_metadata` is True.
        """
        ...

    async def get_to_file(self, key: str, path: str | os.PathLike[str]) -> ObjectInfo:
        """Download to `path` atomically: the file appears complete and verified, or not at all."""
        ...

    def open_read(
        self, key: str, *, chunk_size: int | None = None
    ) -> AbstractAsyncContextManager[ObjectReader]:
        """`async with store.open_read(key) as reader:` raises `ObjectNotFound` on entry."""
        ...

    async def get_bytes(self, key: str) -> bytes:
        """The whole verified object in memory (manifests, small objects)."""
        ...

    async def head(self, key: str) -> ObjectInfo | None:
        """The object's info, or None when there is no object under `key`."""
        ...

    def list(self, prefix: str = "", *, page_size: int = 1000) -> AsyncIterator[ObjectInfo]:
        """Objects whose key starts with `prefix` (a string prefix), in key order, fetched a page
        at a time."""
        ...

    async def delete(self, key: str, *, generation: int | None = None) -> bool:
        """Remove `key` (only that generation, when given). True if this call removed an object;
        False if there was none to remove, which makes retried deletes harmless."""
        ...

    async def close(self) -> None:
        """Release connections; the store is unusable afterwards."""
        ...
