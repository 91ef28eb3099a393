"""The node side of ``restore_command``: serve WAL from the object store to ``walfetch``.

PostgreSQL runs ``restore_command`` once per file, as its own OS user, and waits for it. That
program (``walfetch.py``) must start fast and import nothing but the standard library, so it does
no fetching itself: it asks this server, which runs inside the executor (root, with the store
client, credentials and an event loop) for the duration of one restore, and which downloads the
next segments while PostgreSQL replays the current one.

Protocol, over a unix stream socket, one request per connection::

    client:  FETCH <walfilename>\\n
    server:  READY <size> <path>\\n           the file, verified and fsynced, is waiting at
                                             <path>: rename it into place (see below)
         or  OK <size>\\n<size bytes>         the file itself, exactly as PostgreSQL wrote it
         or  MISSING\\n                       not in the archive: recovery takes it as end of WAL
         or  ERROR <reason>\\n                could not tell (store unreachable, corrupt object)

READY is the answer when the cache directory is on the filesystem of the directory PostgreSQL
restores into (``hand_over_to``, its ``pg_wal``): the cache is then the database user's
(0700), every file in it the user's (0600) and fsynced, and ``wal-fetch`` only has to
``rename()`` it to ``%p``, so PostgreSQL's wait for a prefetched segment is a process start and
a rename instead of 16 MiB through a socket, a write and an fsync. OK (the bytes through the
socket) is the answer otherwise: ``pg_wal`` on another filesystem (a symlink to its own
volume), or no ``hand_over_to``. A file is named in a READY answer or streamed only once it
has been verified in full (below); a file that fails verification never gets its final name.
A file handed over and never renamed (its client died) is removed at the next request.

When it hands files over, the server also lets ``restore_command`` take a prefetched segment
without asking: ``mv <cache>/%f %p || wal-fetch ...`` (see ``restore.py``), which spares
PostgreSQL the start of a Python interpreter for every segment it replays (tens of
milliseconds on a busy host, against a few for ``mv``). Only verified files ever have a WAL
file name in the cache (downloads are written under a dot-name and renamed when verified), so
``mv`` can only take a good one; anything else (not fetched yet, not fetched at all, history
files) fails the ``mv`` and goes to ``wal-fetch`` as before. The server notices a file taken that
way within :data:`TAKEN_POLL_S` and moves the prefetch window on as if it had served it.

``<walfilename>`` is what PostgreSQL passes as ``%f``. MISSING is an answer PostgreSQL acts on
(it stops asking for segments, or picks a timeline id no history file uses yet), so it is only
given when the store says there is no such object; every doubt is an ERROR, counted in
:attr:`FetchStats.errors` so the restore can refuse to call a recovery good that may have ended
on one (PostgreSQL cannot tell a failed ``restore_command`` from a missing file).

Names map to keys as the archiver writes them (``services/blobstore/layout.py``): a segment
``TTTTTTTTLLLLLLLLSSSSSSSS`` is ``<db>/tl-TTTTTTTT/logs/1/<name>``, a ``.history`` (or
``.backup``) file ``<db>/tl-TTTTTTTT/history/<name>``. The restore plan's keys are looked up
first; other names are ``head()``-ed at their computed key. ``.partial`` segments are never
served: they are the unfinished tail of an abandoned timeline, and PostgreSQL never asks for one.

Prefetch: when segment N is served, segments N+1..N+depth of the same timeline are downloaded
in parallel into the cache directory (bounded: entries outside the window are dropped), each
verified against the crc32c the store recorded and, after decompression, against the log's own
crc32c and size from the object's metadata. A request for a segment already on its way waits
for that download instead of starting another. The depth is ``prefetch`` for 16 MiB segments and
more for smaller ones (the same bytes ahead, at most :data:`MAX_DEPTH` files), so the cache holds
at most about ``prefetch`` x 16 MiB (or ``prefetch`` segments when they are larger), plus the one
being answered.

Throughput: :attr:`FetchStats.fetch_mib_s` is WAL bytes downloaded per second of time with at
least one download in flight (the store's rate as recovery saw it); ``served_bytes`` over
``serve_seconds`` is the rate PostgreSQL consumed WAL (it includes replay time);
:attr:`FetchStats.answer_seconds` is how long requests took to be answered (what PostgreSQL
waited for, less ``wal-fetch``'s start and its rename or write), and ``waited_seconds`` the part
of it spent waiting for a download that was not finished.
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

from schemas import Timeline
from services.blobstore import (
    BlobStore,
    Crc32c,
    IntegrityError,
    ObjectInfo,
    RetryableBlobError,
)
from services.blobstore.layout import history_key, log_key
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

DEPTH_UNIT = 16 << 20
"""``prefetch`` counts segments of this size (PostgreSQL's default): smaller ones go deeper."""

MAX_DEPTH = 64
"""Most files fetched ahead, whatever the segment size (each is a file and a download)."""

TAKEN_POLL_S = 0.02
"""How often the cache is looked at for prefetched files ``restore_command`` took by itself."""

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_NEW_FILE_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC


def wal_key(prefix: str, uid: str, name: str) -> str | None:
    """The object key the archiver gives WAL file ``name``; None for a name never served.

    Raises :class:`WalNameError` for a name that is not a WAL file name at all.
    """
    parsed = parse_name(name)
    lineage = Timeline(id=parsed.timeline)
    if parsed.kind is WalFileKind.SEGMENT:
        return log_key(prefix, uid, lineage, THREAD, name)
    if parsed.kind in (WalFileKind.HISTORY, WalFileKind.BACKUP_HISTORY):
        return history_key(prefix, uid, lineage, name)
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
    handed_over: int = 0
    """Files answered READY (renamed into place by ``wal-fetch``), of ``served``."""
    taken: int = 0
    """Prefetched files ``restore_command`` moved into place without asking, of ``served``."""
    serve_seconds: float = 0.0
    """From the first request to the last answer."""
    answer_seconds: float = 0.0
    """Sum over requests of the time from the request line to the end of the answer."""
    waited_seconds: float = 0.0
    """Of ``answer_seconds``, the time spent waiting for a file still downloading."""
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
        hand_over_to: Path | None = None,
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
        self.hand_over_to = hand_over_to
        self.hands_over = False
        """Whether answers are READY (decided by :meth:`start`)."""
        self._dir_fd = -1
        self._handed: set[str] = set()
        self._serial = 0
        self._sizes: dict[str, int] = {}
        self._watcher: asyncio.Task[None] | None = None

    # -- lifecycle -------------------------------------------------------------------------------

    async def start(self) -> None:
        self.cache_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        # Every file operation below is relative to this descriptor: when the directory is the
        # database user's, that user could swap it for a symlink, and root would follow a path.
        self._dir_fd = os.open(self.cache_dir, _DIR_FLAGS)
        self.hands_over = self._can_hand_over()
        if self.hands_over and self.user is not None:
            os.fchmod(self._dir_fd, 0o700)
            if os.geteuid() == 0 and not self.user.is_current:
                os.fchown(self._dir_fd, self.user.uid, self.user.gid)
        if self.hands_over:
            self._watcher = asyncio.create_task(self._follow_takes(), name="wal cache watcher")
        self._server = await asyncio.start_unix_server(
            self._handle, path=os.fspath(self.socket_path), limit=MAX_REQUEST * 2
        )
        # Only the database user may ask (the socket is created with root's umask).
        os.chmod(self.socket_path, 0o600)
        if self.user is not None:
            chown_to(self.socket_path, self.user)

    async def close(self) -> None:
        if self._watcher is not None:
            self._watcher.cancel()
            await asyncio.gather(self._watcher, return_exceptions=True)
            self._watcher = None
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
        if self._dir_fd >= 0:
            for name in os.listdir(self._dir_fd):  # what was fetched ahead and never asked for
                self._unlink(name)
            os.close(self._dir_fd)
            self._dir_fd = -1

    def _can_hand_over(self) -> bool:
        """READY answers need ``rename()`` from the cache to ``hand_over_to`` to work."""
        if self.hand_over_to is None or "\n" in os.fspath(self.cache_dir):
            return False
        try:
            target = os.stat(self.hand_over_to)  # follows pg_wal's symlink to its volume
        except OSError as exc:
            log.warning("cannot stat %s (%s): WAL goes through the socket", self.hand_over_to, exc)
            return False
        if target.st_dev != os.fstat(self._dir_fd).st_dev:
            log.info(
                "%s and %s are on different filesystems: WAL goes through the socket",
                self.hand_over_to,
                self.cache_dir,
            )
            return False
        return True

    def _unlink(self, name: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(name, dir_fd=self._dir_fd)

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
            began = time.monotonic()
            try:
                await self._serve(name, writer)
            finally:
                self.stats.answer_seconds += time.monotonic() - began
        except (ConnectionError, BrokenPipeError):
            log.warning("walfetch client went away")
        finally:
            if self._first_request is not None:
                self.stats.serve_seconds = time.monotonic() - self._first_request
            writer.close()
            with contextlib.suppress(ConnectionError, BrokenPipeError):
                await writer.wait_closed()

    async def _serve(self, name: str, writer: asyncio.StreamWriter) -> None:
        # PostgreSQL asks for one file at a time: the previous client has exited, and a file it
        # was handed and did not rename is litter now.
        for stale in self._handed - self._tasks.keys():
            self._unlink(stale)
        self._handed.clear()
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
        began = time.monotonic()
        try:
            path = await self._obtain(name, key)
        except Exception as exc:  # every doubt is an ERROR, never a MISSING
            await self._answer_error(writer, f"{name}: {exc}")
            return
        finally:
            self.stats.waited_seconds += time.monotonic() - began
        if path is None:
            self.stats.missing += 1
            writer.write(b"MISSING\n")
            await writer.drain()
            return
        self._sizes.pop(name, None)  # answered: no longer the watcher's to count
        if self.hands_over:
            await self._hand_over(name, path, writer)
        else:
            await self._stream(name, writer)
        self._schedule_prefetch(name)

    async def _hand_over(self, name: str, path: Path, writer: asyncio.StreamWriter) -> None:
        size = os.stat(name, dir_fd=self._dir_fd, follow_symlinks=False).st_size
        self._handed.add(name)
        writer.write(f"READY {size} {path}\n".encode())
        await writer.drain()
        self.stats.served += 1
        self.stats.handed_over += 1
        self.stats.served_bytes += size

    async def _stream(self, name: str, writer: asyncio.StreamWriter) -> None:
        try:
            fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=self._dir_fd)
            with os.fdopen(fd, "rb") as handle:
                size = os.fstat(fd).st_size
                writer.write(f"OK {size}\n".encode("ascii"))
                await writer.drain()
                await asyncio.get_running_loop().sendfile(writer.transport, handle)
            await writer.drain()
            self.stats.served += 1
            self.stats.served_bytes += size
        finally:
            self._unlink(name)  # served once: PostgreSQL holds its own copy now

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
        self._serial += 1
        tmp = f".{name}.{self._serial}"  # never a WAL file name: never answered, never listed
        decoder = _Decoder(info.metadata.get("compression", "none"))
        hasher = Crc32c()
        self._download_started()
        try:
            fd = os.open(tmp, _NEW_FILE_FLAGS, 0o600, dir_fd=self._dir_fd)
            with os.fdopen(fd, "wb") as out:
                async with self.store.open_read(info.key) as reader:
                    async for chunk in reader:  # verified against the stored crc32c at the end
                        await asyncio.to_thread(_decode_into, decoder, chunk, hasher, out)
                decoder.finish()
                if self.hands_over:
                    # wal-fetch only renames it, and PostgreSQL's own fsync of the restored
                    # file (durable_rename) then finds it clean: the write-back happens here,
                    # while the segment before it replays.
                    await asyncio.to_thread(_seal, out, self.user)
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
            os.replace(tmp, name, src_dir_fd=self._dir_fd, dst_dir_fd=self._dir_fd)
        except BaseException:
            self._unlink(tmp)
            raise
        finally:
            self._download_finished()
        self.stats.fetched_bytes += digest.size
        if parse_name(name).kind is WalFileKind.SEGMENT and self._segment_size is None:
            self._segment_size = digest.size
        self._sizes[name] = digest.size
        return self.cache_dir / name

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
        depth = self.depth(size)
        window: list[str] = []
        for ahead in range(1, depth + 1):
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
            if name not in wanted and not number < other_number <= number + depth:
                self._drop(name)
        for name in window:
            if name not in self._tasks:
                key = wal_key(self.prefix, self.uid, name)
                if key is not None:
                    self._tasks[name] = asyncio.create_task(
                        self._fetch(name, key), name=f"prefetch {name}"
                    )

    async def _follow_takes(self) -> None:
        """Count a prefetched file gone from the cache as served, and fetch on from it."""
        while True:
            await asyncio.sleep(TAKEN_POLL_S)
            present = set(os.listdir(self._dir_fd))
            taken = [
                name
                for name, task in self._tasks.items()
                if task.done() and name not in present and name in self._sizes
            ]
            for name in sorted(taken):
                if name not in self._tasks:  # dropped by the window of an earlier one
                    continue
                del self._tasks[name]
                self.stats.requests += 1
                self.stats.served += 1
                self.stats.taken += 1
                self.stats.prefetch_hits += 1
                self.stats.served_bytes += self._sizes.pop(name)
                if self._first_request is not None:
                    self.stats.serve_seconds = time.monotonic() - self._first_request
                self._schedule_prefetch(name)

    def depth(self, segment_size: int) -> int:
        """How many segments of ``segment_size`` to fetch ahead."""
        if self.prefetch <= 0 or segment_size >= DEPTH_UNIT:
            return self.prefetch
        return min(MAX_DEPTH, max(self.prefetch, self.prefetch * DEPTH_UNIT // segment_size))

    def _drop(self, name: str) -> None:
        task = self._tasks.pop(name)
        self._sizes.pop(name, None)
        task.cancel()
        task.add_done_callback(lambda t: self._discard(t, name))

    def _discard(self, task: asyncio.Task[Path | None], name: str) -> None:
        """A dropped prefetch: its file (if it got one) is not wanted any more."""
        if not task.cancelled() and task.exception() is None and self._dir_fd >= 0:
            self._unlink(name)


def _decode_into(decoder: _Decoder, chunk: bytes, hasher: Crc32c, out: BinaryIO) -> None:
    data = decoder.feed(chunk)
    hasher.update(data)
    out.write(data)


def _seal(out: BinaryIO, user: OsUser | None) -> None:
    """Make a file to be handed over the database user's and durable."""
    out.flush()
    if user is not None and os.geteuid() == 0 and not user.is_current:
        os.fchown(out.fileno(), user.uid, user.gid)
    os.fsync(out.fileno())


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
    hand_over_to: Path | None = None,
) -> AsyncIterator[FetchServer]:
    """Run a :class:`FetchServer` for the duration of the block; always closed on exit.

    ``stats``: an object the server fills in, for a caller that wants the figures afterwards.
    ``hand_over_to``: the directory ``wal-fetch`` writes into (PostgreSQL's ``pg_wal``); when it
    is on the cache directory's filesystem, files are handed over by ``rename()`` (READY).
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
        hand_over_to=hand_over_to,
    )
    try:
        await server.start()
        yield server
    finally:
        await server.close()
