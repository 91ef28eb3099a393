"""What Tidemark's bucket holds of an Oracle source, read as the catalog reads it: the newest
level 0 + level 1 chain (its manifests) and the archived logs of one incarnation (their objects'
metadata), with the recoverability rule applied to them.

The `rman` migration reads the bucket itself rather than asking the catalog over the bus: an
engine reaches no service, and the bucket is the truth the catalog is derived from (`catalog
rebuild` makes the same index from it). It applies the catalog's rule and nothing looser, so it
never claims more than the catalog would: a base counts only with its whole chain
(`restore.restore_chain`); per enabled thread the logs from a point stay contiguous while a
log's NEXT_CHANGE# is the next sequence's FIRST_CHANGE#; the archive's end from a point is the
lowest thread end. An object another writer left without its metadata is not a log here.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from pydantic import ValidationError

from schemas import Incarnation, Scn
from services.blobstore import BlobStore, BlobStoreError
from services.blobstore.layout import MANIFEST_FILE, database_prefix, lineage_prefix
from services.engines.base import EngineError, JobContext
from services.engines.oracle.backup import OracleManifest
from services.engines.oracle.restore import restore_chain

__all__ = [
    "CODE_ARCHIVE",
    "CODE_NO_CHAIN",
    "Archive",
    "ArchivedLog",
    "newest_chain",
    "read_archive",
    "stage_logs",
]

CODE_NO_CHAIN = "TM-ORA-081"
"""The bucket holds no level 0 + level 1 chain of the source (or only a broken one)."""
CODE_ARCHIVE = "TM-ORA-082"
"""The archive does not (yet) reach where the step needs it; retryable while the archiver runs."""
CODE_LOG = "TM-ORA-086"
"""A log object cannot be staged as it is (changed under its checksum, compressed)."""


@dataclass(frozen=True)
class ArchivedLog:
    """One archived redo log in the bucket, from its object's metadata."""

    thread: int
    sequence: int
    first: int
    next: int
    key: str
    size: int
    crc32c: str
    compression: str
    next_time: datetime | None


@dataclass(frozen=True)
class Archive:
    """The archived logs of one incarnation of one database, per thread, in sequence order."""

    resetlogs_id: int
    threads: tuple[int, ...]
    logs: dict[int, list[ArchivedLog]]

    def end(self, start: int) -> int:
        """How far the archive lets a copy at `start` recover: the lowest thread end of the
        contiguous logs from the one holding `start` (`start` itself if a thread lacks it)."""
        ends = []
        for thread in self.threads:
            chain = self.logs.get(thread, [])
            at = next((n for n, x in enumerate(chain) if x.first <= start < x.next), None)
            if at is None:
                ends.append(start)
                continue
            end = chain[at].next
            for before, after in zip(chain[at:], chain[at + 1 :], strict=False):
                if after.sequence != before.sequence + 1 or after.first != before.next:
                    break
                end = after.next
            ends.append(end)
        return min(ends, default=start)

    def needed(self, start: int, until: int) -> list[ArchivedLog]:
        """The logs a recovery from `start` to `until` (exclusive) reads, every thread."""
        return [
            x
            for thread in self.threads
            for x in self.logs.get(thread, [])
            if x.next > start and x.first < until
        ]

    def bytes_after(self, position: int) -> int:
        """What the archive holds past `position` (archived, not applied)."""
        return sum(x.size for chain in self.logs.values() for x in chain if x.next > position)

    def time_of(self, position: int) -> datetime | None:
        """The time of `position` if a log ends there; else the latest log end before it (a
        lower bound, so a lag read from it is never less than the truth)."""
        ended = [x for chain in self.logs.values() for x in chain if x.next <= position]
        exact = [x.next_time for x in ended if x.next == position and x.next_time is not None]
        if exact:
            return min(exact)
        times = [x.next_time for x in ended if x.next_time is not None]
        return max(times, default=None)

    def newest_time(self) -> datetime | None:
        times = [x.next_time for chain in self.logs.values() for x in chain if x.next_time]
        return max(times, default=None)

    def last_sequence(self, thread: int) -> int:
        chain = self.logs.get(thread, [])
        return chain[-1].sequence if chain else 0


def _int(text: str | None) -> int | None:
    try:
        return int(text) if text else None
    except ValueError:
        return None


