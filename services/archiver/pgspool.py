"""PostgreSQL: the completed WAL files wal-push leaves in a spool's `ready/` directory.

Everything in `ready/` is complete and fsynced by contract (spool.py, walpush.py), so discovery
is a directory listing. What a file *is* comes from its name (walfile.py): a segment's lineage is
`Timeline(id)` from the name and its LSN range is `[n * size, (n + 1) * size)` for segment
number n, with the segment size learned from the first header read. Before any byte of a segment
is uploaded its long page header is checked (`check_header`): the system identifier must be this
database's, and the page address, timeline and file size must agree with the name — so a
truncated copy, a recycled segment or another cluster's WAL is refused, not archived.

Timeline history files carry the new timeline's parent and branch point, read here so the event
says where the lineage forks. Backup history files carry the backup's start and stop LSN. Both
have no header to check. Their `sequence` is the timeline id.

A name that is no WAL file at all is reported (a `Problem`), never skipped silently.
"""

from __future__ import annotations

import asyncio
import os
import re
import socket
from pathlib import Path

from schemas import Lsn, Timeline, parse_lsn
from services.archiver.errors import ForeignArchive, LogInvalid, LogNotReady, LogUnreadable
from services.archiver.settings import ArchivedDatabase
from services.archiver.sources import (
    Discovery,
    LoggedFile,
    LogKind,
    Problem,
    fingerprint_of,
    mtime_utc,
)
from services.archiver.spool import Spool, SpoolError
from services.engines.postgres import walfile
from services.engines.postgres.walfile import WalFileKind, WalFileName

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

    def open(self) -> None:
        if not self.spool.ready_dir.is_dir():
            raise SpoolError(f"{self.spool.path} is not an initialised spool (no ready/)")
        owner = self.spool.config().database_uid
        if owner not in (None, self.database.uid):
            raise ForeignArchive(
                f"spool {self.spool.path} belongs to database {owner}, not {self.database.uid}",
                owner_system_id=None,
            )

    def bind_notify(self) -> socket.socket | None:
        return self.spool.bind_notify_socket()

    async def discover(self) -> Discovery:
        return await asyncio.to_thread(self._discover)

    def _discover(self) -> Discovery:
        found = Discovery()
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
        return found

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
