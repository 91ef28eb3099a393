"""Where completed logs come from: the `LogSource` protocol and the `LoggedFile` it yields.

A source knows one database's logs: which files are complete (`discover`), whether a file's
bytes really are the log its name claims (`check_header`), and how to let go of the local copy
once the catalog holds it (`release`). Two exist: `PostgresSpoolSource` (`postgres.py`, the
wal-push spool) and `OracleArchiveSource` (`oracle.py`, V$ARCHIVED_LOG and the archive
destination). The streamer drives both the same way.

Reading is shared (`read_chunks`): a file is read only if it is still the file that was
discovered (same inode and size), and a change while it is read — a file still growing, or
replaced — is `LogNotReady`, never an upload of bytes that belong to no log. A complete read
also reports the file's identity as it was while read (`fingerprint_of` its `fstat`, unchanged
from before the first byte to after the last): what the bytes that were stored came from.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Callable, Generator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import BinaryIO, Literal, Protocol

from schemas import DatabaseRef, Lineage, Position, StrictModel, UtcDateTime
from schemas.messages import ThreadDisabled
from services.archiver.errors import LogInvalid, LogNotReady, LogRejected, LogUnreadable
from services.archiver.settings import ArchivedDatabase

LogKind = Literal["redo", "wal", "history", "backup_history"]

#: How much of a log is read per step (hashing, compressing, uploading).
CHUNK = 1024 * 1024

Fingerprint = tuple[int, int, int, int, int]
"""(device, inode, size, mtime_ns, ctime_ns): a file "changes" when any of these does, which is
also how a rejected file gets a second look (a chmod moves ctime, a rewrite moves mtime)."""


def fingerprint_of(st: os.stat_result) -> Fingerprint:
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


def mtime_utc(st: os.stat_result) -> datetime:
    return datetime.fromtimestamp(st.st_mtime_ns / 1e9, UTC)


class LoggedFile(StrictModel):
    """One completed log, as a source found it. Kept whole in the journal, so a restart can
    publish a stored log's event without reading the file again."""

    database: DatabaseRef
    lineage: Lineage
    kind: LogKind
    thread: int
    sequence: int
    name: str
    path: Path
    size: int
    archived_at: UtcDateTime
    first: Position | None = None
    next: Position | None = None
    first_time: UtcDateTime | None = None
    next_time: UtcDateTime | None = None
    fingerprint: Fingerprint
    #: The threads enabled on the lineage when the log was found (Oracle: V$THREAD, for a log
    #: of the current incarnation); None when the source cannot say. Sorted, holds `thread`.
    enabled_threads: tuple[int, ...] | None = None
    #: The threads disabled on the lineage when the log was found, with the stretch each has no
    #: redo on (Oracle: V$THREAD DISABLED, for a log of the current incarnation); None when
    #: the source cannot say.
    disabled_threads: tuple[ThreadDisabled, ...] | None = None

    @property
    def wal_file_name(self) -> str | None:
        """The PostgreSQL file name (what restore_command asks for); None for Oracle redo."""
        return None if self.kind == "redo" else self.name


@dataclass(frozen=True, slots=True)
class Problem:
    """A file a source found but cannot offer as a log; reported, never skipped silently.

    `log` is set when the source knows which log the file should be (Oracle: from
    V$ARCHIVED_LOG), so the problem is journaled against that log's key; a file that is no
    log at all (a stray name in the spool) has none.
    """

    name: str
    path: Path
    error: LogRejected
    fingerprint: Fingerprint | None
    log: LoggedFile | None = None


@dataclass(slots=True)
class Discovery:
    """One look at a source: complete logs, files it rejects, and how many are still growing."""

    logs: list[LoggedFile] = field(default_factory=list)
    problems: list[Problem] = field(default_factory=list)
    not_ready: int = 0


