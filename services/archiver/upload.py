"""Store one log: hash it, upload it (optionally zstd-compressed), verify what the store holds.

The object's metadata carries the log's own size and crc32c. A store that writes metadata after
the bytes (`late_metadata`: the filesystem) gets the file in one pass: it is hashed here as it is
handed over and by the store as it is written, and the metadata is made from our digest once the
last byte is in, before the object can be seen; the two digests must then agree (`verify`).

GCS sends metadata first, so there the file is read twice, on purpose. The first pass hashes and
validates it. The second streams it to the store, and the bytes must be pass one's: uncompressed,
the store is told pass one's digest (`put_stream(expect=)`) and refuses other bytes before the
object can be seen (GCS checks the crc32c declared with the upload); compressed, the stream
hashes the log again and fails before its end if it differs. Either way the store never
finalises an object holding bytes of no log. (Reading twice costs two page-cache copies through
one reused 1 MiB buffer; holding a segment whole instead means faulting in 16 MiB of fresh
memory per segment, which costs more: measured, a quarter of a million page faults and half
again the system time per GiB.) Storing a torn log under a create-only key would cost the
archive.

Idempotency is judged by the log's own checksum, not the stored bytes': an object stored
uncompressed before a restart with `compression = "zstd"` is still the same log. So:

    key absent                            → upload, then verify the store's answer (size,
                                            crc32c of what it holds, the log's crc32c)
    key present, same log crc32c          → success (an identical re-push), nothing written
    key present, different log crc32c     → ChecksumConflict (alarm), nothing written
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import Callable, Generator
from dataclasses import dataclass

import zstandard

from services.archiver.errors import ChecksumConflict, LogNotReady, LogUnreadable
from services.archiver.keys import object_metadata
from services.archiver.sources import Fingerprint, LoggedFile, read_chunks
from services.blobstore import (
    BlobStore,
    Crc32c,
    Digest,
    IntegrityError,
    ObjectConflict,
    ObjectInfo,
    RetryableBlobError,
)

HeaderCheck = Callable[[LoggedFile, bytes], None]


@dataclass(frozen=True, slots=True)
class Stored:
    """What the store holds for one log."""

    info: ObjectInfo
    #: The log as the engine wrote it.
    log_digest: Digest
    compression: str
    #: True when the object was already there (an identical re-push): nothing was written.
    existed: bool
    #: The file's identity while the bytes judged above were read from it (`fingerprint_of`).
    identity: Fingerprint


def digest_log(log: LoggedFile, check: HeaderCheck) -> tuple[Digest, Fingerprint]:
    """Pass one: hash and validate the whole file (blocking)."""
    hasher = Crc32c()
    identity: list[Fingerprint] = []
    for chunk in read_chunks(log, check, identity=identity):
        hasher.update(chunk)
    return hasher.digest(), identity[0]


def _logged_crc32c(info: ObjectInfo) -> str:
    # Objects written by this archiver carry the log's crc32c in metadata; anything else
    # (written uncompressed by hand, say) is judged by its own bytes.
    return info.metadata.get("crc32c") or info.crc32c


def _settle(key: str, existing: ObjectInfo, local: Digest) -> None:
    if _logged_crc32c(existing) != local.crc32c:
        raise ChecksumConflict(
            key, existing_crc32c=_logged_crc32c(existing), attempted_crc32c=local.crc32c
        )


class _Stream:
    """The bytes to upload (compressed or not), read and checked as they go: pass two, failing
    before the end if the file is not pass one's (`expected`), or the only pass.

    A blocking file-like (`read`), so a store may copy it in a worker thread in one go."""

    def __init__(
        self,
        log: LoggedFile,
        check: HeaderCheck,
        expected: Digest | None,
        zstd_level: int | None,
        *,
        store_checks: bool = False,
    ) -> None:
        """`expected`: pass one's digest (None: this is the only pass; `log_digest` is the log's
        once the stream is read to its end). `store_checks`: the store is told `expected` and
        refuses other bytes before the object can be seen, so the bytes need not be hashed here
        as well (uncompressed only: compressed, what is sent is not what was hashed)."""
        self.identity: list[Fingerprint] = []
        self._chunks: Generator[bytes, None, None] = read_chunks(log, check, identity=self.identity)
        self._log = log
        self._expected = expected
        self._hasher: Crc32c | None = None if store_checks else Crc32c()
        self._compressor = (
            zstandard.ZstdCompressor(level=zstd_level, write_checksum=True).compressobj(
                size=log.size
            )
            if zstd_level is not None
            else None
        )
        #: Uncompressed, what is sent is the log itself: `_hasher` already hashes it.
        self._sent = Crc32c() if self._compressor is not None else None

    def _next(self) -> bytes | None:
        """The next piece to send (blocking), or None at the end."""
        while True:
            chunk = next(self._chunks, None)
            if chunk is None:
                if (
                    self._hasher is not None
                    and self._expected is not None
                    and self._hasher.digest() != self._expected
                ):
                    raise LogNotReady(f"{self._log.path} changed between hashing and uploading")
                if self._compressor is None:
                    return None
                tail: bytes = self._compressor.flush()
                self._compressor = None
                return tail or None
            if self._hasher is not None:
                self._hasher.update(chunk)
            if self._compressor is None:
                return chunk
            out: bytes = self._compressor.compress(chunk)
            if out:
                return out

    def read(self, size: int = -1, /) -> bytes:
        """The next piece (blocking; `size` is a hint: pieces are the file's chunks, compressed
        or not), or b"" at the end."""
        piece = self._next()
        if piece is None:
            return b""
        if self._sent is not None:
            self._sent.update(piece)
        return piece

    def sent(self) -> Digest:
        """The digest of what was handed out (once all of it was)."""
        if self._sent is not None:
            return self._sent.digest()
        return self.log_digest()

    def log_digest(self) -> Digest:
        """The log's digest: pass one's, or this pass's (once it is read to its end)."""
        if self._hasher is None:
            assert self._expected is not None
            return self._expected
        return self._hasher.digest()

    def close(self) -> None:
        # Close the file now, not when the generator is collected, even if the store gave up
        # half way. (A read still running in a worker thread after a cancellation closes the
        # file itself when it finishes: the generator is then collected.)
        with contextlib.suppress(ValueError):
            self._chunks.close()


