"""The node side of ``restore_command``: serve WAL from the object store to ``walfetch``.

PostgreSQL runs ``restore_command`` once per file, as its own OS user, and waits for it. That
program (``walfetch.py``) must start fast and import nothing but the standard library, so it does
no fetching itself: it asks this server, which runs inside the executor (root, with the store
client, credentials and an event loop) for the duration of one restore, and which downloads the
next segments while PostgreSQL replays the current one.

Protocol, over a unix stream socket, one request per connection::

    client:  FETCH <walfilename>\\n
    server:  OK <size>\\n<size bytes>         the file, exactly as PostgreSQL wrote it
         or  MISSING\\n                       not in the archive: recovery takes it as end of WAL
         or  ERROR <reason>\\n                could not tell (store unreachable, corrupt object)

``<walfilename>`` is what PostgreSQL passes as ``%f``. MISSING is an answer PostgreSQL acts on
(it stops asking for segments, or picks a timeline id no history file uses yet), so it is only
given when the store says there is no such object; every doubt is an ERROR, counted in
:attr:`FetchStats.errors` so the restore can refuse to call a recovery good that may have ended
on one (PostgreSQL cannot tell a failed ``restore_command`` from a missing file).

Names map to keys as the archiver writes them (``services/archiver/keys.py``): a segment
``TTTTTTTTLLLLLLLLSSSSSSSS`` is ``<db>/tl-TTTTTTTT/logs/1/<name>``, a ``.history`` (or
``.backup``) file ``<db>/tl-TTTTTTTT/history/<name>``. The restore plan's keys are looked up
first; other names are ``head()``-ed at their computed key. ``.partial`` segments are never
served: they are the unfinished tail of an abandoned timeline, and PostgreSQL never asks for one.

Prefetch: when segment N is served, segments N+1..N+``prefetch`` of the same timeline are
downloaded in parallel into the cache directory (bounded: entries outside the window are dropped),
each verified against the crc32c the store recorded and, after decompression, against the log's
own crc32c and size from the object's metadata. A request for a segment already on its way waits
for that download instead of starting another.

Throughput: :attr:`FetchStats.fetch_mib_s` is WAL bytes downloaded per second of time with at
least one download in flight (the store's rate as recovery saw it); ``served_bytes`` over
``serve_seconds`` is the rate PostgreSQL consumed WAL (it includes replay time).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import zstandard

from services.archiver.keys import database_prefix
from services.blobstore import (
    BlobStore,
    Crc32c,
    IntegrityError,
    ObjectInfo,
    RetryableBlobError,
)
from services.engines.postgres.oscmd import OsUser, chown_to
from services.engines.postgres.walfile import (
    WalFileKind,
    WalNameError,
    parse_name,
    segment_name,
)

__all__ = ["FetchServer", "FetchStats", "serve_wal", "wal_key"]

log = logging.getLogger(__name__)

REQUEST_TIMEOUT_S = 30.0
"""How long a client may take to send its request line."""

MAX_REQUEST = 128
"""Longest request line accepted (a WAL file name is at most 40 characters)."""

FETCH_ATTEMPTS = 3
"""Downloads tried before a request is answered ERROR (transient store errors, bad reads)."""

RETRY_BASE_S = 0.2

THREAD = 1
"""PostgreSQL has one WAL stream: its logs are thread 1 in the object layout."""


def wal_key(prefix: str, uid: str, name: str) -> str | None:
    """The object key the archiver gives WAL file ``name``; None for a name never served.

    Raises :class:`WalNameError` for a name that is not a WAL file name at all.
    """
    parsed = parse_name(name)
    lineage = f"{database_prefix(prefix, uid)}/tl-{parsed.timeline:08X}"
    if parsed.kind is WalFileKind.SEGMENT:
        return f"{lineage}/logs/{THREAD}/{name}"
    if parsed.kind in (WalFileKind.HISTORY, WalFileKind.BACKUP_HISTORY):
        return f"{lineage}/history/{name}"
    return None  # .partial: the abandoned end of a timeline, never part of a recovery


@dataclass
class FetchStats:
    """What one server did; read it after the restore for the ``wal_fetch`` figures."""

    requests: int = 0
    served: int = 0
    missing: int = 0
    errors: int = 0
    served_bytes: int = 0
    fetched_bytes: int = 0
    """WAL bytes downloaded (as PostgreSQL wrote them, after decompression), prefetches included."""
    fetch_seconds: float = 0.0
    """Time during which at least one download was in flight."""
    prefetch_hits: int = 0
    serve_seconds: float = 0.0
    """From the first request to the last answer."""
    last_error: str = ""

    @property
    def fetch_mib_s(self) -> float:
        """Download rate while downloading, MiB/s (0 before anything was fetched)."""
        if self.fetch_seconds <= 0:
            return 0.0
        return self.fetched_bytes / self.fetch_seconds / (1 << 20)


class _Missing(Exception):
    """No object under the key: the archive does not hold this file."""


class _Decoder:
    """zstd frames, one after another, or the bytes as they are."""

    def __init__(self, compression: str) -> None:
        if compression not in ("none", "zstd"):
            raise IntegrityError(f"unknown compression {compression!r}")
        self._zstd = compression == "zstd"
        self._dctx = zstandard.ZstdDecompressor()
        self._obj = self._dctx.decompressobj() if self._zstd else None

    def feed(self, data: bytes) -> bytes:
        if self._obj is None:
            return data
        out = [self._obj.decompress(data)]
        while self._obj.eof and self._obj.unused_data:
            rest = self._obj.unused_data
            self._obj = self._dctx.decompressobj()
            out.append(self._obj.decompress(rest))
        return b"".join(out)

    def finish(self) -> None:
        if self._obj is not None and not self._obj.eof:
            raise IntegrityError("zstd stream ends in the middle of a frame")


class FetchServer:
    """Serves one restore's WAL on a unix socket. Use :func:`serve_wal` to run one."""

    def __init__(
        self,
        store: BlobStore,
        *,
        prefix: str,
        uid: str,
        socket_path: Path,
        cache_dir: Path,
        prefetch: int,
        plan_keys: Iterable[str] = (),
        user: OsUser | None = None,
        stats: FetchStats | None = None,
    ) -> None:
        self.store = store
        self.prefix = prefix
        self.uid = uid
        self.socket_path = socket_path
        self.cache_dir = cache_dir
        self.prefetch = prefetch
        self.user = user
        self.stats = stats if stats is not None else FetchStats()
        self._plan = {key.rpartition("/")[2]: key for key in plan_keys}
        self._tasks: dict[str, asyncio.Task[Path | None]] = {}
        self._segment_size: int | None = None
        self._server: asyncio.AbstractServer | None = None
        self._active_downloads = 0
        self._busy_since = 0.0
        self._first_request: float | None = None

    # -- lifecycle -------------------------------------------------------------------------------

    async def start(self) -> None:
        self.cache_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        self._server = await asyncio.start_unix_server(
            self._handle, path=os.fspath(self.socket_path), limit=MAX_REQUEST * 2
        )
        # Only the database user may ask (the socket is created with root's umask).
        os.chmod(self.socket_path, 0o600)
        if self.user is not None:
            chown_to(self.socket_path, self.user)

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None
        for task in self._tasks.values():
            task.cancel()
        await asyncio.gather(*self._tasks.values(), return_exceptions=True)
        self._tasks.clear()
        with contextlib.suppress(FileNotFoundError):
            self.socket_path.unlink()

    # -- one connection --------------------------------------------------------------------------

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.stats.requests += 1
        if self._first_request is None:
            self._first_request = time.monotonic()
        try:
            try:
                line = await asyncio.wait_for(reader.readline(), REQUEST_TIMEOUT_S)
            except (TimeoutError, ValueError, ConnectionError) as exc:
                await self._answer_error(writer, f"no request line: {exc or 'timeout'}")
                return
            verb, _, name = line.decode("ascii", "replace").strip().partition(" ")
            if verb != "FETCH" or not name:
                await self._answer_error(writer, f"bad request {line[:60]!r}")
                return
            await self._serve(name, writer)
        except (ConnectionError, BrokenPipeError):
            log.warning("walfetch client went away")
        finally:
            if self._first_request is not None:
                self.stats.serve_seconds = time.monotonic() - self._first_request
            writer.close()
            with contextlib.suppress(ConnectionError, BrokenPipeError):
                await writer.wait_closed()

    async def _serve(self, name: str, writer: asyncio.StreamWriter) -> None:
        try:
            key = wal_key(self.prefix, self.uid, name)
        except WalNameError as exc:
            await self._answer_error(writer, str(exc))
            return
        if key is None:
            self.stats.missing += 1
            writer.write(b"MISSING\n")
            await writer.drain()
            return
        try:
            path = await self._obtain(name, key)
        except Exception as exc:  # every doubt is an ERROR, never a MISSING
            await self._answer_error(writer, f"{name}: {exc}")
            return
        if path is None:
            self.stats.missing += 1
            writer.write(b"MISSING\n")
            await writer.drain()
            return
        try:
            size = path.stat().st_size
            writer.write(f"OK {size}\n".encode("ascii"))
            await writer.drain()
            with path.open("rb") as handle:
                await asyncio.get_running_loop().sendfile(writer.transport, handle)
            await writer.drain()
            self.stats.served += 1
            self.stats.served_bytes += size
        finally:
            path.unlink(missing_ok=True)  # served once: PostgreSQL holds its own copy now
        self._schedule_prefetch(name)

    async def _answer_error(self, writer: asyncio.StreamWriter, reason: str) -> None:
        self.stats.errors += 1
        self.stats.last_error = reason
        log.error("wal fetch failed: %s", reason)
        text = " ".join(reason.split())[:400]
        writer.write(f"ERROR {text}\n".encode("utf-8", "replace"))
        await writer.drain()

    # -- getting a file into the cache -----------------------------------------------------------

    async def _obtain(self, name: str, key: str) -> Path | None:
        """The cached file for ``name`` (downloaded now or by a prefetch), or None if missing."""
        task = self._tasks.pop(name, None)
        if task is not None:
            try:
                found = await task
            except Exception as exc:  # a failed prefetch gets a fresh, retried attempt
                log.info("prefetch of %s failed (%s); fetching again", name, exc)
            else:
                if found is not None:
                    self.stats.prefetch_hits += 1
                    return found
                # Missing when prefetched: the archive may have caught up since, so ask again.
        return await self._fetch_retrying(name, key)

    async def _fetch_retrying(self, name: str, key: str) -> Path | None:
        for attempt in range(1, FETCH_ATTEMPTS + 1):
            try:
                return await self._fetch(name, key)
            except (RetryableBlobError, IntegrityError, OSError) as exc:
                if attempt == FETCH_ATTEMPTS:
                    raise
                log.warning("fetching %s (attempt %d): %s", name, attempt, exc)
                await asyncio.sleep(RETRY_BASE_S * 2 ** (attempt - 1))
        raise AssertionError("unreachable")

    async def _locate(self, name: str, key: str) -> ObjectInfo | None:
        planned = self._plan.get(name)
        if planned is not None:
            info = await self.store.head(planned)
            if info is not None:
                return info
        return await self.store.head(key)

    async def _fetch(self, name: str, key: str) -> Path | None:
        info = await self._locate(name, key)
        if info is None:
            return None
        final = self.cache_dir / name
        tmp = self.cache_dir / f".{name}.{os.getpid()}.{id(asyncio.current_task())}"
        decoder = _Decoder(info.metadata.get("compression", "none"))
        hasher = Crc32c()
        self._download_started()
        try:
            with tmp.open("wb") as out:
                async with self.store.open_read(info.key) as reader:
                    async for chunk in reader:  # verified against the stored crc32c at the end
                        await asyncio.to_thread(_decode_into, decoder, chunk, hasher, out)
                decoder.finish()
            digest = hasher.digest()
            expected_crc = info.metadata.get("crc32c")
            expected_size = info.metadata.get("size")
            if expected_crc and digest.crc32c != expected_crc:
                raise IntegrityError(
                    f"{info.key}: the log's crc32c is {digest.crc32c}, its metadata says "
                    f"{expected_crc}"
                )
            if expected_size and digest.size != int(expected_size):
                raise IntegrityError(
                    f"{info.key}: the log is {digest.size} bytes, its metadata says {expected_size}"
                )
            os.replace(tmp, final)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        finally:
            self._download_finished()
        self.stats.fetched_bytes += digest.size
        if parse_name(name).kind is WalFileKind.SEGMENT and self._segment_size is None:
            self._segment_size = digest.size
        return final

    def _download_started(self) -> None:
        if self._active_downloads == 0:
            self._busy_since = time.monotonic()
        self._active_downloads += 1

    def _download_finished(self) -> None:
        self._active_downloads -= 1
        if self._active_downloads == 0:
            self.stats.fetch_seconds += time.monotonic() - self._busy_since

    # -- prefetch --------------------------------------------------------------------------------

    def _schedule_prefetch(self, served: str) -> None:
        """Start downloading the segments after ``served``; drop what is outside the window."""
        parsed = parse_name(served)
        size = self._segment_size
        if parsed.kind is not WalFileKind.SEGMENT or size is None or self.prefetch <= 0:
            return
        number = parsed.segment_number(size)
        window: list[str] = []
        for ahead in range(1, self.prefetch + 1):
            with contextlib.suppress(WalNameError):
                window.append(segment_name(parsed.timeline, number + ahead, size))
        wanted = set(window)
        for name in list(self._tasks):
            other = parse_name(name)
            if other.kind is not WalFileKind.SEGMENT:
                continue
            other_number = other.segment_number(size)
            # Keep other timelines' copies inside the window: recovery across a timeline switch
            # asks for the same segment number on each timeline in turn.
            if name not in wanted and not number < other_number <= number + self.prefetch:
                self._drop(name)
        for name in window:
            if name not in self._tasks:
                key = wal_key(self.prefix, self.uid, name)
                if key is not None:
                    self._tasks[name] = asyncio.create_task(
                        self._fetch(name, key), name=f"prefetch {name}"
                    )

    def _drop(self, name: str) -> None:
        task = self._tasks.pop(name)
        task.cancel()
        task.add_done_callback(lambda t: _discard(t, self.cache_dir / name))


