"""The history the catalog benchmark indexes: one Oracle RAC database, its redo logs on several
threads, and backups spread along it. Every value is arithmetic on (thread, sequence), so the
same history can be produced as events, as bucket objects, or as index entries, without keeping
a million of anything around.

Thread `t`'s log `s` covers the SCNs `[ORIGIN + (s-1)·STEP + o_t, ORIGIN + s·STEP + o_t)`, with
the threads' switches staggered (`o_t = (t-1)·STEP / threads`); a log is a minute of redo, and
times follow SCNs linearly. Logs are archived in the order they complete, as the archivers
would publish them. Backup `j` of `B` starts at the `(j+1)/(B+1)` point of the history and is
consistent three logs later; its `backup.completed` follows the first log archived after it
completed. The result is one restorable window, from the first backup's consistent point to the
newest log, reached by every backup.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

from schemas import DatabaseRef, Engine, Incarnation, Scn
from schemas.messages import BackupCompleted, BackupKind, BackupSpec, LogArchived
from services.archiver.keys import log_key
from services.archiver.sources import LoggedFile
from services.blobstore import crc32c_of_bytes
from services.catalog.history import BaseEntry, LogEntry

DATABASE = DatabaseRef(uid="bench-catalog", engine=Engine.ORACLE, name="BENCH", system_id=4_242_424)
ORIGIN = 10_000_000
STEP = 100_000
"""SCNs per log."""
LOG_SECONDS = 60
INCARNATION = Incarnation(resetlogs_id=1_180_000_000, resetlogs_scn=Scn(value=ORIGIN), number=1)
T0 = datetime(2026, 1, 1, tzinfo=UTC)
LOG_BYTES = 256 << 20
NODE = "bench-node"


def time_at(scn: int) -> datetime:
    return T0 + timedelta(seconds=(scn - ORIGIN) * LOG_SECONDS / STEP)


class Workload:
    """`logs` logs over `threads` threads (rounded down to a multiple) and `backups` backups."""

    def __init__(self, logs: int, threads: int, backups: int) -> None:
        self.threads = threads
        self.per_thread = logs // threads
        self.backups = backups
        if self.per_thread < 8:
            raise ValueError(f"{logs} logs over {threads} threads is too short a history")

    @property
    def logs(self) -> int:
        return self.per_thread * self.threads

    # -- logs -----------------------------------------------------------------------------------

    def first(self, thread: int, sequence: int) -> int:
        return ORIGIN + (sequence - 1) * STEP + (thread - 1) * STEP // self.threads

    def object_key(self, thread: int, sequence: int, prefix: str = "") -> str:
        """The archiver's key for the log (`keys.log_key`), without building a `LoggedFile`."""
        base = f"{prefix}/{DATABASE.uid}" if prefix else DATABASE.uid
        return f"{base}/{INCARNATION.key}/logs/{thread}/{sequence:010d}"

    def log(self, thread: int, sequence: int, prefix: str = "") -> LogArchived:
        first = self.first(thread, sequence)
        archived = time_at(first + STEP) + timedelta(seconds=5)
        return LogArchived(
            lineage=INCARNATION,
            kind="redo",
            thread=thread,
            sequence=sequence,
            first=Scn(value=first),
            next=Scn(value=first + STEP),
            first_time=time_at(first),
            next_time=time_at(first + STEP),
            size_bytes=LOG_BYTES,
            crc32c=crc32c_of_bytes(f"{thread}/{sequence}".encode()),
            compression="none",
            object_key=self.object_key(thread, sequence, prefix),
            node=NODE,
            archived_at=archived,
            stored_at=archived + timedelta(seconds=1),
        )

    def logged_file(self, log: LogArchived) -> LoggedFile:
        """The archiver's view of `log`: what its object key and metadata are made from."""
        return LoggedFile(
            database=DATABASE,
            lineage=log.lineage,
            kind=log.kind,
            thread=log.thread,
            sequence=log.sequence,
            name=f"{log.sequence}",
            path=Path("/nonexistent") / f"{log.thread}_{log.sequence}.arc",
            size=log.size_bytes,
            archived_at=log.archived_at,
            first=log.first,
            next=log.next,
            first_time=log.first_time,
            next_time=log.next_time,
            fingerprint=(0, 0, 0, 0, 0),
        )

    def check_keys(self) -> None:
        """Refuse to run if the archiver's keys moved away from `object_key`."""
        log = self.log(1, 7)
        expected = log_key("", self.logged_file(log))
        if log.object_key != expected:
            raise RuntimeError(f"bench key {log.object_key} is not the archiver's {expected}")

    def entries(self) -> Iterator[LogEntry]:
        """The logs as the index keeps them (for the rescan baseline)."""
        for sequence in range(1, self.per_thread + 1):
            for thread in range(1, self.threads + 1):
                first = self.first(thread, sequence)
                yield LogEntry(
                    INCARNATION.key,
                    thread,
                    sequence,
                    first,
                    first + STEP,
                    time_at(first),
                    time_at(first + STEP),
                )

    # -- backups --------------------------------------------------------------------------------

    def backup(self, j: int, prefix: str = "") -> BackupCompleted:
        span = (self.per_thread - 8) * STEP
        start = ORIGIN + 2 * STEP + (j + 1) * span // (self.backups + 1)
        consistent = start + 3 * STEP
        backup_id = f"L{j:05d}"
        base = f"{prefix}/{DATABASE.uid}" if prefix else DATABASE.uid
        return BackupCompleted(
            backup_id=backup_id,
            job_id=uuid.uuid5(uuid.NAMESPACE_URL, f"tidemark-bench/{backup_id}"),
            spec=BackupSpec(kind=BackupKind.FULL, tag="BENCH"),
            lineage=INCARNATION,
            start=Scn(value=start),
            consistent_at=Scn(value=consistent),
            started_at=time_at(start),
            completed_at=time_at(consistent) + timedelta(seconds=LOG_SECONDS),
            size_bytes=1 << 40,
            piece_count=16,
            manifest_key=f"{base}/backups/{backup_id}/manifest.json",
        )

    def bases(self) -> list[BaseEntry]:
        found = []
        for j in range(self.backups):
            b = self.backup(j)
            found.append(
                BaseEntry(
                    b.backup_id,
                    INCARNATION.key,
                    b.start.value,
                    b.consistent_at.value,
                    b.completed_at,
                )
            )
        return found

    # -- the stream -----------------------------------------------------------------------------

    def events(self) -> Iterator[LogArchived | BackupCompleted]:
        """Every log and backup, in the order the archivers and the executor publish them."""
        backups = [self.backup(j) for j in range(self.backups)]
        pending = 0
        for sequence in range(1, self.per_thread + 1):
            for thread in range(1, self.threads + 1):
                log = self.log(thread, sequence)
                yield log
                assert log.next_time is not None
                while pending < len(backups) and backups[pending].completed_at <= log.next_time:
                    yield backups[pending]
                    pending += 1
        yield from backups[pending:]

    # -- what a restorable target looks like -----------------------------------------------------

    def window(self) -> tuple[int, int]:
        """(start, end] of the one restorable window, as SCNs."""
        start = self.backup(0).consistent_at.value
        end = min(self.first(t, self.per_thread) + STEP for t in range(1, self.threads + 1))
        return start, end

    def time_window(self) -> tuple[datetime, datetime]:
        """The window's times: from the first backup's completion to the end of the chain."""
        return self.backup(0).completed_at, time_at(self.window()[1])