async def read_archive(store: BlobStore, prefix: str, uid: str, resetlogs_id: int) -> Archive:
    """Every archived log of `uid`'s incarnation `resetlogs_id` in the bucket."""
    lineage = Incarnation(resetlogs_id=resetlogs_id, resetlogs_scn=Scn(value=0))
    root = f"{lineage_prefix(prefix, uid, lineage)}/logs/"
    logs: dict[int, list[ArchivedLog]] = {}
    enabled: tuple[int, ...] = ()
    newest = -1
    try:
        async for info in store.list(root):
            meta = info.metadata
            numbers = [_int(meta.get(k)) for k in ("thread", "sequence", "first", "next")]
            if meta.get("kind") != "redo" or None in numbers:
                continue
            thread, sequence, first, after = (n or 0 for n in numbers)
            when = None
            with contextlib.suppress(ValueError):
                when = datetime.fromisoformat(meta.get("next_time", ""))
            logs.setdefault(thread, []).append(
                ArchivedLog(
                    thread=thread,
                    sequence=sequence,
                    first=first,
                    next=after,
                    key=info.key,
                    size=info.size,
                    crc32c=info.crc32c,
                    compression=meta.get("compression", "none"),
                    next_time=when,
                )
            )
            listed = tuple(int(t) for t in meta.get("enabled-threads", "").split(",") if t)
            if listed and after > newest:
                # The enabled threads are a fact the archiver reports with each log: the
                # newest log's report is the one that holds.
                enabled, newest = listed, after
    except BlobStoreError as exc:
        raise EngineError.of(f"listing {root}: {exc}", code=CODE_ARCHIVE, retryable=True) from exc
    for chain in logs.values():
        chain.sort(key=lambda x: x.sequence)
    threads = enabled or tuple(sorted(logs))
    return Archive(resetlogs_id=resetlogs_id, threads=threads, logs=logs)


async def newest_chain(
    store: BlobStore, prefix: str, uid: str, dbid: int | None
) -> list[OracleManifest]:
    """The newest level 1 of `uid` (of DBID `dbid` when known) with the level 0 under it and,
    for a differential, the level 1s between: oldest first, the level 1 last."""
    root = f"{database_prefix(prefix, uid)}/backups/"
    found: list[OracleManifest] = []
    try:
        async for info in store.list(root):
            if not info.key.endswith(f"/{MANIFEST_FILE}"):
                continue
            with contextlib.suppress(ValidationError):
                manifest = OracleManifest.model_validate_json(await store.get_bytes(info.key))
                if dbid is None or manifest.oracle.dbid == dbid:
                    found.append(manifest)
    except BlobStoreError as exc:
        raise EngineError.of(f"listing {root}: {exc}", code=CODE_NO_CHAIN, retryable=True) from exc
    level1 = [m for m in found if m.oracle.level == 1]
    if not level1:
        kinds = "no backup" if not found else "no level 1 backup"
        raise EngineError.of(
            f"the bucket holds {kinds} of {uid} under {root}: the rman method restores the "
            "newest level 0 + level 1 chain, take them first",
            code=CODE_NO_CHAIN,
        )
    newest = max(level1, key=lambda m: m.backup.completed_at)
    try:
        return await restore_chain(store, newest)
    except EngineError as exc:
        raise EngineError.of(exc.failure.reason, code=CODE_NO_CHAIN) from exc


def scn_of(position: object) -> int:
    if not isinstance(position, Scn):
        raise EngineError.of("an Oracle manifest records SCNs", code="TM-ORA-026")
    return position.value


def resetlogs_id_of(manifest: OracleManifest) -> int:
    lineage = manifest.backup.lineage
    if not isinstance(lineage, Incarnation):
        raise EngineError.of("an Oracle manifest records an incarnation", code="TM-ORA-026")
    return lineage.resetlogs_id


async def stage_logs(
    store: BlobStore, logs: Iterable[ArchivedLog], stage: Path, ctx: JobContext
) -> int:
    """Download `logs` into `stage` for `CATALOG START WITH`, each checked against the size and
    crc32c the listing reported; returns the bytes staged."""
    chosen = list(logs)
    total = 0
    for n, log in enumerate(chosen, 1):
        if log.compression != "none":
            raise EngineError.of(
                f"{log.key} is stored {log.compression}-compressed: the Oracle engine stages "
                'uncompressed logs only (archiver compression = "none" for Oracle sources)',
                code=CODE_LOG,
            )
        path = stage / f"arch_{log.thread}_{log.sequence}_{n}.arc"
        try:
            info = await store.get_to_file(log.key, path)
        except BlobStoreError as exc:
            raise EngineError.of(f"{log.key}: {exc}", code=CODE_ARCHIVE, retryable=True) from exc
        if (info.size, info.crc32c) != (log.size, log.crc32c):
            raise EngineError.of(
                f"{log.key}: the store served {info.size} bytes crc32c {info.crc32c}, its listing "
                f"said {log.size} bytes crc32c {log.crc32c}",
                code=CODE_LOG,
            )
        total += info.size
        await ctx.progress("stage", done=n, total=len(chosen), unit="files")
    return total
