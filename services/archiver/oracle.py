"""Oracle: archived redo logs, identified from V$ARCHIVED_LOG, read from the archive destination.

A log's identity (thread, sequence, incarnation, SCN and time range) comes from the control
file through V$ARCHIVED_LOG, never from its file name (LOG_ARCHIVE_FORMAT varies and OMF names
say nothing). Only rows of one destination with ARCHIVED='YES', STATUS='A' (available) and
STANDBY_DEST='NO' count, and the file is read only when its size on disk is complete:
BLOCKS * BLOCK_SIZE, or one block more, since the file also carries a header block that some
releases leave out of BLOCKS. A shorter file is still being written and is left for the next
look; a longer one is not the log the control file describes.

**Reading the control file.** Each look reads only rows past the highest RECID seen (RECIDs
only grow), so a destination holding thousands of logs costs one short query per look. Every
`full_read_s` the view is read whole instead: that drops rows RMAN has deleted since, and
starts over from the truth if the control file was recreated or restored (RECIDs went back).
Rows are held until the catalog has the log (`release`), so an incomplete or unreadable file is
looked at again on every look without asking the database again.

**Gaps.** Sequences are contiguous per thread and incarnation, and V$LOG_HISTORY has a row for
every log switch. So a log is missing from the destination when its sequence lies between two
sequences the destination has, or when V$LOG_HISTORY has its switch (after this source started
watching: its FIRST_CHANGE# is at or past the SCN of the first look) and the destination still
lacks it. ARCn processes may finish logs out of order, so a missing log is reported only once it
has been missing for `gap_grace_s`: as a `Problem` naming thread and sequence (and the SCN range,
from V$LOG_HISTORY), journaled against the log's own key and raised as an alarm. V$LOG_HISTORY
is read on every full read, before the view (a switch it shows and ARCn finished by then is in
the view too, so never taken for missing), and a thread is judged only once its history has been
read, so every report carries the lost SCN range when the control file still has it. If the log
turns up later (restored, re-archived), it is archived as usual. Logs before the first sequence
seen per thread at start are not this source's to judge: they predate its watch.

**Incarnations** are told apart by RESETLOGS_ID, never by RESETLOGS_CHANGE# alone: two
restores to the same SCN make sibling incarnations that share it, and a watch (or a history
read) keyed by the SCN would give one sibling's logs and gaps the other's identity.

**Threads.** Every full read also reads V$THREAD: each log of the current incarnation is
reported with the threads enabled then (ENABLED not DISABLED, whether the instance is OPEN or
CLOSED), so the catalog bounds a window by a thread that has no log yet on the lineage (RMAN
would ask for its logs: RMAN-06054) and not by a disabled one. A log of another incarnation, or
of a thread no longer enabled, is reported without them: V$THREAD describes the current
incarnation now, not that log's lineage when it was written.

A disabled thread (ALTER DATABASE DISABLE THREAD) is reported with each log of the current
incarnation too, as a stretch it has no redo on: from DISABLE_CHANGE# to the thread's
ENABLE_CHANGE# once it is enabled again, else to the database's SCN read just before V$THREAD
still said DISABLED (`ThreadDisabled`), with its last log before the disable (the highest
sequence V$LOG_HISTORY switched out before DISABLE_CHANGE#, asked once per disable). So the
catalog stops requiring the thread past its disable, and never past what V$THREAD vouched for.
While a thread is disabled, V$THREAD is read again after every look that found new logs, so
the newest log's report reaches past it.

The session (`services.engines.oracle.session`, or the simulated one in tests) is behind
`ArchivedLogReader`, the part of `OracleSession` this source uses.

Releasing an Oracle log changes nothing on disk: the archive destination belongs to RMAN's
deletion policy, which may delete a log once it is backed up; the journal records the release.
"""

from __future__ import annotations

import asyncio
import os
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from schemas import Incarnation, Scn, utcnow
from schemas.messages import ThreadDisabled
from services.archiver.errors import ForeignArchive, LogInvalid, LogUnreadable
from services.archiver.settings import ArchivedDatabase
from services.archiver.sources import (
    Discovery,
    Fingerprint,
    LoggedFile,
    Problem,
    fingerprint_of,
)
from services.engines.oracle.session import (
    ARCHIVED_LOGS_SQL,
    ArchivedLogRow,
    DatabaseInfo,
    IncarnationRow,
    LogHistoryRow,
    ThreadRow,
)

__all__ = [
    "ARCHIVED_LOGS_SQL",
    "ArchivedLogReader",
    "ArchivedLogRow",
    "LogMissing",
    "OracleArchiveSource",
]

_NO_FILE: Fingerprint = (0, 0, 0, 0, 0)


