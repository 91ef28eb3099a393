"""A realistic catalog history, fed through the real `CatalogIndex` as contract messages.

Not a double of the index: a scripted past for it. `ORDERS` is a two-node Oracle RAC:

    inc-1000   threads 1 and 2, SCN 1000..2000, a log every 2 minutes per thread;
               thread 2 lost sequence 6 (SCN 1500..1600): the window splits there.
               backups B1 (consistent 1120) and B2 (consistent 1700)
    inc-2000   OPEN RESETLOGS at SCN 1800 (a PITR on inc-1000), threads 1 and 2 up to 2400;
               backup B3 (consistent 2050)

Windows: inc-1000 (1120, 1500] and (1700, 2000]; inc-2000 (1800, 2400] (B2 through the branch,
then B3). The newest log ends 30 s before `now`, so the RPO lag reads about 30 s.
`BILLING` is a PostgreSQL cluster on timeline 1 with one base backup, for the list page.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from schemas import DatabaseRef, Engine, Incarnation, Lsn, Scn, Timeline
from schemas.messages import BackupCompleted, BackupSpec, LogArchived
from services.catalog.index import CatalogIndex

__all__ = ["BILLING", "INC1", "INC2", "ORDERS", "RacHistory"]

ORDERS = DatabaseRef(uid="orders", engine=Engine.ORACLE, name="ORDERS", system_id=1_650_000_123)
BILLING = DatabaseRef(uid="billing", engine=Engine.POSTGRES, name="billing", system_id=7_300_001)
INC1 = Incarnation(resetlogs_id=1000, resetlogs_scn=Scn(value=1), number=1)
INC2 = Incarnation(
    resetlogs_id=2000, resetlogs_scn=Scn(value=1800), number=2, prior_resetlogs_id=1000
)
SCN_PER_LOG = 100
LOG_EVERY = timedelta(minutes=2)
SEG = 16 * 1024 * 1024


def _crc(n: int) -> str:
    return f"{n:06d}"[-6:] + "=="


@dataclass
class RacHistory:
    """Builds the history above, times counted back from `now`."""

    index: CatalogIndex = field(default_factory=CatalogIndex)
    now: datetime = field(default_factory=lambda: datetime.now(UTC))
    next_sequence: int = 7  # on inc-2000, per thread

    @property
    def inc2_start(self) -> datetime:
        # inc-2000's newest log (SCN 2400) ends 30 s before now.
        return self.now - timedelta(seconds=30) - LOG_EVERY * ((2400 - 1800) // SCN_PER_LOG)

    def time_of(self, incarnation: Incarnation, scn: int) -> datetime:
        if incarnation is INC2:
            return self.inc2_start + LOG_EVERY * ((scn - 1800) / SCN_PER_LOG)
        inc1_start = self.inc2_start - timedelta(minutes=2) - LOG_EVERY * 10
        return inc1_start + LOG_EVERY * ((scn - 1000) / SCN_PER_LOG)

    def log(
        self,
        incarnation: Incarnation,
        thread: int,
        sequence: int,
        first: int,
        ended: datetime | None = None,
    ) -> LogArchived:
        nxt = first + SCN_PER_LOG
        ended = ended or self.time_of(incarnation, nxt)
        key = f"orders/inc-{incarnation.resetlogs_id}/logs/{thread}/{sequence}"
        return LogArchived(
            lineage=incarnation,
            kind="redo",
            thread=thread,
            sequence=sequence,
            first=Scn(value=first),
            next=Scn(value=nxt),
            first_time=self.time_of(incarnation, first),
            next_time=ended,
            size_bytes=50 * 1024 * 1024,
            crc32c=_crc(sequence * 10 + thread),
            object_key=key,
            node=f"rac-{thread}",
            archived_at=ended,
            stored_at=ended + timedelta(seconds=2),
        )

    def backup(
        self, backup_id: str, incarnation: Incarnation, start: int, consistent: int
    ) -> BackupCompleted:
        done = self.time_of(incarnation, consistent) + timedelta(seconds=10)
        return BackupCompleted(
            backup_id=backup_id,
            job_id=uuid.uuid4(),
            spec=BackupSpec(),
            lineage=incarnation,
            start=Scn(value=start),
            consistent_at=Scn(value=consistent),
            started_at=self.time_of(incarnation, start),
            completed_at=done,
            size_bytes=4 * 1024**3,
            piece_count=8,
            manifest_key=f"orders/backups/{backup_id}/manifest.json",
        )

    def build(self) -> RacHistory:
        for thread in (1, 2):
            for sequence in range(1, 11):
                if thread == 2 and sequence == 6:
                    continue  # the lost log: a gap on thread 2
                first = 1000 + (sequence - 1) * SCN_PER_LOG
                self.index.apply_log(ORDERS, self.log(INC1, thread, sequence, first))
            for sequence in range(1, 7):
                first = 1800 + (sequence - 1) * SCN_PER_LOG
                self.index.apply_log(ORDERS, self.log(INC2, thread, sequence, first))
        self.index.apply_backup(ORDERS, self.backup("B1", INC1, 1050, 1120))
        self.index.apply_backup(ORDERS, self.backup("B2", INC1, 1650, 1700))
        self.index.apply_backup(ORDERS, self.backup("B3", INC2, 2000, 2050))
        self._billing()
        return self

    def advance(self) -> int:
        """Archive the next log on both threads of inc-2000, ending just now; returns the new
        window end SCN."""
        sequence = self.next_sequence
        first = 1800 + (sequence - 1) * SCN_PER_LOG
        ended = datetime.now(UTC)
        for thread in (1, 2):
            self.index.apply_log(ORDERS, self.log(INC2, thread, sequence, first, ended))
        self.next_sequence += 1
        return first + SCN_PER_LOG

    def _billing(self) -> None:
        timeline = Timeline(id=1)
        start = self.now - timedelta(hours=3)
        for segno in range(2, 12):
            name = f"00000001{0:08X}{segno:08X}"
            ended = start + timedelta(minutes=15 * segno)
            self.index.apply_log(
                BILLING,
                LogArchived(
                    lineage=timeline,
                    kind="wal",
                    thread=1,
                    sequence=segno,
                    first=Lsn(value=segno * SEG),
                    next=Lsn(value=(segno + 1) * SEG),
                    size_bytes=SEG,
                    crc32c=_crc(segno),
                    object_key=f"billing/tl-00000001/logs/1/{name}",
                    file_name=name,
                    node="pg-1",
                    archived_at=ended,
                    stored_at=ended + timedelta(seconds=1),
                ),
            )
        self.index.apply_backup(
            BILLING,
            BackupCompleted(
                backup_id="base-1",
                job_id=uuid.uuid4(),
                spec=BackupSpec(),
                lineage=timeline,
                start=Lsn(value=3 * SEG + 40),
                consistent_at=Lsn(value=3 * SEG + 9000),
                started_at=start + timedelta(minutes=40),
                completed_at=start + timedelta(minutes=44),
                size_bytes=SEG * 4,
                piece_count=1,
                manifest_key="billing/backups/base-1/manifest.json",
            ),
        )
