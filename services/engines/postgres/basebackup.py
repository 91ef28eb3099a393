"""One ``pg_basebackup`` run, streamed straight into the object store in parts.

    pg_basebackup -D - -Ft -X none -P -v --checkpoint=fast -l tidemark:<backup-id>
        stdout ──▶ TarWatch (label, manifest) ──▶ [zstd] ──▶ PartCutter ──▶ store.put_stream
        stderr ──▶ StderrWatch (progress, notices, the tail kept for errors)

Nothing is staged locally: stdout is read a chunk at a time and each part is handed to
``put_stream`` as an async iterator that ends at the part boundary, so memory stays at one read
chunk (plus what the store itself buffers per request) whatever the cluster's size. A slow store
pushes back through the pipe on ``pg_basebackup``, and through it on the server's walsender.

Where the backup's positions come from. With ``-X none`` pg_basebackup prints neither the start
nor the end of the WAL it needs (its ``-v`` lines for those appear only when it fetches WAL
itself), so both are read from the tar stream as it passes:

- ``backup_label``, the first member the server sends: ``START WAL LOCATION``, ``START TIMELINE``
  and ``START TIME``;
- ``backup_manifest``, the last member (PostgreSQL 13+ puts it into the tar when the tar goes to
  stdout): its ``WAL-Ranges`` give the timeline and the end LSN — the point a restore must
  replay past before the copy is consistent.

The end LSN's segment reaches the archive without our help: on a primary the server's own
``pg_backup_stop`` switches to a new segment, and since ``-X none`` leaves pg_basebackup's
``WAIT`` in force it does not return until that segment is archived (its notices about that wait
are reported as progress). An extra ``pg_switch_wal()`` would only waste a segment.
"""

from __future__ import annotations

import asyncio
import json
import re
from collections import deque
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, timezone
from typing import Literal

import zstandard

from schemas import parse_lsn
from services.blobstore import BlobStore, Crc32c
from services.engines.base import EngineError, JobContext
from services.engines.postgres.manifest import Part, part_key
from services.engines.postgres.sql import PgTarget, is_transient, kill, spawn

__all__ = [
    "CODE_FAILED",
    "CODE_STREAM",
    "BackupLabel",
    "PartCutter",
    "StderrWatch",
    "StreamedBase",
    "TarWatch",
    "WalRange",
    "basebackup_argv",
    "parse_backup_label",
    "parse_progress",
    "parse_wal_ranges",
    "stream_base_backup",
]

CODE_FAILED = "TM-PG-BASEBACKUP"
"""pg_basebackup exited with an error (the reason carries its last lines)."""
CODE_STREAM = "TM-PG-STREAM"
"""pg_basebackup succeeded but its stream is not a complete base backup, or the store holds
other bytes than those sent."""

READ_CHUNK = 1 << 20
"""Bytes read from the pipe before they are passed on: big enough that the per-chunk costs
(a thread hop per write in the stores) vanish, small enough to be the only buffer we hold."""

ZSTD_LEVEL = 3

STDERR_TAIL = 20
"""Lines of pg_basebackup's stderr kept to explain a failure."""

TAR_BLOCK = 512
_LABEL_MAX = 64 << 10
_MANIFEST_TAIL = 64 << 10
"""How much of the end of ``backup_manifest`` is kept: ``WAL-Ranges`` and the checksum are its
last lines, while the file list before them grows with the cluster (megabytes for big ones)."""

Compression = Literal["none", "zstd"]


# -- stderr ----------------------------------------------------------------------------------------

_PROGRESS = re.compile(r"^\s*(\d+)(?:/(\d+))? kB(?: \(\d+%\))?")


def parse_progress(line: str) -> tuple[int, int | None] | None:
    """``(done, total)`` in bytes from a ``-P`` line (``123/4567 kB (2%), 0/1 tablespace ...``);
    ``total`` is None when pg_basebackup does not estimate it; None for any other line."""
    match = _PROGRESS.match(line)
    if match is None:
        return None
    done = int(match.group(1)) * 1024
    total = int(match.group(2)) * 1024 if match.group(2) is not None else None
    return done, total