async def store_log(
    store: BlobStore,
    key: str,
    log: LoggedFile,
    check: HeaderCheck,
    *,
    compression: str = "none",
    zstd_level: int = 3,
) -> Stored:
    """Put `log` under `key` create-only and verify it; see the module docstring."""
    if store.late_metadata:
        return await _store_in_one_pass(store, key, log, check, compression, zstd_level)
    local, identity = await asyncio.to_thread(digest_log, log, check)
    existing = await store.head(key)
    if existing is not None:
        _settle(key, existing, local)
        return Stored(existing, local, _compression_of(existing), True, identity)
    metadata = object_metadata(log, local, compression)
    level = zstd_level if compression == "zstd" else None
    # Uncompressed, the object is the log: the store is told pass one's digest and refuses
    # other bytes, which spares hashing pass two here as well as in the store.
    expect = local if level is None else None
    stream = _Stream(log, check, local, level, store_checks=expect is not None)
    try:
        returned = await store.put_stream(key, stream, metadata, expect=expect)
    except ObjectConflict:
        return await _raced(store, key, local, identity)
    finally:
        stream.close()
    held = verify(key, returned, stream.sent(), local)
    # The bytes sent came from the file as pass two found it (hashing to pass one's digest).
    return Stored(held, local, compression, False, stream.identity[0])


async def _store_in_one_pass(
    store: BlobStore,
    key: str,
    log: LoggedFile,
    check: HeaderCheck,
    compression: str,
    zstd_level: int,
) -> Stored:
    """For a store that writes metadata after the bytes (`late_metadata`): the file is read
    once, hashed here as it is handed over (and by the store as it is written); the metadata is
    made from this digest once the last byte is in, before the object can be seen."""
    await asyncio.to_thread(_still_there, log)  # a vanished file is news, store or no store
    existing = await store.head(key)
    if existing is not None:
        local, identity = await asyncio.to_thread(digest_log, log, check)
        _settle(key, existing, local)
        return Stored(existing, local, _compression_of(existing), True, identity)
    stream = _Stream(log, check, None, zstd_level if compression == "zstd" else None)

    def describe(_stored: Digest) -> dict[str, str]:
        return object_metadata(log, stream.log_digest(), compression)

    try:
        returned = await store.put_stream(key, stream, describe)
    except ObjectConflict:
        local, identity = await asyncio.to_thread(digest_log, log, check)
        return await _raced(store, key, local, identity)
    finally:
        stream.close()
    local = stream.log_digest()
    held = verify(key, returned, stream.sent(), local)
    return Stored(held, local, compression, False, stream.identity[0])


def _still_there(log: LoggedFile) -> None:
    try:
        os.stat(log.path)
    except FileNotFoundError:
        raise LogUnreadable(f"{log.path} is gone: removed before it was stored") from None
    except OSError as exc:
        raise LogUnreadable(f"cannot stat {log.path}: {exc.strerror or exc}") from None


async def _raced(store: BlobStore, key: str, local: Digest, identity: Fingerprint) -> Stored:
    """Someone stored `key` between our head and our write: judge it like a re-push."""
    raced = await store.head(key)
    if raced is None:
        raise RetryableBlobError(f"{key}: refused as taken, yet absent now; retry", key=key)
    _settle(key, raced, local)
    return Stored(raced, local, _compression_of(raced), True, identity)


def _compression_of(info: ObjectInfo) -> str:
    return info.metadata.get("compression", "none")


def verify(key: str, held: ObjectInfo, sent: Digest, local: Digest) -> ObjectInfo:
    """Compare what the store says it now holds under `key` with what was sent.

    `held` is the store's own answer to the write: the object it finalised, described by the
    store (GCS: its response, or a read of the object; the filesystem: the size and crc32c of
    the bytes it wrote, fsynced, and recorded in the object's sidecar), never our intent.
    """
    if (held.crc32c, held.size) != (sent.crc32c, sent.size):
        if _logged_crc32c(held) != local.crc32c:
            raise ChecksumConflict(
                key, existing_crc32c=_logged_crc32c(held), attempted_crc32c=local.crc32c
            )
        raise IntegrityError(
            f"{key}: store holds crc32c={held.crc32c} size={held.size}, sent "
            f"crc32c={sent.crc32c} size={sent.size}",
            key=key,
        )
    if _logged_crc32c(held) != local.crc32c:
        raise IntegrityError(f"{key}: stored metadata names another log", key=key)
    return held
