"""Oracle: archived redo logs, identified from V$ARCHIVED_LOG, read from the archive destination.

A log's identity (thread, sequence, incarnation, SCN and time range) comes from the control
file through V$ARCHIVED_LOG, never from its file name (LOG_ARCHIVE_FORMAT varies and OMF names
say nothing). Only rows of one destination with ARCHIVED='YES', STATUS='A' (available) and
STANDBY_DEST='NO' count, and the file is read only when its size on disk is complete:
BLOCKS * BLOCK_SIZE, or one block more, since the file also carries a header block that some
releases leave out of BLOCKS. A shorter file is still being written and is left for the next
look; a longer one is not the log the control file describes.

The engine's session (python-oracledb) is behind `ArchivedLogReader`; until the Oracle engine
lands, tests drive this with a double (`tests/doubles/oracle_archived_log.py`).

Releasing an Oracle log changes nothing on disk: the archive destination belongs to RMAN's
deletion policy, which may delete a log once it is backed up; the journal records the release.
"""

from __future__ import annotations

import asyncio
import os
import socket
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Protocol

from schemas import Incarnation, Scn
from services.archiver.errors import ForeignArchive, LogInvalid, LogUnreadable
from services.archiver.settings import ArchivedDatabase
from services.archiver.sources import (
    Discovery,
    Fingerprint,
    LoggedFile,
    Problem,
    fingerprint_of,
)

ARCHIVED_LOGS_SQL = """\
SELECT recid, name, thread#, sequence#, resetlogs_id, resetlogs_change#,
       first_change#, next_change#, first_time, next_time, blocks, block_size, completion_time
  FROM v$archived_log
 WHERE dest_id = :dest_id AND archived = 'YES' AND status = 'A' AND standby_dest = 'NO'
   AND name IS NOT NULL
 ORDER BY thread#, sequence#"""
"""What an `ArchivedLogReader` runs (times converted to aware UTC by the reader)."""


@dataclass(frozen=True, slots=True)
class ArchivedLogRow:
    """One row of V$ARCHIVED_LOG (see `ARCHIVED_LOGS_SQL`)."""

    recid: int
    name: str
    thread: int
    sequence: int
    resetlogs_id: int
    resetlogs_change: int
    first_change: int
    next_change: int
    first_time: datetime
    next_time: datetime
    blocks: int
    block_size: int
    completion_time: datetime


class ArchivedLogReader(Protocol):
    """The part of an Oracle session the archiver needs."""

    async def database_id(self) -> int:
        """`SELECT dbid FROM v$database`."""
        ...

    async def archived_logs(self, dest_id: int) -> list[ArchivedLogRow]:
        """The rows `ARCHIVED_LOGS_SQL` returns for `dest_id`."""
        ...


class OracleArchiveSource:
    """Completed archived redo logs of one Oracle database, at one archive destination."""

    def __init__(self, database: ArchivedDatabase, reader: ArchivedLogReader) -> None:
        self.database = database
        self.reader = reader
        self._dbid_checked = False

    def bind_notify(self) -> socket.socket | None:
        return None  # Oracle tells nobody; V$ARCHIVED_LOG is polled

    def open(self) -> None:
        pass

    async def discover(self) -> Discovery:
        if not self._dbid_checked:
            dbid = await self.reader.database_id()
            if dbid != self.database.system_id:
                # The session reaches another database than the one configured: archiving its
                # logs under this uid would mix two databases' redo.
                raise ForeignArchive(
                    f"{self.database.uid} is configured with DBID {self.database.system_id}, "
                    f"but its session reaches DBID {dbid}",
                    owner_system_id=self.database.system_id,
                )
            self._dbid_checked = True
        rows = await self.reader.archived_logs(self.database.archive_dest_id)
        return await asyncio.to_thread(self._examine, rows)

    def _examine(self, rows: list[ArchivedLogRow]) -> Discovery:
        found = Discovery()
        for row in rows:
            path = Path(row.name)
            try:
                st = os.stat(path)
            except OSError as exc:
                log = self._logged(row, path, (0, 0, 0, 0, 0), size=row.blocks * row.block_size)
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
        self,
        row: ArchivedLogRow,
        path: Path,
        fingerprint: tuple[int, int, int, int, int],
        *,
        size: int,
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
        )

    def check_header(self, log: LoggedFile, head: bytes) -> None:
        # Identity comes from the control file; the size check in `_examine` is what says the
        # file is complete. An empty read of a non-empty log is a file truncated since.
        if not head and log.size:
            raise LogInvalid(f"{log.path} is empty, expected {log.size} bytes")

    async def release(self, log: LoggedFile) -> None:
        pass  # RMAN's deletion policy owns the archive destination (module docstring)

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