def _is_archive_wait(line: str) -> bool:
    # The server's notices while pg_backup_stop waits for the last segment to be archived: the
    # one case where a backup that copied everything can still sit for a long time.
    return "waiting for required WAL segments" in line or (
        "still waiting for all required WAL segments" in line
    )


class StderrWatch:
    """Reads pg_basebackup's stderr to its end: progress goes to the job, the last lines are
    kept for the error message. It must be drained concurrently with stdout, or a chatty run
    would block on a full stderr pipe while we wait on stdout."""

    def __init__(self) -> None:
        self.tail: deque[str] = deque(maxlen=STDERR_TAIL)
        self.progress: tuple[int, int | None] | None = None
        self.archive_wait: str | None = None

    def feed(self, line: str) -> tuple[int, int | None] | None:
        """Take one line; return the progress it reports, if it is a progress line."""
        line = line.rstrip()
        if not line:
            return None
        progress = parse_progress(line)
        if progress is not None:
            self.progress = progress
            return progress
        if _is_archive_wait(line):
            self.archive_wait = line
        self.tail.append(line)
        return None

    def explain(self, limit: int = 1500) -> str:
        """The last lines, joined, at most ``limit`` characters (the end kept: it says why)."""
        text = " | ".join(self.tail) or "(no output)"
        return text if len(text) <= limit else "…" + text[-limit:]

    async def drain(self, stream: asyncio.StreamReader, ctx: JobContext) -> None:
        buffered = b""
        while True:
            block = await stream.read(1 << 14)
            if not block:
                break
            # A terminal gets \r-terminated progress lines; a pipe gets \n. Accept both.
            lines = re.split(rb"[\r\n]", buffered + block)
            buffered = lines.pop()
            for raw in lines:
                await self._report(raw.decode("utf-8", "replace"), ctx)
        if buffered:
            await self._report(buffered.decode("utf-8", "replace"), ctx)

    async def _report(self, line: str, ctx: JobContext) -> None:
        progress = self.feed(line)
        if progress is not None:
            done, total = progress
            await ctx.progress("copy", done=done, total=total, unit="bytes")
        elif _is_archive_wait(line):
            await ctx.progress("archive_wait", message=line.strip()[:500])


# -- the tar stream --------------------------------------------------------------------------------


@dataclass(frozen=True)
class BackupLabel:
    """What ``backup_label`` says about where the backup starts."""

    start_lsn: int
    timeline: int
    start_time: datetime | None
    label: str


@dataclass(frozen=True)
class WalRange:
    """One entry of ``backup_manifest``'s ``WAL-Ranges``: the WAL a restore needs."""

    timeline: int
    start: int
    end: int


_LABEL_LINE = re.compile(r"^([A-Z ]+): (.*)$", re.M)
_START_LOCATION = re.compile(r"^([0-9A-Fa-f]+/[0-9A-Fa-f]+)")
_START_TIME = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d) (\S+)$")
_OFFSET = re.compile(r"^([+-])(\d\d):?(\d\d)?$")


def _label_time(text: str) -> datetime | None:
    """``START TIME`` in UTC, or None when its zone cannot be known.

    The server writes it in ``log_timezone`` with a zone *abbreviation*; only UTC-like names and
    numeric offsets are unambiguous (``CST`` is three different zones), so others are left to the
    caller's clock rather than guessed."""
    match = _START_TIME.match(text.strip())
    if match is None:
        return None
    local = datetime.strptime(match.group(1), "%Y-%m-%d %H:%M:%S")  # the zone: below
    zone = match.group(2)
    if zone.upper() in ("UTC", "GMT", "Z", "UCT"):
        return local.replace(tzinfo=UTC)
    offset = _OFFSET.match(zone)
    if offset is None:
        return None
    minutes = int(offset.group(2)) * 60 + int(offset.group(3) or 0)
    sign = -1 if offset.group(1) == "-" else 1
    return local.replace(tzinfo=timezone(timedelta(minutes=sign * minutes))).astimezone(UTC)