class LogMissing(LogUnreadable):
    """A log the database switched out is not at the destination (a gap in the archive)."""


class ArchivedLogReader(Protocol):
    """The part of an Oracle session (`OracleSession`) the archiver needs."""

    async def database(self) -> DatabaseInfo: ...

    async def archived_logs(self, dest_id: int, after_recid: int = 0) -> list[ArchivedLogRow]: ...

    async def log_history(
        self, thread: int, from_sequence: int, *, resetlogs_id: int | None = None
    ) -> list[LogHistoryRow]: ...

    async def incarnations(self) -> list[IncarnationRow]: ...

    async def threads(self) -> list[ThreadRow]: ...

    async def close(self) -> None: ...


@dataclass
class _Watch:
    """Gap bookkeeping for one thread of one incarnation (module docstring)."""

    thread: int
    resetlogs_change: int
    resetlogs_id: int
    dest_dir: Path
    #: Every sequence up to here is at the destination, or was reported missing.
    checked: int
    #: Created after the first look: its history is read from sequence 1 once.
    late: bool
    #: Nothing is judged missing before V$LOG_HISTORY has been read for this thread, so that a
    #: gap is reported with the SCN range it loses.
    history_read: bool = False
    top: int = 0
    seen: set[int] = field(default_factory=set)
    reported: set[int] = field(default_factory=set)
    #: When (monotonic) each missing sequence was first noticed.
    noticed: dict[int, float] = field(default_factory=dict)
    history: dict[int, LogHistoryRow] = field(default_factory=dict)

    def see(self, sequence: int) -> None:
        self.seen.add(sequence)
        self.top = max(self.top, sequence)

    def advance(self) -> None:
        while self.checked + 1 in self.seen or self.checked + 1 in self.reported:
            self.checked += 1
        for kept in (self.seen, self.reported):
            kept.difference_update({s for s in kept if s <= self.checked})
        for gone in [s for s in (*self.noticed, *self.history) if s <= self.checked]:
            self.noticed.pop(gone, None)
            self.history.pop(gone, None)