def _decode_into(decoder: _Decoder, chunk: bytes, hasher: Crc32c, out: BinaryIO) -> None:
    data = decoder.feed(chunk)
    hasher.update(data)
    out.write(data)


def _discard(task: asyncio.Task[Path | None], path: Path) -> None:
    """A dropped prefetch: its file (if it got one) is not wanted any more."""
    if not task.cancelled() and task.exception() is None:
        path.unlink(missing_ok=True)


@contextlib.asynccontextmanager
async def serve_wal(
    store: BlobStore,
    *,
    prefix: str,
    uid: str,
    socket_path: Path,
    cache_dir: Path,
    prefetch: int,
    plan_keys: Iterable[str] = (),
    user: OsUser | None = None,
    stats: FetchStats | None = None,
) -> AsyncIterator[FetchServer]:
    """Run a :class:`FetchServer` for the duration of the block; always closed on exit.

    ``stats``: an object the server fills in, for a caller that wants the figures afterwards.
    """
    server = FetchServer(
        store,
        prefix=prefix,
        uid=uid,
        socket_path=socket_path,
        cache_dir=cache_dir,
        prefetch=prefetch,
        plan_keys=plan_keys,
        user=user,
        stats=stats,
    )
    await server.start()
    try:
        yield server
    finally:
        await server.close()