def parse_backup_label(text: str) -> BackupLabel:
    """Parse ``backup_label``; ValueError when a field a restore needs is missing."""
    fields = {key: value.strip() for key, value in _LABEL_LINE.findall(text)}
    location = _START_LOCATION.match(fields.get("START WAL LOCATION", ""))
    if location is None:
        raise ValueError("backup_label has no START WAL LOCATION")
    timeline = fields.get("START TIMELINE", "")
    if not timeline.isdigit() or int(timeline) < 1:
        raise ValueError(f"backup_label has no valid START TIMELINE ({timeline!r})")
    return BackupLabel(
        start_lsn=parse_lsn(location.group(1)),
        timeline=int(timeline),
        start_time=_label_time(fields.get("START TIME", "")),
        label=fields.get("LABEL", ""),
    )


_WAL_RANGES = re.compile(rb'"WAL-Ranges"\s*:\s*(\[[^\]]*\])')


def parse_wal_ranges(manifest_tail: bytes) -> list[WalRange]:
    """``WAL-Ranges`` from the end of a ``backup_manifest``; ValueError if absent or malformed."""
    match = _WAL_RANGES.search(manifest_tail)
    if match is None:
        raise ValueError("backup_manifest has no WAL-Ranges")
    try:
        entries = json.loads(match.group(1))
        ranges = [
            WalRange(
                timeline=int(entry["Timeline"]),
                start=parse_lsn(entry["Start-LSN"]),
                end=parse_lsn(entry["End-LSN"]),
            )
            for entry in entries
        ]
    except (ValueError, KeyError, TypeError) as exc:
        raise ValueError(f"backup_manifest's WAL-Ranges cannot be read: {exc}") from None
    if not ranges:
        raise ValueError("backup_manifest's WAL-Ranges is empty")
    return ranges


def _tar_size(field_bytes: bytes) -> int:
    if field_bytes[0] & 0x80:  # base-256, for members of 8 GiB and more
        return int.from_bytes(field_bytes[1:], "big")
    text = field_bytes.split(b"\0", 1)[0].strip()
    return int(text, 8) if text else 0


class TarWatch:
    """Follows the member headers of a tar stream as it passes, without holding it.

    Only two members are kept: ``backup_label`` whole (it is small) and the last
    :data:`_MANIFEST_TAIL` bytes of ``backup_manifest``. Every other byte is counted and
    skipped, so the cost per chunk is a few comparisons whatever the chunk's size."""

    WATCHED = ("backup_label", "backup_manifest")

    def __init__(self) -> None:
        self.size = 0
        self.ended = False
        self.members = 0
        self.label_text: bytes | None = None
        self.manifest_tail: bytes | None = None
        self._header = bytearray()
        self._data_left = 0
        self._pad_left = 0
        self._name: str | None = None
        self._captured = bytearray()

    def feed(self, data: bytes) -> None:
        self.size += len(data)
        view = memoryview(data)
        pos, end = 0, len(data)
        while pos < end and not self.ended:
            if self._data_left:
                take = min(self._data_left, end - pos)
                if self._name is not None:
                    self._capture(view[pos : pos + take])
                self._data_left -= take
                pos += take
                if not self._data_left:
                    self._member_done()
            elif self._pad_left:
                take = min(self._pad_left, end - pos)
                self._pad_left -= take
                pos += take
            else:
                take = min(TAR_BLOCK - len(self._header), end - pos)
                self._header += view[pos : pos + take]
                pos += take
                if len(self._header) == TAR_BLOCK:
                    self._member_start(bytes(self._header))
                    self._header.clear()

    def _member_start(self, header: bytes) -> None:
        if not any(header):
            self.ended = True  # the end-of-archive marker: two zero blocks, the first suffices
            return
        self.members += 1
        name = header[:100].split(b"\0", 1)[0].decode("utf-8", "replace").removeprefix("./")
        size = _tar_size(header[124:136])
        self._name = name if name in self.WATCHED else None
        self._captured.clear()
        self._data_left = size
        self._pad_left = -size % TAR_BLOCK
        if not size:
            self._member_done()

    def _capture(self, chunk: memoryview) -> None:
        self._captured += chunk
        if self._name == "backup_label" and len(self._captured) > _LABEL_MAX:
            self._name = None  # not a label PostgreSQL wrote; parsing it will fail loudly
            self._captured.clear()
        elif self._name == "backup_manifest" and len(self._captured) > 2 * _MANIFEST_TAIL:
            del self._captured[:-_MANIFEST_TAIL]

    def _member_done(self) -> None:
        if self._name == "backup_label":
            self.label_text = bytes(self._captured)
        elif self._name == "backup_manifest":
            self.manifest_tail = bytes(self._captured[-_MANIFEST_TAIL:])
        self._name = None
        self._captured.clear()