class LogSource(Protocol):
    """One database's completed logs."""

    database: ArchivedDatabase

    def bind_notify(self) -> socket.socket | None:
        """A bound datagram socket on which the writer announces new files, if there is one."""
        ...

    def open(self) -> None:
        """Check the source is usable (spool format, owner) before the first discovery."""
        ...

    async def discover(self) -> Discovery:
        """The completed logs now present (cheap: names and stat, no content read)."""
        ...

    def check_header(self, log: LoggedFile, head: bytes) -> None:
        """Raise `LogInvalid` if the first bytes contradict what `log` claims to be."""
        ...

    async def release(self, log: LoggedFile) -> None:
        """The catalog holds `log`: give up the local copy (idempotent)."""
        ...

    # -- read-ahead: logs taken from the engine before it hands them over ----------------------

    def ahead(self, log: LoggedFile) -> bool:
        """True when `log` was found ahead of the writer's hand-over (PostgreSQL: in `pg_wal`,
        before archive_command copied it), so the writer may be waiting to hear it is stored."""
        ...

    def stored(self, log: LoggedFile, identity: Fingerprint, crc32c: str, key: str) -> None:
        """The store holds `log`, verified, and the journal says so (blocking): tell a waiting
        writer that the file with `identity` needs no copy."""
        ...

    def decline(self, log: LoggedFile, reason: str) -> bool:
        """`log`, read ahead, will not be stored from where it was found (blocking): tell the
        writer to hand it over the usual way. True: left to that copy (no alarm; it gets the
        usual checks). False: there is no such copy and there will be none — report it."""
        ...

    def offer_readahead(self, healthy: bool) -> None:
        """Whether writers should wait for read-ahead now: on once the prefix is claimed and
        after each stored log, off after a store failure, so that a failing store never makes
        the engine wait (blocking, cheap)."""
        ...

    def close(self) -> None:
        """Stop: withdraw read-ahead."""
        ...


def read_chunks(
    log: LoggedFile,
    check_header: Callable[[LoggedFile, bytes], None],
    chunk_size: int = CHUNK,
    identity: list[Fingerprint] | None = None,
) -> Generator[bytes, None, None]:
    """The bytes of `log`, checked against what discovery saw (blocking: run it in a thread).

    Raises `LogUnreadable` (OS error), `LogInvalid` (header, or shorter than a complete log
    at EOF with an unchanged file) or `LogNotReady` (the file changed while being read). Once
    the last chunk is read and checked, the file's identity while read is appended to
    `identity`, if given.
    """
    try:
        handle = open(log.path, "rb")  # noqa: SIM115 - closed in finally, across yields
    except FileNotFoundError:
        # Nothing but the archiver removes a completed spooled log, and only once it is indexed
        # (a read-ahead log, in pg_wal, is PostgreSQL's: see the streamer's `decline`).
        raise LogUnreadable(f"{log.path} is gone: removed before it was stored") from None
    except OSError as exc:
        raise LogUnreadable(f"cannot open {log.path}: {exc.strerror or exc}") from None
    try:
        before = _fstat(handle, log)
        if (before.st_dev, before.st_ino) != log.fingerprint[:2]:
            raise LogNotReady(f"{log.path} was replaced since it was discovered")
        if before.st_size != log.size:
            raise LogNotReady(f"{log.path} changed size since it was discovered")
        total = 0
        first = True
        while True:
            try:
                chunk = handle.read(chunk_size)
            except OSError as exc:
                raise LogUnreadable(f"cannot read {log.path}: {exc.strerror or exc}") from None
            if first:
                # The header is checked before a single byte leaves the node.
                check_header(log, chunk)
                first = False
            if not chunk:
                break
            total += len(chunk)
            if total > log.size:
                raise LogNotReady(f"{log.path} grew past {log.size} bytes while being read")
            yield chunk
        after = _fstat(handle, log)
        if fingerprint_of(after) != fingerprint_of(before):
            raise LogNotReady(f"{log.path} changed while being read")
        if total != log.size:
            raise LogInvalid(f"{log.path}: read {total} bytes, expected {log.size}")
        if identity is not None:
            identity.append(fingerprint_of(after))
    finally:
        handle.close()


def _fstat(handle: BinaryIO, log: LoggedFile) -> os.stat_result:
    try:
        return os.fstat(handle.fileno())
    except OSError as exc:
        raise LogUnreadable(f"cannot stat {log.path}: {exc.strerror or exc}") from None
