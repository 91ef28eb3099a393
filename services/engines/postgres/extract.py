"""A restore's ``download`` phase: a base backup's tar parts streamed from the store into the
new data directory (see ``restore.py``), nothing staged whole on disk.
"""

from __future__ import annotations

import asyncio
import io
import os
import queue
import tarfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

from pydantic import ValidationError

from services.blobstore import (
    BlobStore,
    BlobStoreError,
    IntegrityError,
    ObjectNotFound,
    RetryableBlobError,
)
from services.engines.base import EngineError, JobContext
from services.engines.postgres.fetchserver import _Decoder
from services.engines.postgres.instance import _fail
from services.engines.postgres.manifest import BaseManifest
from services.engines.postgres.oscmd import OsUser, chown_to

__all__ = ["PIPE_DEPTH", "extract_base", "load_manifest", "prepare_data_dir"]

PIPE_DEPTH = 16
"""Decoded chunks queued between the download and the extracting thread."""


# -- the base backup -------------------------------------------------------------------------------


async def load_manifest(store: BlobStore, key: str) -> BaseManifest:
    """The base backup's manifest; ``EngineError`` when it is missing or not one."""
    try:
        raw = await store.get_bytes(key)
    except ObjectNotFound:
        raise _fail(f"no base backup manifest at {key}") from None
    except RetryableBlobError as exc:
        raise _fail(f"reading {key}: {exc}", retryable=True) from exc
    try:
        return BaseManifest.model_validate_json(raw)
    except ValidationError as exc:
        raise _fail(f"{key} is not a PostgreSQL base backup manifest: {exc}") from None


class _Abandoned(Exception):
    """The extracting side stopped reading: the download stops feeding it."""


class _Pipe(io.RawIOBase):
    """A blocking file the extracting thread reads, fed chunk by chunk by the download.

    Either side can stop the other: :meth:`abort` makes the reader raise, and a reader that
    finished (or failed) makes :meth:`put` raise :class:`_Abandoned` — a bad archive must not
    leave the download blocked on a full queue, nor a failed download a thread waiting forever.
    """

    def __init__(self) -> None:
        self._queue: queue.Queue[bytes | None] = queue.Queue(PIPE_DEPTH)
        self._buffer = memoryview(b"")
        self._eof = False
        self._error: BaseException | None = None
        self.reader_done = threading.Event()

    def readable(self) -> bool:
        return True

    def readinto(self, target: bytearray | memoryview) -> int:  # type: ignore[override]
        while not self._buffer:
            if self._eof:
                return 0
            try:
                item = self._queue.get(timeout=0.2)
            except queue.Empty:
                if self._error is not None:
                    raise self._error from None
                continue
            if item is None:
                self._eof = True
                return 0
            self._buffer = memoryview(item)
        n = min(len(target), len(self._buffer))
        target[:n] = self._buffer[:n]
        self._buffer = self._buffer[n:]
        return n

    def put(self, item: bytes | None) -> None:
        """Called in a worker thread: blocks while the queue is full."""
        while True:
            if self.reader_done.is_set():
                raise _Abandoned
            try:
                self._queue.put(item, timeout=0.2)
                return
            except queue.Full:
                continue

    def abort(self, error: BaseException) -> None:
        self._error = error


def _safe_filter(user: OsUser) -> Callable[[tarfile.TarInfo, str], tarfile.TarInfo | None]:
    def accept(member: tarfile.TarInfo, dest: str) -> tarfile.TarInfo | None:
        member = tarfile.data_filter(member, dest)  # refuses absolute, .., escaping links, devices
        return member.replace(uid=user.uid, gid=user.gid, uname="", gname="", deep=False)

    return accept