# -- parts -----------------------------------------------------------------------------------------


class PartCutter:
    """Cuts one stream of chunks into parts of ``part_size`` bytes, each an async iterator that
    ends at its boundary (the store's ``put_stream`` reads it as a whole object). A chunk that
    straddles a boundary is split; its rest opens the next part. Each part is hashed as it
    passes, so what the store reports can be checked against what was sent."""

    def __init__(self, chunks: AsyncIterator[bytes], part_size: int) -> None:
        if part_size <= 0:
            raise ValueError("part_size must be positive")
        self._chunks = chunks
        self._part_size = part_size
        self._carry = b""
        self._eof = False
        self.hasher = Crc32c()

    async def has_more(self) -> bool:
        """Whether another part has at least one byte (so no empty trailing part is made)."""
        while not self._carry and not self._eof:
            try:
                self._carry = await anext(self._chunks)
            except StopAsyncIteration:
                self._eof = True
        return bool(self._carry)

    async def part(self) -> AsyncIterator[bytes]:
        """The next part's bytes. Call :meth:`has_more` first; read it to its end."""
        self.hasher = Crc32c()
        remaining = self._part_size
        while remaining and await self.has_more():
            chunk = self._carry
            if len(chunk) > remaining:
                chunk, self._carry = chunk[:remaining], chunk[remaining:]
            else:
                self._carry = b""
            remaining -= len(chunk)
            self.hasher.update(chunk)
            yield chunk


async def _read_chunks(stream: asyncio.StreamReader, watch: TarWatch) -> AsyncIterator[bytes]:
    while True:
        buffer = bytearray()
        while len(buffer) < READ_CHUNK:
            piece = await stream.read(READ_CHUNK - len(buffer))
            if not piece:
                break
            buffer += piece
        if not buffer:
            return
        chunk = bytes(buffer)
        watch.feed(chunk)
        yield chunk