class OracleArchiveSource:
    """Completed archived redo logs of one Oracle database, at one archive destination."""

    def __init__(
        self,
        database: ArchivedDatabase,
        reader: ArchivedLogReader,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.database = database
        self.reader = reader
        self._clock = clock
        self._dbid_checked = False
        #: The database's SCN at the first look: logs that begin at or after it are ours to get.
        self._start_scn: int | None = None
        self._last_recid = 0
        self._next_full = -float("inf")
        self._held: dict[int, ArchivedLogRow] = {}
        self._released: set[int] = set()
        #: (RESETLOGS_ID, thread) -> its watch.
        self._watches: dict[tuple[int, int], _Watch] = {}
        #: The current incarnation's RESETLOGS_ID and its enabled threads, from the last full
        #: read (module docstring: Threads).
        self._current_rid: int | None = None
        self._enabled: tuple[int, ...] | None = None
        self._disabled: tuple[ThreadDisabled, ...] | None = None
        #: (RESETLOGS_ID, thread, DISABLE_CHANGE#) -> the thread's last sequence before it.
        self._last_before: dict[tuple[int, int, int], int] = {}

    def bind_notify(self) -> socket.socket | None:
        return None  # Oracle tells nobody; V$ARCHIVED_LOG is polled

    def open(self) -> None:
        pass

    async def discover(self) -> Discovery:
        if not self._dbid_checked:
            info = await self.reader.database()
            if info.dbid != self.database.system_id:
                # The session reaches another database than the one configured: archiving its
                # logs under this uid would mix two databases' redo.
                raise ForeignArchive(
                    f"{self.database.uid} is configured with DBID {self.database.system_id}, "
                    f"but its session reaches DBID {info.dbid}",
                    owner_system_id=self.database.system_id,
                )
            self._dbid_checked = True
            self._start_scn = info.current_scn
        now = self._clock()
        full = now >= self._next_full
        first = self._next_full == -float("inf")
        if full:
            # History before the view: a switch seen here and archived by the time the view is
            # read is then seen as archived, never as missing.
            await self._read_threads()
            await self._read_history()
        fresh = await self._read(full=full, first=first)
        if fresh and self._disabled:
            # A disabled thread's stretch reaches only to the SCN read with V$THREAD: read
            # after the new logs, it reaches past them (module docstring: Threads).
            await self._read_threads()
        gaps = self._gaps(now)
        found = await asyncio.to_thread(self._examine, list(self._held.values()))
        found.problems.extend(gaps)
        return found

    async def _read(self, *, full: bool, first: bool) -> bool:
        """Read V$ARCHIVED_LOG (whole, or past the last RECID); True if it had new rows."""
        dest = self.database.archive_dest_id
        before = self._last_recid
        if full:
            rows = await self.reader.archived_logs(dest, 0)
            self._next_full = self._clock() + self.database.full_read_s
            present = {row.recid for row in rows}
            self._released &= present
            self._held = {r.recid: r for r in rows if r.recid not in self._released}
            # The whole view: also right when RECIDs went back (a recreated control file).
            self._last_recid = max(present, default=0)
        else:
            rows = await self.reader.archived_logs(dest, self._last_recid)
            for row in rows:
                if row.recid not in self._released:
                    self._held[row.recid] = row
                self._last_recid = max(self._last_recid, row.recid)
        fresh: dict[tuple[int, int], list[ArchivedLogRow]] = {}
        for row in rows:
            if row.available:
                fresh.setdefault((row.resetlogs_id, row.thread), []).append(row)
        for key, of_thread in fresh.items():
            watch = self._watches.get(key)
            if watch is None:
                lowest = min(r.sequence for r in of_thread)
                sample = of_thread[0]
                watch = self._watches[key] = _Watch(
                    thread=sample.thread,
                    resetlogs_change=sample.resetlogs_change,
                    resetlogs_id=sample.resetlogs_id,
                    dest_dir=Path(sample.name).parent,
                    checked=lowest - 1,
                    late=not first,
                )
            for r in of_thread:
                watch.see(r.sequence)
        return self._last_recid != before if full else bool(rows)

    async def _read_threads(self) -> None:
        incarnations = await self.reader.incarnations()
        # The SCN before V$THREAD: a thread it then shows DISABLED was disabled at this SCN.
        scn = (await self.reader.database()).current_scn
        threads = await self.reader.threads()
        current = next((i for i in incarnations if i.status == "CURRENT"), None)
        self._current_rid = None if current is None else current.resetlogs_id
        self._enabled = tuple(sorted(t.thread for t in threads if t.is_enabled)) or None
        disabled = []
        for t in sorted(threads, key=lambda t: t.thread):
            at = t.disabled_at if t.disabled_at is not None else t.disable_change
            until = scn if t.disabled_at is not None else t.reenabled_at
            if at is None or until is None or until < at or self._current_rid is None:
                continue
            last = await self._last_sequence(self._current_rid, t.thread, at)
            if last is not None:
                disabled.append(
                    ThreadDisabled(
                        thread=t.thread,
                        last_sequence=last,
                        at=Scn(value=at),
                        until=Scn(value=until),
                    )
                )
        self._disabled = tuple(disabled) or None

    async def _last_sequence(self, resetlogs_id: int, thread: int, at: int) -> int | None:
        """The last sequence `thread` switched out before its disable at `at`, by V$LOG_HISTORY
        (once per disable); None when the history no longer has it."""
        key = (resetlogs_id, thread, at)
        if key not in self._last_before:
            rows = await self.reader.log_history(thread, 1, resetlogs_id=resetlogs_id)
            before = [h.sequence for h in rows if h.first_change < at]
            if not before:
                return None
            self._last_before[key] = max(before)
        return self._last_before[key]

    def _enabled_for(self, row: ArchivedLogRow) -> tuple[int, ...] | None:
        enabled = self._enabled
        if row.resetlogs_id != self._current_rid or enabled is None or row.thread not in enabled:
            return None
        return enabled

    def _disabled_for(self, row: ArchivedLogRow) -> tuple[ThreadDisabled, ...] | None:
        return self._disabled if row.resetlogs_id == self._current_rid else None

    async def _read_history(self) -> None:
        for watch in self._watches.values():
            start = 1 if watch.late else watch.checked + 1
            rows = await self.reader.log_history(
                watch.thread, start, resetlogs_id=watch.resetlogs_id
            )
            watch.late = False
            watch.history_read = True
            watch.history.update({h.sequence: h for h in rows if h.sequence > watch.checked})

    def _gaps(self, now: float) -> list[Problem]:
        problems: list[Problem] = []
        for watch in self._watches.values():
            if not watch.history_read:
                continue
            missing = {s for s in range(watch.checked + 1, watch.top) if s not in watch.seen}
            missing |= {
                s
                for s, h in watch.history.items()
                if s not in watch.seen
                and self._start_scn is not None
                and h.first_change >= self._start_scn
            }
            for sequence in sorted(missing - watch.reported):
                since = watch.noticed.setdefault(sequence, now)
                if now - since >= self.database.gap_grace_s:
                    watch.reported.add(sequence)
                    problems.append(self._gap(watch, sequence))
            watch.advance()
        return problems

    def _gap(self, watch: _Watch, sequence: int) -> Problem:
        h = watch.history.get(sequence)
        where = f"LOG_ARCHIVE_DEST_{self.database.archive_dest_id} ({watch.dest_dir})"
        if h is not None:
            what = (
                f"gap: thread {watch.thread} sequence {sequence} (SCN {h.first_change} to "
                f"{h.next_change}) was switched out according to V$LOG_HISTORY, but is not "
                f"available at {where}"
            )
        else:
            what = (
                f"gap: thread {watch.thread} sequence {sequence} is not available at {where}, "
                "though later sequences are"
            )
        log = LoggedFile(
            database=self.database.ref,
            lineage=Incarnation(
                resetlogs_id=watch.resetlogs_id, resetlogs_scn=Scn(value=watch.resetlogs_change)
            ),
            kind="redo",
            thread=watch.thread,
            sequence=sequence,
            name=f"thread_{watch.thread}_sequence_{sequence}",
            path=watch.dest_dir,
            size=0,
            archived_at=h.first_time if h is not None else utcnow(),
            first=Scn(value=h.first_change) if h is not None else None,
            next=Scn(value=h.next_change) if h is not None else None,
            first_time=h.first_time if h is not None else None,
            fingerprint=_NO_FILE,
        )
        return Problem(log.name, watch.dest_dir, LogMissing(what), None, log)

    def _examine(self, rows: list[ArchivedLogRow]) -> Discovery:
        found = Discovery()
        for row in rows:
            if not row.available:
                continue
            path = Path(row.name)
            try:
                st = os.stat(path)
            except OSError as exc:
                log = self._logged(row, path, _NO_FILE, size=row.blocks * row.block_size)
                error = LogUnreadable(
                    f"V$ARCHIVED_LOG lists {path} (thread {row.thread} sequence "
                    f"{row.sequence}) as available, but it cannot be read: {exc.strerror or exc}"
                )
                found.problems.append(Problem(path.name, path, error, None, log))
                continue
            complete = {row.blocks * row.block_size, (row.blocks + 1) * row.block_size}
            if st.st_size < min(complete):
                found.not_ready += 1  # still being written
                continue
            log = self._logged(row, path, fingerprint_of(st), size=st.st_size)
            if st.st_size not in complete:
                invalid = LogInvalid(
                    f"{path} is {st.st_size} bytes, but V$ARCHIVED_LOG says {row.blocks} blocks "
                    f"of {row.block_size}: not the log the control file describes"
                )
                found.problems.append(Problem(path.name, path, invalid, fingerprint_of(st), log))
                continue
            found.logs.append(log)
        return found

    def _logged(
        self, row: ArchivedLogRow, path: Path, fingerprint: Fingerprint, *, size: int
    ) -> LoggedFile:
        return LoggedFile(
            database=self.database.ref,
            lineage=Incarnation(
                resetlogs_id=row.resetlogs_id, resetlogs_scn=Scn(value=row.resetlogs_change)
            ),
            kind="redo",
            thread=row.thread,
            sequence=row.sequence,
            name=path.name,
            path=path,
            size=size,
            archived_at=row.completion_time,
            first=Scn(value=row.first_change),
            next=Scn(value=row.next_change),
            first_time=row.first_time,
            next_time=row.next_time,
            fingerprint=fingerprint,
            enabled_threads=self._enabled_for(row),
            disabled_threads=self._disabled_for(row),
        )

    def check_header(self, log: LoggedFile, head: bytes) -> None:
        # Identity comes from the control file; the size check in `_examine` is what says the
        # file is complete. An empty read of a non-empty log is a file truncated since.
        if not head and log.size:
            raise LogInvalid(f"{log.path} is empty, expected {log.size} bytes")

    async def release(self, log: LoggedFile) -> None:
        # RMAN's deletion policy owns the archive destination (module docstring): only this
        # source's memory of the row goes.
        lineage = log.lineage
        for recid, row in list(self._held.items()):
            if (
                (row.thread, row.sequence) == (log.thread, log.sequence)
                and isinstance(lineage, Incarnation)
                and row.resetlogs_id == lineage.resetlogs_id
            ):
                del self._held[recid]
                self._released.add(recid)

    async def aclose(self) -> None:
        """Close the session (the service calls this once the streamer has stopped)."""
        await self.reader.close()

    # Oracle archives on its own (ARCn) and waits for nobody: nothing is read ahead.

    def ahead(self, log: LoggedFile) -> bool:
        return False

    def stored(self, log: LoggedFile, identity: Fingerprint, crc32c: str, key: str) -> None:
        pass

    def decline(self, log: LoggedFile, reason: str) -> bool:
        return False

    def offer_readahead(self, healthy: bool) -> None:
        pass

    def close(self) -> None:
        pass
