"""A test double of an Oracle session's view of V$ARCHIVED_LOG and V$LOG_HISTORY. Not Oracle.

`ArchivedLogViewDouble` answers the archiver's `ArchivedLogReader` protocol (the part of
`OracleSession` the archiver uses) from rows a test adds, and writes the archived log files to
a directory, optionally incomplete (shorter than BLOCKS * BLOCK_SIZE, as while ARCn is still
writing), so the Oracle source can be driven in unit tests. `switch_only` records a log switch
in the history without a copy at the destination: a gap.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

from services.archiver.oracle import ArchivedLogRow
from services.engines.oracle.session import (
    DatabaseInfo,
    IncarnationRow,
    LogHistoryRow,
    ThreadRow,
)

BLOCK_SIZE = 512
T0 = datetime(2026, 1, 31, 12, 0, tzinfo=UTC)
RESETLOGS_CHANGE = 1


@dataclass
class ArchivedLogViewDouble:
    """V$ARCHIVED_LOG (one destination) and V$LOG_HISTORY of one database, in memory."""

    dest: Path
    dbid: int = 1_234_567_890
    resetlogs_id: int = 1_100_000_001
    current_scn: int = 1
    rows: list[ArchivedLogRow] = field(default_factory=list)
    history: list[LogHistoryRow] = field(default_factory=list)
    queries: int = 0
    #: The `after_recid` of every V$ARCHIVED_LOG query, in order.
    asked_after: list[int] = field(default_factory=list)
    closed: bool = False
    #: V$THREAD: (thread, ENABLED) of every thread.
    thread_states: list[tuple[int, str]] = field(default_factory=lambda: [(1, "PUBLIC")])

    async def database(self) -> DatabaseInfo:
        return DatabaseInfo(
            dbid=self.dbid,
            name="ERPPROD",
            db_unique_name="ERPPROD",
            log_mode="ARCHIVELOG",
            force_logging="YES",
            current_scn=self.current_scn,
            database_role="PRIMARY",
            platform_name="Linux x86 64-bit",
            open_mode="READ WRITE",
            resetlogs_change=RESETLOGS_CHANGE,
        )

    async def archived_logs(self, dest_id: int, after_recid: int = 0) -> list[ArchivedLogRow]:
        self.queries += 1
        self.asked_after.append(after_recid)
        return [r for r in self.rows if r.recid > after_recid and r.dest_id == dest_id]

    async def log_history(
        self, thread: int, from_sequence: int, *, resetlogs_id: int | None = None
    ) -> list[LogHistoryRow]:
        if resetlogs_id not in (None, self.resetlogs_id):
            return []  # one incarnation only
        return [
            h
            for h in self.history
            if (h.thread, h.resetlogs_change) == (thread, RESETLOGS_CHANGE)
            and h.sequence >= from_sequence
        ]

    async def incarnations(self) -> list[IncarnationRow]:
        return [
            IncarnationRow(
                incarnation=1,
                resetlogs_change=RESETLOGS_CHANGE,
                resetlogs_time=T0,
                resetlogs_id=self.resetlogs_id,
                prior_incarnation=0,
                status="CURRENT",
            )
        ]

    async def threads(self) -> list[ThreadRow]:
        return [
            ThreadRow(thread=t, status="OPEN", enabled=enabled, sequence=1)
            for t, enabled in self.thread_states
        ]

    async def close(self) -> None:
        self.closed = True

    @staticmethod
    def first_change(sequence: int) -> int:
        return 9_000_000 + sequence * 1000

    def switch_only(self, thread: int, sequence: int) -> None:
        """A log switch in V$LOG_HISTORY, with no copy at the destination."""
        first = self.first_change(sequence)
        self.history.append(
            LogHistoryRow(
                recid=len(self.history) + 1,
                thread=thread,
                sequence=sequence,
                first_change=first,
                next_change=first + 1000,
                first_time=T0 + timedelta(minutes=sequence),
                resetlogs_change=RESETLOGS_CHANGE,
            )
        )

    def archive(
        self, thread: int, sequence: int, *, blocks: int = 64, written_blocks: int | None = None
    ) -> Path:
        """Add a row for (thread, sequence) and write its file (`written_blocks` of it)."""
        path = self.dest / f"{thread}_{sequence}_{self.resetlogs_id}.arc"
        first = self.first_change(sequence)
        written = blocks + 1 if written_blocks is None else written_blocks
        path.write_bytes(bytes([sequence % 251]) * (written * BLOCK_SIZE))
        self.switch_only(thread, sequence)
        self.rows.append(
            ArchivedLogRow(
                recid=len(self.rows) + 1,
                dest_id=1,
                name=str(path),
                thread=thread,
                sequence=sequence,
                resetlogs_id=self.resetlogs_id,
                resetlogs_change=RESETLOGS_CHANGE,
                first_change=first,
                next_change=first + 1000,
                first_time=T0 + timedelta(minutes=sequence),
                next_time=T0 + timedelta(minutes=sequence + 1),
                blocks=blocks,
                block_size=BLOCK_SIZE,
                completion_time=T0 + timedelta(minutes=sequence + 1, seconds=2),
                archived="YES",
                status="A",
                standby_dest="NO",
                deleted="NO",
            )
        )
        return path

    def finish_writing(self, path: Path, blocks: int = 64) -> None:
        path.write_bytes(path.read_bytes()[:1] * ((blocks + 1) * BLOCK_SIZE))
