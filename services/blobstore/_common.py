"""Pieces every driver shares: reading a `Source`, settling create-only writes, atomic downloads."""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
from collections.abc import AsyncIterable, AsyncIterator, Iterable, Mapping
from contextlib import AbstractAsyncContextManager
from pathlib import Path
from typing import IO, Protocol

from services.blobstore._checksum import FILE_CHUNK, Crc32c, Digest
from services.blobstore.errors import IntegrityError, ObjectConflict, RetryableBlobError
from services.blobstore.model import Metadata, ObjectInfo, ObjectReader, Readable, Source

#: Default size of the chunks a reader yields (drivers may prefer larger ones).
READ_CHUNK = 1024 * 1024


async def iter_source(source: Source, chunk_size: int = FILE_CHUNK) -> AsyncIterator[bytes]:
    """Normalise every accepted `Source` to an async iterator of non-empty byte chunks."""
    if isinstance(source, bytes | bytearray | memoryview):
        # Checked first: bytes are also Iterable[int], which would be silently wrong.
        if source:
            yield bytes(source)
        return
    if isinstance(source, Readable):
        while True:
            chunk = await asyncio.to_thread(source.read, chunk_size)
            if not chunk:
                return
            yield bytes(chunk)
    elif isinstance(source, AsyncIterable):
        async for chunk in source:
            if chunk:
                yield bytes(chunk)
    elif isinstance(source, Iterable):
        for chunk in source:
            if chunk:
                yield bytes(chunk)
    else:
        raise TypeError(f"cannot stream from {type(source).__name__}")


async def drain(chunks: AsyncIterator[bytes]) -> Digest:
    """Hash the rest of a stream without storing it (the key is taken: only the digest matters)."""
    hasher = Crc32c()
    async for chunk in chunks:
        hasher.update(chunk)
    return hasher.digest()


def check_expected(key: str, got: Digest, expect: Digest | None) -> None:
    """Refuse bytes that are not the ones the caller announced (before anything is visible)."""
    if expect is not None and got != expect:
        raise IntegrityError(
            f"{key}: the stream hashed to crc32c={got.crc32c} size={got.size}, not the "
            f"crc32c={expect.crc32c} size={expect.size} announced; nothing was stored",
            key=key,
        )


def settle(key: str, existing: ObjectInfo | None, local: Digest) -> ObjectInfo:
    """Decide a create-only write that found `key` taken: same bytes → success, else an alarm."""
    if existing is None:
        # The precondition failed, yet nothing is there now: deleted in between. Retrying the
        # whole put is the only sound move, and it is safe.
        raise RetryableBlobError(f"{key}: create lost a race with a delete; retry", key=key)
    if existing.crc32c == local.crc32c and existing.size == local.size:
        return existing
    raise ObjectConflict(
        key,
        existing_crc32c=existing.crc32c,
        existing_size=existing.size,
        attempted_crc32c=local.crc32c,
        attempted_size=local.size,
    )


class OpensReads(Protocol):
    def open_read(
        self, key: str, *, chunk_size: int | None = None
    ) -> AbstractAsyncContextManager[ObjectReader]: ...


async def download_to_file(
    store: OpensReads, key: str, path: str | os.PathLike[str], chunk_size: int | None = None
) -> ObjectInfo:
    """Stream `key` into a temporary sibling of `path`, verify, fsync, then rename into place, so
    a reader of `path` (PostgreSQL's restore_command) never sees a partial or unverified file."""
    dest = Path(path)
    partial = dest.with_name(f".{dest.name}.partial-{secrets.token_hex(6)}")
    async with store.open_read(key, chunk_size=chunk_size) as reader:
        fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o640)
        try:
            with os.fdopen(fd, "wb") as out:
                async for chunk in reader:
                    await asyncio.to_thread(out.write, chunk)
                await asyncio.to_thread(flush_and_sync, out)
            os.replace(partial, dest)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(partial)
            raise
        await asyncio.to_thread(fsync_dir, dest.parent)
        return reader.info


def flush_and_sync(f: IO[bytes]) -> None:
    f.flush()
    os.fsync(f.fileno())


def fsync_dir(path: str | os.PathLike[str]) -> None:
    """Make renames and links in `path` durable (a rename is not durable until its dir is)."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def resolve_metadata(metadata: Metadata | None, digest: Digest) -> dict[str, str]:
    """The metadata to store: `metadata` itself, or what it gives for `digest` (late)."""
    if callable(metadata):
        return dict(metadata(digest))
    return dict(metadata or {})


class StoreBase:
    """The operations every driver derives from `put_stream` and `open_read` the same way."""

    read_chunk_size = READ_CHUNK
    late_metadata = False

    async def put_stream(
        self,
        key: str,
        source: Source,
        metadata: Metadata | None = None,
        *,
        expect: Digest | None = None,
    ) -> ObjectInfo:
        raise NotImplementedError

    def open_read(
        self, key: str, *, chunk_size: int | None = None
    ) -> AbstractAsyncContextManager[ObjectReader]:
        raise NotImplementedError

    async def put_file(
        self, key: str, path: str | os.PathLike[str], metadata: Mapping[str, str] | None = None
    ) -> ObjectInfo:
        f = await asyncio.to_thread(open, path, "rb")
        try:
            return await self.put_stream(key, f, metadata)
        finally:
            f.close()

    async def get_bytes(self, key: str) -> bytes:
        async with self.open_read(key) as reader:
            return await reader.read_all()

    async def get_to_file(self, key: str, path: str | os.PathLike[str]) -> ObjectInfo:
        return await download_to_file(self, key, path)

    async def close(self) -> None:
        return None
