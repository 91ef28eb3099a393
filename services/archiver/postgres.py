"""PostgreSQL: the completed WAL files wal-push leaves in a spool's `ready/` directory.

Everything in `ready/` is complete and fsynced by contract (the PostgreSQL engine's spool.py and
walpush.py), so discovery is a directory listing. What a file *is* comes from its name
(walfile.py): a segment's lineage is `Timeline(id)` from the name and its LSN range is
`[n * size, (n + 1) * size)` for segment number n, with the segment size learned from the first
header read. Before any byte of a segment is uploaded its long page header is checked
(`check_header`): the system identifier must be this database's, and the page address, timeline
and file size must agree with the name — so a truncated copy, a recycled segment or another
cluster's WAL is refused, not archived.

Timeline history files carry the new timeline's parent and branch point, read here so the event
says where the lineage forks. Backup history files carry the backup's start and stop LSN. Both
have no header to check. Their `sequence` is the timeline id.

A name that is no WAL file at all is reported (a `Problem`), never skipped silently.

Read-ahead (`pg_wal_dir` set): PostgreSQL marks each completed file `pg_wal/archive_status/
<file>.ready` before it calls archive_command, one file at a time. Discovery lists those too, and
a file not (yet) in the spool is streamed straight from `pg_wal`, in parallel with the others,
with the same checks. Once it is stored and journaled, `stored/<file>` in the spool records the
identity of the file that was read (device, inode, size, mtime, ctime), and walpush, when
PostgreSQL calls it for that file, acknowledges it without a copy if it opens that very file
(see walpush.py). `readahead.lock` tells walpush whether to wait for that marker: it is held
from the claim of the prefix on, let go after a store failure (walpush then copies at once, so
a failing store never slows PostgreSQL) and taken again after the next stored log. A read-ahead
file that cannot be stored as found (unreadable, changed, a conflicting checksum) is declined
(`stored/<file>` says so): walpush copies it and the spool copy gets the usual checks and
alarms. Markers go once PostgreSQL no longer waits for their file (its `.ready` is gone).
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
import socket
from pathlib import Path

from schemas import Lsn, Timeline, parse_lsn
from services.archiver.errors import ForeignArchive, LogInvalid, LogNotReady, LogUnreadable
from services.archiver.settings import ArchivedDatabase
from services.archiver.sources import (
    Discovery,
    Fingerprint,
    LoggedFile,
    LogKind,
    Problem,
    fingerprint_of,
    mtime_utc,
)
from services.engines.postgres import walfile
from services.engines.postgres.spool import ReadAheadLock, Spool, SpoolError
from services.engines.postgres.walfile import WalFileKind, WalFileName

_log = logging.getLogger("tidemark.archiver")

_READY = ".ready"

#: History and backup history files are a few hundred bytes; anything this big is not one.
_MAX_TEXT_FILE = 1 << 20
_BACKUP_LSN = re.compile(r"^(START|STOP) WAL LOCATION: ([0-9A-Fa-f]+/[0-9A-Fa-f]+)", re.M)

_KINDS: dict[WalFileKind, LogKind] = {
    WalFileKind.SEGMENT: "wal",
    WalFileKind.PARTIAL: "wal",
    WalFileKind.HISTORY: "history",
    WalFileKind.BACKUP_HISTORY: "backup_history",
}


class PostgresSpoolSource:
    """The spool of one PostgreSQL database."""

    def __init__(self, database: ArchivedDatabase) -> None:
        assert database.spool_dir is not None
        self.database = database
        self.spool = Spool(database.spool_dir)
        #: Learned from the first segment header read; it cannot change without initdb.
        self.segment_size: int | None = None
        #: The cluster's pg_wal when reading ahead, else None.
        self.pg_wal = database.pg_wal_dir.absolute() if database.pg_wal_dir else None
        self._lock = ReadAheadLock(self.spool.readahead_lock_path) if self.pg_wal else None
        self._lock_refused = False
        self._status_error: str | None = None

    @property
    def status_dir(self) -> Path | None:
        """`pg_wal/archive_status`, where PostgreSQL marks files `.ready` (read-ahead only)."""
        return None if self.pg_wal is None else self.pg_wal / "archive_status"

    def open(self) -> None:
        if not self.spool.ready_dir.is_dir():
            raise SpoolError(f"{self.spool.path} is not an initialised spool (no ready/)")
        owner = self.spool.config().database_uid
        if owner not in (None, self.database.uid):
            raise ForeignArchive(
                f"spool {self.spool.path} belongs to database {owner}, not {self.database.uid}",
                owner_system_id=None,
            )
        if self.status_dir is not None:
            # Read-ahead is an addition: a pg_wal we cannot use only means the spool alone.
            self._waiting_in_pg_wal()
            try:
                self.spool.ensure_stored_dir()
            except OSError as exc:
                self._status_error = f"cannot create {self.spool.stored_dir}: {exc}"
                log_warning(self, f"{self._status_error}; archiving through the spool alone")

    def bind_notify(self) -> socket.socket | None:
        return self.spool.bind_notify_socket()

    async def discover(self) -> Discovery:
        return await asyncio.to_thread(self._discover)

    def _discover(self) -> Discovery:
        found = Discovery()
        # PostgreSQL's list first: a file walpush copies between the two listings is then
        # seen in ready/, never missed by both.
        waiting = self._waiting_in_pg_wal()
        ready = self.spool.ready_files()
        named = {f.name for f in ready}
        for ready_file in ready:
            try:
                st = os.stat(ready_file.path)
            except FileNotFoundError:
                continue  # released between the listing and now
            except OSError as exc:
                error = LogUnreadable(f"cannot stat {ready_file.path}: {exc.strerror or exc}")
                found.problems.append(Problem(ready_file.name, ready_file.path, error, None))
                continue
            try:
                found.logs.append(self._logged(ready_file.wal, ready_file.path, st))
            except LogNotReady:
                found.not_ready += 1
            except (LogInvalid, LogUnreadable) as rejected:
                bare = self._logged(ready_file.wal, ready_file.path, st, bare=True)
                found.problems.append(
                    Problem(ready_file.name, ready_file.path, rejected, fingerprint_of(st), bare)
                )
        for name in sorted(set(os.listdir(self.spool.ready_dir)) - named):
            # walpush writes only WAL names as regular files; anything else is someone else's.
            # A WAL name missing from the first listing arrived since: the next round takes it.
            if walfile.classify(name) is not None:
                continue
            path = self.spool.ready_dir / name
            try:
                st = os.lstat(path)
            except FileNotFoundError:
                continue
            stray = LogInvalid(f"{path} is not a WAL file PostgreSQL archives; it is left alone")
            found.problems.append(Problem(name, path, stray, fingerprint_of(st)))
        if self.pg_wal is not None:
            found.logs.extend(self._ahead(sorted(waiting - named)))
            self._sweep(waiting)
        return found

    def _waiting_in_pg_wal(self) -> set[str]:
        """Names PostgreSQL has marked `.ready` (so complete) and not yet archived."""
        if self.status_dir is None:
            return set()
        try:
            entries = os.listdir(self.status_dir)
        except OSError as exc:
            error = (
                f"pg_wal_dir: cannot list {self.status_dir} ({exc.strerror or exc}); it must be "
                "the cluster's pg_wal, readable by the archiver (initdb --allow-group-access and "
                "the database user's group)"
            )
            if error != self._status_error:
                _log.warning("%s: %s; archiving through the spool alone", self.database.uid, error)
            self._status_error = error
            self.offer_readahead(False)  # walpush must not wait for what cannot come
            return set()
        self._status_error = None
        names = (e[: -len(_READY)] for e in entries if e.endswith(_READY))
        return {n for n in names if walfile.classify(n) is not None}

    def _ahead(self, names: list[str]) -> list[LoggedFile]:
        assert self.pg_wal is not None
        logs = []
        for name in names:
            path = self.pg_wal / name
            try:
                st = os.stat(path)
                logs.append(self._logged(walfile.parse_name(name), path, st))
            except (OSError, LogNotReady, LogInvalid, LogUnreadable):
                # Gone (archived meanwhile) or not readable as found: left to walpush's copy,
                # which gets the usual checks and alarms.
                continue
        return logs

    def _sweep(self, waiting: set[str]) -> None:
        """Drop markers of files PostgreSQL no longer waits for (it never asks for them again)."""
        for name in self.spool.markers():
            if name not in waiting:
                try:
                    self.spool.drop_marker(name)
                except OSError as exc:
                    log_warning(self, f"cannot drop the marker of {name}: {exc}")

    def _logged(
        self, wal: WalFileName, path: Path, st: os.stat_result, *, bare: bool = False
    ) -> LoggedFile:
        """The log `path` holds. `bare`: identity only, for reporting a file that failed."""
        kind = _KINDS[wal.kind]
        lineage = Timeline(id=wal.timeline)
        sequence = wal.timeline
        first = next_ = None
        if not bare and wal.kind in (WalFileKind.SEGMENT, WalFileKind.PARTIAL):
            size = self._segment_size(path)
            sequence = wal.segment_number(size)
            first = Lsn(value=sequence * size)
            next_ = Lsn(value=(sequence + 1) * size)
        elif not bare and wal.kind is WalFileKind.HISTORY:
            lineage = _history_lineage(wal.timeline, _read_text(path))
        elif not bare and wal.kind is WalFileKind.BACKUP_HISTORY:
            first, next_ = _backup_range(_read_text(path), path)
        return LoggedFile(
            database=self.database.ref,
            lineage=lineage,
            kind=kind,
            thread=1,
            sequence=sequence,
            name=wal.name,
            path=path,
            size=st.st_size,
            # walpush's copy completes within moments of PostgreSQL finishing the segment.
            archived_at=mtime_utc(st),
            first=first,
            next=next_,
            fingerprint=fingerprint_of(st),
        )

    def _segment_size(self, path: Path) -> int:
        if self.segment_size is None:
            try:
                header = walfile.read_long_header(path)
            except FileNotFoundError:
                raise LogNotReady(f"{path} disappeared") from None
            except OSError as exc:
                raise LogUnreadable(f"cannot read {path}: {exc.strerror or exc}") from None
            except walfile.WalFileError as exc:
                raise LogInvalid(str(exc)) from None
            self.segment_size = header.segment_size
        return self.segment_size

    def check_header(self, log: LoggedFile, head: bytes) -> None:
        if log.kind != "wal":
            if not head:
                raise LogInvalid(f"{log.path} is empty")
            return
        try:
            header = walfile.check_segment(log.path, log.name)
            mine = walfile.parse_long_header(head)
        except FileNotFoundError:
            raise LogUnreadable(f"{log.path} is gone: removed before it was stored") from None
        except OSError as exc:
            raise LogUnreadable(f"cannot read {log.path}: {exc.strerror or exc}") from None
        except walfile.WalFileError as exc:
            raise LogInvalid(str(exc)) from None
        if mine != header:
            raise LogNotReady(f"{log.path} changed while being read")
        if header.system_identifier != self.database.system_id:
            raise LogInvalid(
                f"{log.path} belongs to system {header.system_identifier}, not to "
                f"{self.database.uid} (system {self.database.system_id})"
            )
        if log.first is None or header.page_address != log.first.value:
            raise LogInvalid(f"{log.path}: header page address disagrees with its name")

    async def release(self, log: LoggedFile) -> None:
        await asyncio.to_thread(self.spool.release, log.name)

    # -- read-ahead ----------------------------------------------------------------------------

    def ahead(self, log: LoggedFile) -> bool:
        return self.pg_wal is not None and log.path.parent == self.pg_wal

    def stored(self, log: LoggedFile, identity: Fingerprint, crc32c: str, key: str) -> None:
        if not self.ahead(log):
            return  # walpush copied it: PostgreSQL has its answer already
        try:
            self.spool.mark_stored(log.name, identity, crc32c=crc32c, key=key)
        except OSError as exc:
            # walpush would wait for a marker that cannot come: stop offering until the next
            # stored log, so it copies instead.
            log_warning(self, f"cannot write the marker of {log.name}: {exc}")
            self.offer_readahead(False)

    def decline(self, log: LoggedFile, reason: str) -> bool:
        if not self.ahead(log):
            return False
        assert self.status_dir is not None
        if (self.status_dir / f"{log.name}{_READY}").exists():
            try:
                self.spool.decline(log.name, reason)
            except OSError as exc:
                log_warning(self, f"cannot write the marker of {log.name}: {exc}")
                self.offer_readahead(False)
            return True
        # PostgreSQL no longer waits for it: walpush copied it (found next round), or
        # something else told PostgreSQL it was archived, which must be reported.
        return self.spool.ready_path(log.name).exists()

    def offer_readahead(self, healthy: bool) -> None:
        if self._lock is None:
            return
        if not healthy or self._status_error is not None:  # a pg_wal we cannot read: no offer
            self._lock.release()
        elif not self._lock.held:
            if self._lock.acquire():
                self._lock_refused = False
            elif not self._lock_refused:
                self._lock_refused = True
                log_warning(
                    self,
                    f"{self._lock.path} is held by another process (a second archiver on this "
                    "spool?); walpush will not wait for this one",
                )

    def close(self) -> None:
        if self._lock is not None:
            self._lock.release()


def log_warning(source: PostgresSpoolSource, message: str) -> None:
    _log.warning("%s: %s", source.database.uid, message)


def _read_text(path: Path) -> str:
    try:
        with open(path, "rb") as handle:
            raw = handle.read(_MAX_TEXT_FILE + 1)
    except FileNotFoundError:
        raise LogNotReady(f"{path} disappeared") from None
    except OSError as exc:
        raise LogUnreadable(f"cannot read {path}: {exc.strerror or exc}") from None
    if len(raw) > _MAX_TEXT_FILE:
        raise LogInvalid(f"{path} is larger than any history file")
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        raise LogInvalid(f"{path} is not text, so not a history file") from None


def _history_lineage(timeline: int, text: str) -> Timeline:
    """`N.history`: one line per ancestor, `parentTLI <tab> switchpoint <tab> reason`."""
    entries = [
        line.split("\t")
        for line in text.splitlines()
        if line.strip() and not line.lstrip().startswith("#")
    ]
    if not entries:
        raise LogInvalid(f"timeline {timeline} history names no parent")
    try:
        parent = int(entries[-1][0])
        branch = Lsn(value=parse_lsn(entries[-1][1].strip()))
    except (ValueError, IndexError):
        raise LogInvalid(f"timeline {timeline} history is malformed: {entries[-1]!r}") from None
    if not 1 <= parent < timeline:
        raise LogInvalid(f"timeline {timeline} history names parent {parent}")
    return Timeline(id=timeline, parent=parent, branch_lsn=branch)


def _backup_range(text: str, path: Path) -> tuple[Lsn | None, Lsn | None]:
    found = {kind: Lsn(value=parse_lsn(lsn)) for kind, lsn in _BACKUP_LSN.findall(text)}
    if "START" not in found:
        raise LogInvalid(f"{path} has no START WAL LOCATION: not a backup history file")
    return found["START"], found.get("STOP")