async def _zstd(chunks: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
    # One frame for the whole tar, so `zstd -d` of the concatenated parts gives the tar back.
    # Compression runs in a worker thread: a megabyte at level 3 takes milliseconds, which
    # would otherwise stall every other job on the event loop.
    compressor = zstandard.ZstdCompressor(level=ZSTD_LEVEL, write_checksum=True).compressobj()
    async for chunk in chunks:
        out = await asyncio.to_thread(compressor.compress, chunk)
        if out:
            yield out
    tail = compressor.flush()
    if tail:
        yield tail


# -- the run ---------------------------------------------------------------------------------------


def basebackup_argv(target: PgTarget, backup_id: str) -> list[str]:
    """The command line: the tar of the data directory to stdout, no WAL (the archive has it),
    progress and notices on stderr, an immediate checkpoint so the backup starts now."""
    return [
        target.tool("pg_basebackup"),
        "-D",
        "-",
        "-Ft",
        "-X",
        "none",
        "-P",
        "-v",
        "--checkpoint=fast",
        "-l",
        f"tidemark:{backup_id}",
        *target.connection_args,
    ]


@dataclass
class StreamedBase:
    """What one successful run put in the store, and what its stream said."""

    parts: list[Part]
    tar_bytes: int
    label: BackupLabel
    wal_ranges: list[WalRange]
    started_at: datetime


async def stream_base_backup(
    target: PgTarget,
    *,
    backup_id: str,
    store: BlobStore,
    prefix: str,
    compression: Compression,
    part_size: int,
    metadata: Mapping[str, str],
    ctx: JobContext,
    written: list[str],
) -> StreamedBase:
    """Run pg_basebackup and store its tar in parts; return what it stored and what it saw.

    Every key is appended to ``written`` before it is written, so the caller can remove them
    whatever happens here (an error, a cancellation). pg_basebackup is killed (its
    whole process group) before this returns or raises, unless it has exited."""
    started_at = datetime.now(UTC)
    watch = TarWatch()
    errors = StderrWatch()
    process = await spawn(target, basebackup_argv(target, backup_id), limit=READ_CHUNK)
    assert process.stdout is not None
    assert process.stderr is not None
    stderr_task = asyncio.create_task(errors.drain(process.stderr, ctx))
    parts: list[Part] = []
    try:
        chunks = _read_chunks(process.stdout, watch)
        cutter = PartCutter(_zstd(chunks) if compression == "zstd" else chunks, part_size)
        while await cutter.has_more():
            key = part_key(prefix, target.uid, backup_id, len(parts), compression)
            # Listed before the write: a cancellation may land after the store has it.
            written.append(key)
            info = await store.put_stream(key, cutter.part(), {**metadata, "part": str(len(parts))})
            sent = cutter.hasher.digest()
            if (info.size, info.crc32c) != (sent.size, sent.crc32c):
                raise EngineError.of(
                    f"{key}: the store holds {info.size} bytes crc32c {info.crc32c}, "
                    f"{sent.size} bytes crc32c {sent.crc32c} were sent",
                    code=CODE_STREAM,
                    retryable=True,
                )
            parts.append(Part(key=key, size=info.size, crc32c=info.crc32c))
        returncode = await process.wait()
        await stderr_task
    except BaseException:
        # The stderr reader goes first: kill() reads both pipes to their end itself.
        stderr_task.cancel()
        await asyncio.gather(stderr_task, return_exceptions=True)
        await kill(process)
        raise
    if returncode != 0:
        explanation = errors.explain()
        raise EngineError.of(
            f"pg_basebackup of {target.uid} exited {returncode}: {explanation}",
            code=CODE_FAILED,
            retryable=is_transient(explanation),
        )
    return StreamedBase(
        parts=parts,
        tar_bytes=watch.size,
        label=_label_of(watch, target.uid),
        wal_ranges=_ranges_of(watch, target.uid),
        started_at=started_at,
    )


def _incomplete(uid: str, what: str) -> EngineError:
    return EngineError.of(
        f"pg_basebackup of {uid} exited 0 but its stream {what}; not a usable base backup",
        code=CODE_STREAM,
    )


def _label_of(watch: TarWatch, uid: str) -> BackupLabel:
    if not watch.ended:
        raise _incomplete(uid, f"ends without the tar end marker after {watch.size} bytes")
    if watch.label_text is None:
        raise _incomplete(uid, "has no backup_label")
    try:
        return parse_backup_label(watch.label_text.decode("utf-8", "replace"))
    except ValueError as exc:
        raise _incomplete(uid, f"has an unreadable backup_label ({exc})") from None


def _ranges_of(watch: TarWatch, uid: str) -> list[WalRange]:
    if watch.manifest_tail is None:
        raise _incomplete(uid, "has no backup_manifest (PostgreSQL 13 or later is required)")
    try:
        return parse_wal_ranges(watch.manifest_tail)
    except ValueError as exc:
        raise _incomplete(uid, f"has an unusable backup_manifest ({exc})") from None
