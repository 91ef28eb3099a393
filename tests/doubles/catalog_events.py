"""Contract events the catalog consumes, built the way the archiver and executor build them.

`wal`, `history`, `redo` and `backup` make `LogArchived` / `BackupCompleted` payloads whose object
keys are the archiver's own (`services.archiver.keys`). `write_log_object` writes the matching
object with the archiver's metadata, and `write_manifest` a backup manifest, so a test can build
the same history once as events and once as a bucket and compare what the catalog makes of each.
"""

from __future__ import annotations

import hashlib
import json
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

from schemas import DatabaseRef, Engine, Incarnation, Lineage, Lsn, Scn, Timeline, format_lsn
from schemas.messages import BackupCompleted, BackupKind, BackupSpec, LogArchived
from services.archiver.keys import log_key, object_metadata
from services.archiver.sources import LoggedFile
from services.blobstore import BlobStore, Digest, crc32c_of_bytes

T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
SEG = 16 * 1024 * 1024
PG = DatabaseRef(uid="orders-db", engine=Engine.POSTGRES, name="orders", system_id=7_312_001)
ORA = DatabaseRef(uid="ledger", engine=Engine.ORACLE, name="LEDGER", system_id=(1 << 64) - 5)
NODE = "db-node-1"


def wal_name(timeline: int, segno: int) -> str:
    return f"{timeline:08X}{segno >> 8:08X}{segno & 0xFF:08X}"


def content(key: str) -> bytes:
    """Deterministic bytes standing in for a log's content."""
    return hashlib.sha256(key.encode()).digest() * 4


def _logged(database: DatabaseRef, log: LogArchived) -> LoggedFile:
    name = log.file_name or f"{log.sequence}"
    return LoggedFile(
        database=database,
        lineage=log.lineage,
        kind=log.kind,
        thread=log.thread,
        sequence=log.sequence,
        name=name,
        path=Path("/nonexistent") / name,
        size=log.size_bytes,
        archived_at=log.archived_at,
        first=log.first,
        next=log.next,
        first_time=log.first_time,
        next_time=log.next_time,
        fingerprint=(0, 0, 0, 0, 0),
        disabled_threads=log.disabled_threads,
    )


def _finish(
    database: DatabaseRef, prefix: str, log: LogArchived, data: bytes | None = None
) -> LogArchived:
    """Give `log` the archiver's object key and the crc32c of its stand-in content."""
    key = log_key(prefix, _logged(database, log))
    data = content(key) if data is None else data
    return log.model_copy(
        update={"object_key": key, "crc32c": crc32c_of_bytes(data), "size_bytes": len(data)}
    )


def _stub(**fields: object) -> LogArchived:
    defaults: dict[str, object] = {
        "size_bytes": 0,
        "crc32c": "AAAAAA==",
        "object_key": "placeholder",
        "node": NODE,
    }
    return LogArchived.model_validate({**defaults, **fields})


def wal(
    segno: int,
    timeline: int = 1,
    *,
    parent: int | None = None,
    branch: int | None = None,
    prefix: str = "",
    database: DatabaseRef = PG,
) -> LogArchived:
    lineage = Timeline(
        id=timeline, parent=parent, branch_lsn=None if branch is None else Lsn(value=branch)
    )
    at = T0 + timedelta(minutes=segno)
    log = _stub(
        lineage=lineage,
        kind="wal",
        thread=1,
        sequence=segno,
        first=Lsn(value=segno * SEG),
        next=Lsn(value=(segno + 1) * SEG),
        file_name=wal_name(timeline, segno),
        archived_at=at,
        stored_at=at + timedelta(seconds=1),
    )
    return _finish(database, prefix, log)


def history_text(timeline: int, parent: int, branch: int) -> bytes:
    return f"{parent}\t{format_lsn(branch)}\tno recovery target specified\n".encode()


def history(
    timeline: int, parent: int, branch: int, *, prefix: str = "", database: DatabaseRef = PG
) -> LogArchived:
    """A timeline history file `<timeline>.history` naming its parent and branch point."""
    at = T0 + timedelta(hours=5)
    log = _stub(
        lineage=Timeline(id=timeline, parent=parent, branch_lsn=Lsn(value=branch)),
        kind="history",
        thread=1,
        sequence=timeline,
        file_name=f"{timeline:08X}.history",
        archived_at=at,
        stored_at=at,
    )
    return _finish(database, prefix, log, history_text(timeline, parent, branch))


def redo(
    thread: int,
    sequence: int,
    first: int,
    next_: int,
    incarnation: Incarnation,
    *,
    prefix: str = "",
    database: DatabaseRef = ORA,
) -> LogArchived:
    at = T0 + timedelta(minutes=sequence)
    log = _stub(
        lineage=incarnation,
        kind="redo",
        thread=thread,
        sequence=sequence,
        first=Scn(value=first),
        next=Scn(value=next_),
        first_time=at - timedelta(minutes=1),
        next_time=at,
        archived_at=at,
        stored_at=at + timedelta(seconds=2),
    )
    return _finish(database, prefix, log)


def backup(
    backup_id: str,
    start: int,
    consistent: int,
    lineage: Lineage,
    *,
    minute: int = 0,
    prefix: str = "",
    database: DatabaseRef = PG,
) -> BackupCompleted:
    position = Scn if isinstance(lineage, Incarnation) else Lsn
    base = f"{prefix}/{database.uid}" if prefix else database.uid
    return BackupCompleted(
        backup_id=backup_id,
        job_id=uuid.uuid5(uuid.NAMESPACE_URL, backup_id),
        spec=BackupSpec(kind=BackupKind.FULL, tag="NIGHTLY"),
        lineage=lineage,
        start=position(value=start),
        consistent_at=position(value=consistent),
        started_at=T0 + timedelta(minutes=minute),
        completed_at=T0 + timedelta(minutes=minute, seconds=30),
        size_bytes=1 << 30,
        piece_count=3,
        manifest_key=f"{base}/backups/{backup_id}/manifest.json",
    )


async def write_log_object(
    store: BlobStore, database: DatabaseRef, log: LogArchived, data: bytes | None = None
) -> None:
    """The object the archiver would have written for `log`, with the archiver's metadata."""
    if data is None:
        data = (
            history_text(
                log.lineage.id,
                log.lineage.parent or 0,
                log.lineage.branch_lsn.value if log.lineage.branch_lsn else 0,
            )
            if log.kind == "history" and isinstance(log.lineage, Timeline)
            else content(log.object_key)
        )
    digest = Digest(crc32c=crc32c_of_bytes(data), size=len(data))
    metadata = object_metadata(_logged(database, log), digest, "none")
    if log.enabled_threads:
        # What an Oracle source that read V$THREAD writes (`keys.enabled_threads`).
        metadata["enabled-threads"] = ",".join(str(t) for t in log.enabled_threads)
    await store.put_stream(log.object_key, data, metadata)


async def write_manifest(store: BlobStore, backup: BackupCompleted) -> None:
    """A manifest carrying the backup.completed payload (the format the rebuild reads)."""
    document = {"format": 1, "backup": backup.model_dump(mode="json")}
    await store.put_stream(backup.manifest_key, json.dumps(document, sort_keys=True).encode())
