"""A test double of an Oracle session's view of V$ARCHIVED_LOG. Not Oracle.

`ArchivedLogViewDouble` answers the archiver's `ArchivedLogReader` protocol from rows a test
adds, and writes the archived log files to a directory, optionally incomplete (shorter than
BLOCKS * BLOCK_SIZE, as while ARCn is still writing), so the Oracle source can be driven until
the Oracle engine lands.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

from services.archiver.oracle import ArchivedLogRow

BLOCK_SIZE = 512
T0 = datetime(2026, 1, 31, 12, 0, tzinfo=UTC)


@dataclass
class ArchivedLogViewDouble:
    """V$ARCHIVED_LOG for one database and one destination, in memory."""

    dest: Path
    dbid: int = 1_234_567_890
    resetlogs_id: int = 1_100_000_001
    rows: list[ArchivedLogRow] = field(default_factory=list)
    queries: int = 0

    async def database_id(self) -> int:
        return self.dbid

    async def archived_logs(self, dest_id: int) -> list[ArchivedLogRow]:
        self.queries += 1
        return list(self.rows)

    def archive(
        self, thread: int, sequence: int, *, blocks: int = 64, written_blocks: int | None = None
    ) -> Path:
        """Add a row for (thread, sequence) and write its file (`written_blocks` of it)."""
        path = self.dest / f"{thread}_{sequence}_{self.resetlogs_id}.arc"
        first = 9_000_000 + sequence * 1000
        written = blocks + 1 if written_blocks is None else written_blocks
        path.write_bytes(bytes([sequence % 251]) * (written * BLOCK_SIZE))
        self.rows.append(
            ArchivedLogRow(
                recid=len(self.rows) + 1,
                name=str(path),
                thread=thread,
                sequence=sequence,
                resetlogs_id=self.resetlogs_id,
                resetlogs_change=1,
                first_change=first,
                next_change=first + 1000,
                first_time=T0 + timedelta(minutes=sequence),
                next_time=T0 + timedelta(minutes=sequence + 1),
                blocks=blocks,
                block_size=BLOCK_SIZE,
                completion_time=T0 + timedelta(minutes=sequence + 1, seconds=2),
            )
        )
        return path

    def finish_writing(self, path: Path, blocks: int = 64) -> None:
        path.write_bytes(path.read_bytes()[:1] * ((blocks + 1) * BLOCK_SIZE))