def _extract(pipe: _Pipe, dest: Path, user: OsUser) -> int:
    """Extract the tar stream from ``pipe`` into ``dest`` (in a worker thread); returns members."""
    count = 0
    try:
        with tarfile.open(fileobj=pipe, mode="r|") as archive:
            accept = _safe_filter(user)
            for member in archive:
                archive.extract(member, dest, filter=accept, numeric_owner=True)
                count += 1
        while pipe.read(1 << 20):  # read the rest, so every part is read to its verified end
            pass
    finally:
        pipe.reader_done.set()
    return count


def _decode_into_pipe(decoder: _Decoder, chunk: bytes, pipe: _Pipe) -> int:
    data = decoder.feed(chunk)
    if data:
        pipe.put(data)
    return len(data)


async def extract_base(
    store: BlobStore,
    manifest: BaseManifest,
    dest: Path,
    user: OsUser,
    ctx: JobContext,
) -> int:
    """Download the base backup's parts in order and extract them into ``dest``; returns the
    number of tar members. Raises ``EngineError`` (retryable for store trouble)."""
    pg = manifest.postgres
    pipe = _Pipe()
    extracting = asyncio.create_task(asyncio.to_thread(_extract, pipe, dest, user))
    decoder = _Decoder(pg.compression)
    done = 0
    last_report = 0.0
    try:
        try:
            for index, part in enumerate(pg.parts):
                info = await store.head(part.key)
                if info is None:
                    raise _fail(f"base backup part {part.key} is missing from the store")
                if info.crc32c != part.crc32c or info.size != part.size:
                    raise _fail(
                        f"{part.key}: the store holds crc32c={info.crc32c} size={info.size}, the "
                        f"manifest says crc32c={part.crc32c} size={part.size}"
                    )
                async with store.open_read(part.key) as reader:
                    async for chunk in reader:  # verified against the crc32c at the end
                        # Decoding and waiting for room in the pipe both happen off the loop.
                        done += await asyncio.to_thread(_decode_into_pipe, decoder, chunk, pipe)
                        if time.monotonic() - last_report > 1.0:
                            last_report = time.monotonic()
                            await ctx.progress(
                                "download",
                                done=done,
                                total=pg.tar_bytes,
                                unit="bytes",
                                message=f"part {index + 1} of {len(pg.parts)}",
                            )
            decoder.finish()
            if done != pg.tar_bytes:
                raise _fail(
                    f"the base backup's tar is {done} bytes, its manifest says {pg.tar_bytes}"
                )
            await asyncio.to_thread(pipe.put, None)
        except _Abandoned:
            pass  # the extraction stopped early: its own error (below) is the one to report
        except BaseException as exc:
            pipe.abort(RuntimeError(f"download failed: {exc}"))
            # No thread may write into the directory after we return, even when cancelled.
            await asyncio.gather(asyncio.shield(extracting), return_exceptions=True)
            raise
        members = await extracting
    except EngineError:
        raise
    except IntegrityError as exc:
        raise _fail(f"the base backup is corrupt: {exc}") from exc
    except RetryableBlobError as exc:
        raise _fail(f"downloading the base backup: {exc}", retryable=True) from exc
    except BlobStoreError as exc:
        raise _fail(f"downloading the base backup: {exc}") from exc
    except (tarfile.TarError, OSError) as exc:
        raise _fail(f"extracting the base backup into {dest}: {exc}") from exc
    await ctx.progress("download", done=done, total=pg.tar_bytes, unit="bytes")
    return members


def prepare_data_dir(data_dir: Path, user: OsUser) -> None:
    """After extraction: the OS user owns everything, the directory is 0700, no stale pid."""
    (data_dir / "postmaster.pid").unlink(missing_ok=True)
    for sub in ("pg_wal", "pg_wal/archive_status"):
        (data_dir / sub).mkdir(mode=0o700, exist_ok=True)
    if os.geteuid() == 0 and not user.is_current:
        for root, dirs, files in os.walk(data_dir):
            for name in [*dirs, *files]:
                os.lchown(os.path.join(root, name), user.uid, user.gid)
    chown_to(data_dir, user)
    data_dir.chmod(0o700)
