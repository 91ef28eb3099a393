"""`GcsStore`: Google Cloud Storage through google-cloud-storage, run in worker threads.

Create-only write, the same shape as `MemoryStore`'s (where it is proven under races):
1. `head`: if the key exists, hash the source (uploading nothing) and settle — same crc32c and
   size → the stored object is returned, else `ObjectConflict`;
2. otherwise upload with `if_generation_match=0`, so GCS itself refuses to replace an object that
   appeared meanwhile (HTTP 412 → settle as in 1). Step 1 is what makes conflicts visible on the
   emulator, which ignores preconditions; step 2 is what makes them safe on GCS;
3. compare the crc32c GCS computed with the one computed locally; on a mismatch delete exactly
   the generation this upload created and raise `IntegrityError`.

Uploads: `put_file` sends objects up to 8 MiB in one request and larger ones as resumable uploads
in `chunk_size` pieces (a multiple of 256 KiB), with the precomputed crc32c so GCS rejects a
corrupted upload at finalisation. `put_stream` always uses a resumable upload and holds at most
one chunk in memory. Every request is retried per `RetrySettings` (`_gcs_errors.py` has the table).

Endpoint: `endpoint=` (or `STORAGE_EMULATOR_HOST`, honoured by the google client) points at an
emulator; with an explicit endpoint and no credentials, anonymous credentials are used.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import logging
import os
from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from typing import Any, NoReturn, TypeVar

import requests
from google.auth.credentials import AnonymousCredentials, Credentials
from google.cloud import storage
from google.cloud.storage import exceptions as storage_exceptions
from google.cloud.storage.fileio import BlobReader, BlobWriter

from services.blobstore._checksum import FILE_CHUNK, Crc32c, Digest, digest_file
from services.blobstore._common import StoreBase, check_expected, drain, iter_source, settle
from services.blobstore._gcs_errors import (
    RetrySettings,
    classify,
    is_checksum_rejection,
    is_precondition_failure,
)
from services.blobstore._keys import validate_key, validate_prefix
from services.blobstore.errors import IntegrityError, ObjectNotFound
from services.blobstore.model import Metadata, ObjectInfo, ObjectReader, Readable, Source

log = logging.getLogger(__name__)

T = TypeVar("T")

#: GCS requires resumable chunks to be multiples of this.
CHUNK_MULTIPLE = 256 * 1024
#: Just above 16 MiB, not 16 MiB: an object of a power-of-two size — a WAL segment — then fits one
#: chunk, and the request carrying it is the final one. With 16 MiB chunks the client sends a
#: 16 MiB object as a full chunk (it cannot know the stream ends there) and then an empty request
#: to finalise it: three requests instead of two.
DEFAULT_CHUNK_SIZE = 16 * 1024 * 1024 + CHUNK_MULTIPLE
#: The google client sends objects up to this size in one multipart request, larger ones in a
#: resumable session.
_MULTIPART_MAX = 8 * 1024 * 1024
_CONTENT_TYPE = "application/octet-stream"


class GcsStore(StoreBase):
    """Objects in `bucket`, under `prefix` (keys are relative to it)."""

    def __init__(
        self,
        bucket: str,
        prefix: str = "",
        *,
        endpoint: str | None = None,
        project: str | None = None,
        credentials: Credentials | None = None,
        chunk_size: int = DEFAULT_CHUNK_SIZE,
        read_chunk_size: int = DEFAULT_CHUNK_SIZE,
        retry: RetrySettings | None = None,
        timeout: float = 60.0,
        http: requests.Session | None = None,
    ) -> None:
        """`http` is the transport seam: a `requests.Session` (tests mount a scripted adapter)."""
        if chunk_size <= 0 or chunk_size % CHUNK_MULTIPLE:
            raise ValueError(f"chunk_size must be a positive multiple of {CHUNK_MULTIPLE} bytes")
        prefix = prefix.strip("/")
        if prefix:
            validate_key(prefix)
        if endpoint is not None and credentials is None:
            credentials = AnonymousCredentials()  # type: ignore[no-untyped-call]
        client_options = {"api_endpoint": endpoint.rstrip("/")} if endpoint else None
        self._client = storage.Client(
            project=project,
            credentials=credentials,
            client_options=client_options,
            _http=http,
        )
        # google-cloud-storage >= 3.x fetches bucket metadata in a background thread on first use
        # of a bucket, only to decorate OpenTelemetry spans: an extra, unretried request that
        # needs storage.buckets.get, which a least-privilege archiver identity does not have, and
        # traffic no caller asked for. Switch it off for this client only.
        if getattr(self._client, "_bucket_metadata_cache", None) is not None:
            self._client._bucket_metadata_cache = None
        self._bucket = self._client.bucket(bucket)
        self.bucket_name = bucket
        self.prefix = prefix
        self.chunk_size = chunk_size
        self.read_chunk_size = read_chunk_size
        self.retry_settings = retry or RetrySettings()
        self._retry = self.retry_settings.policy()
        self._timeout = timeout

    def __repr__(self) -> str:
        return f"GcsStore('gs://{self.bucket_name}/{self.prefix}')"

    # -- names and errors ---------------------------------------------------------------------

    def _name(self, key: str) -> str:
        validate_key(key)
        return f"{self.prefix}/{key}" if self.prefix else key

    def _key(self, name: str) -> str:
        return name[len(self.prefix) + 1 :] if self.prefix else name

    def _info(self, blob: storage.Blob) -> ObjectInfo:
        return ObjectInfo(
            key=self._key(blob.name),
            size=int(blob.size or 0),
            crc32c=str(blob.crc32c),
            metadata={str(k): str(v) for k, v in (blob.metadata or {}).items()},
            generation=int(blob.generation or 0),
            updated=blob.updated or datetime.now(UTC),
        )

    async def _call(self, key: str | None, fn: Callable[..., T], *args: Any, **kw: Any) -> T:
        """Run one blocking google call in a worker thread, translating its failure."""
        with _translated(key):
            return await asyncio.to_thread(fn, *args, **kw)

    # -- writes -------------------------------------------------------------------------------

    async def put_file(
        self, key: str, path: str | os.PathLike[str], metadata: Mapping[str, str] | None = None
    ) -> ObjectInfo:
        self._name(key)  # validates the key before the file is read
        local = await asyncio.to_thread(digest_file, path)
        existing = await self.head(key)
        if existing is not None:
            return settle(key, existing, local)
        return await self._create_known(
            key,
            metadata,
            local,
            lambda blob, **kw: blob.upload_from_filename(os.fspath(path), **kw),
        )

    async def _create_known(
        self,
        key: str,
        metadata: Mapping[str, str] | None,
        local: Digest,
        upload: Callable[..., None],
    ) -> ObjectInfo:
        """Create `key` from bytes whose digest is known before the upload starts (a file, or a
        stream that ended within one chunk): `upload(blob, **options)` sends them, the final
        request carries their crc32c, and the object resource GCS answers with is checked."""
        blob = self._bucket.blob(self._name(key), chunk_size=self.chunk_size)
        blob.metadata = dict(metadata or {})
        try:
            await asyncio.to_thread(
                upload,
                blob,
                content_type=_CONTENT_TYPE,
                if_generation_match=0,
                # Declared with the upload, so GCS refuses to finalise other bytes; and the
                # resource it answers with is compared with `local` below. (The client's own
                # `checksum=` would only hash every byte a third time to check the same.)
                crc32c_checksum_value=local.crc32c,
                retry=self._retry,
                timeout=self._timeout,
            )
        except Exception as exc:
            if is_precondition_failure(exc):
                return settle(key, await self.head(key), local)
            if is_checksum_rejection(exc) or isinstance(exc, storage_exceptions.DataCorruption):
                # Nothing corrupt stays behind: GCS refused it, or the client deleted it.
                raise IntegrityError(
                    f"{key}: upload did not match the local crc32c {local.crc32c}: {exc}", key=key
                ) from exc
            _raise_translated(exc, key)
        return await self._verified(self._info(blob), local)

    async def put_stream(
        self,
        key: str,
        source: Source,
        metadata: Metadata | None = None,
        *,
        expect: Digest | None = None,
    ) -> ObjectInfo:
        if callable(metadata):
            raise TypeError("GCS sends metadata before the bytes: it cannot be late")
        name = self._name(key)
        chunks = iter_source(source)
        existing = await self.head(key)
        if existing is not None:
            return settle(key, existing, expect or await drain(chunks))
        blob = self._bucket.blob(name)
        blob.metadata = dict(metadata or {})
        writer = _CreateOnlyWriter(
            blob,
            chunk_size=self.chunk_size,
            retry=self._retry,
            content_type=_CONTENT_TYPE,
            if_generation_match=0,
            checksum="crc32c",
            timeout=self._timeout,
        )
        # An object announced whole (`expect`) and sent in one request needs no hashing here:
        # GCS itself checks the crc32c declared with it.
        whole = expect is not None and _MULTIPART_MAX < expect.size <= self.chunk_size
        hasher = None if whole else Crc32c()
        batches = _batches(source, chunks, self.chunk_size, hasher)
        pending: list[bytes] = []
        held = 0
        streamed = False
        try:
            async for batch in batches:
                pending += batch
                held += sum(len(part) for part in batch)
                if held >= self.chunk_size:
                    if hasher is None:  # announced whole, yet longer than one chunk
                        raise _not_announced(key, held, expect)
                    # Coalesce small chunks: one thread hop and one request per upload chunk
                    # (the writer buffers them; no copy of our own).
                    parts, pending, held = pending, [], 0
                    await asyncio.to_thread(writer.write_parts, parts)
                    streamed = True
            if not streamed and held > _MULTIPART_MAX:
                # The whole object came within one chunk: send it with its size and crc32c
                # known, in one final request after the session's start, from one buffer
                # (the writer would copy it piecewise into its own, then out again).
                writer.abandoned = True  # never started: nothing to abandon but the object
                if hasher is None:
                    assert expect is not None
                    if held != expect.size:
                        raise _not_announced(key, held, expect)
                    local = expect  # GCS checks the crc32c: it is declared with the upload
                else:
                    local = hasher.digest()
                    check_expected(key, local, expect)
                parts = pending
                return await self._create_known(
                    key,
                    metadata,
                    local,
                    lambda blob, **kw: blob.upload_from_file(
                        io.BytesIO(b"".join(parts)), size=held, **kw
                    ),
                )
            if hasher is None:  # announced whole, yet too short to be sent in one request
                raise _not_announced(key, held, expect)
            # Every byte is hashed before it is handed to the writer: other bytes than the
            # announced ones are refused before the final request.
            check_expected(key, hasher.digest(), expect)
            await asyncio.to_thread(writer.finish, pending)
        except Exception as exc:
            # Not BlobWriter.terminate(): it DELETEs the initiation URL, not the session URI,
            # so it cancels nothing. GCS discards an unfinished session by itself after a week.
            writer.abandoned = True
            if is_precondition_failure(exc):
                # The key appeared while we streamed. Hash what is left of the stream (the
                # failing chunk was already hashed), then judge by crc32c like any re-push.
                async for _ in batches:
                    pass
                digest = hasher.digest() if hasher is not None else expect
                assert digest is not None
                return settle(key, await self.head(key), digest)
            if isinstance(exc, storage_exceptions.DataCorruption):
                await self._delete_corrupt(key, _generation_in(exc))
                raise IntegrityError(f"{key}: upload corrupted in flight: {exc}", key=key) from exc
            _raise_translated(exc, key)
        except BaseException:
            writer.abandoned = True  # cancelled: never let a half-sent upload be finalised
            raise
        # The client already compared GCS's crc32c for the finished upload with its own (a
        # mismatch is the DataCorruption above). The writer does not hand back the object
        # resource, so read it back; what is there now is judged like any re-push, and never
        # deleted: only a delete + re-create by someone else can make it differ.
        return settle(key, await self.head(key), hasher.digest())

    async def _verified(self, info: ObjectInfo, local: Digest) -> ObjectInfo:
        if info.crc32c == local.crc32c and info.size == local.size:
            return info
        await self._delete_corrupt(info.key, info.generation)
        raise IntegrityError(
            f"{info.key}: stored crc32c={info.crc32c} size={info.size} but sent "
            f"crc32c={local.crc32c} size={local.size}; generation {info.generation} deleted",
            key=info.key,
        )

    async def _delete_corrupt(self, key: str, generation: int | None) -> None:
        if generation is None:
            return
        try:
            # Only the generation we wrote: never a different object that took the key since.
            await self.delete(key, generation=generation)
        except Exception:
            log.exception("%s: could not delete corrupt generation %s", key, generation)

    # -- reads --------------------------------------------------------------------------------

    async def head(self, key: str) -> ObjectInfo | None:
        name = self._name(key)
        blob = await self._call(
            key, self._bucket.get_blob, name, retry=self._retry, timeout=self._timeout
        )
        return self._info(blob) if blob is not None else None

    @asynccontextmanager
    async def open_read(
        self, key: str, *, chunk_size: int | None = None
    ) -> AsyncIterator[ObjectReader]:
        name = self._name(key)
        blob = await self._call(
            key, self._bucket.get_blob, name, retry=self._retry, timeout=self._timeout
        )
        if blob is None:
            raise ObjectNotFound(key)
        info = self._info(blob)
        size = chunk_size or self.read_chunk_size
        # Each ranged read is conditioned on the generation we headed: were the key deleted and
        # re-created mid-read, GCS answers 412 instead of splicing two objects together.
        reader = BlobReader(
            blob,
            chunk_size=size,
            retry=self._retry,
            timeout=self._timeout,
            if_generation_match=info.generation,
        )
        try:
            with _translated(key):
                # Stop at the recorded size: asking past the end costs one more request (a 416).
                yield ObjectReader(info, reader, size, stop_at_size=True)
        finally:
            await asyncio.to_thread(reader.close)

    async def list(self, prefix: str = "", *, page_size: int = 1000) -> AsyncIterator[ObjectInfo]:
        validate_prefix(prefix)
        full = f"{self.prefix}/{prefix}" if self.prefix else prefix
        iterator = self._client.list_blobs(
            self._bucket,
            prefix=full or None,
            page_size=page_size,
            retry=self._retry,
            timeout=self._timeout,
        )
        pages: Iterator[Any] = iter(iterator.pages)
        while True:
            # One request per page, in a worker thread; the page token is the iterator's state.
            page = await self._call(None, next, pages, None)
            if page is None:
                return
            for blob in [*page]:
                yield self._info(blob)

    # -- delete -------------------------------------------------------------------------------

    async def delete(self, key: str, *, generation: int | None = None) -> bool:
        name = self._name(key)
        blob = self._bucket.blob(name)
        try:
            await asyncio.to_thread(
                blob.delete,
                if_generation_match=generation,
                retry=self._retry,
                timeout=self._timeout,
            )
        except Exception as exc:
            error = classify(exc, key)
            if isinstance(error, ObjectNotFound) or is_precondition_failure(exc):
                return False
            _raise_translated(exc, key)
        return True

    async def close(self) -> None:
        await asyncio.to_thread(self._client.close)


class _CreateOnlyWriter(BlobWriter):  # type: ignore[misc]  # google-cloud-storage is untyped
    """A BlobWriter that can be abandoned for good.

    BlobWriter is an io object: when garbage-collected unclosed, `IOBase.__del__` calls `close()`,
    which finalises the upload with whatever bytes were buffered. For a failed or cancelled stream
    that would create a truncated object under a create-only key, so an abandoned writer's
    `close()` does nothing.
    """

    abandoned = False

    def write_parts(self, parts: list[bytes]) -> None:
        for part in parts:
            self.write(part)

    def finish(self, tail: list[bytes]) -> None:
        self.write_parts(tail)
        self.close()

    def close(self) -> None:
        if self.abandoned:
            return
        super().close()


def _not_announced(key: str, size: int, expect: Digest | None) -> IntegrityError:
    assert expect is not None
    return IntegrityError(
        f"{key}: the stream is {size}+ bytes, not the {expect.size} announced; nothing was stored",
        key=key,
    )


async def _batches(
    source: Source, chunks: AsyncIterator[bytes], size: int, hasher: Crc32c | None
) -> AsyncIterator[list[bytes]]:
    """The stream as lists of pieces (hashed into `hasher`, if any): a blocking file-like is
    read in a worker thread `size` bytes at a time, one thread hop per upload chunk, not one
    per piece."""
    if isinstance(source, Readable):
        while batch := await asyncio.to_thread(_read_batch, source, size, hasher):
            yield batch
        return
    async for chunk in chunks:
        if hasher is not None:
            hasher.update(chunk)
        yield [chunk]


def _read_batch(source: Readable, size: int, hasher: Crc32c | None) -> list[bytes]:
    """Pieces of `source` totalling at least `size` bytes (fewer only at its end)."""
    parts: list[bytes] = []
    held = 0
    while held < size:
        piece = source.read(FILE_CHUNK)
        if not piece:
            break
        piece = bytes(piece)
        if hasher is not None:
            hasher.update(piece)
        parts.append(piece)
        held += len(piece)
    return parts


def _generation_in(exc: storage_exceptions.DataCorruption) -> int | None:
    response = getattr(exc, "response", None)
    try:
        return int(response.json()["generation"])  # type: ignore[union-attr]
    except Exception:
        return None


def _raise_translated(exc: Exception, key: str | None) -> NoReturn:
    """Re-raise `exc` as its blob store error; anything that is not a storage failure (a bug,
    or the caller's source failing mid-stream) propagates unchanged."""
    error = classify(exc, key)
    if error is None or error is exc:
        raise exc
    raise error from exc


@contextlib.contextmanager
def _translated(key: str | None) -> Iterator[None]:
    try:
        yield
    except Exception as exc:
        error = classify(exc, key)
        if error is None or error is exc:
            raise
        raise error from exc
