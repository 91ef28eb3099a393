"""The events the archiver publishes, with ids that make a republish harmless.

`log.archived` gets a deterministic UUIDv7-shaped id: the top 48 bits are the log's
`archived_at` in Unix milliseconds (so ids still sort by time, as UUIDv7 promises), the rest
comes from a hash of the log's identity. A restart that publishes the same log again sends the
same `Nats-Msg-Id`, and JetStream drops the repeat inside its duplicate window (two minutes by
default); past the window the catalog's own dedupe by object key and crc32c takes over.
"""

from __future__ import annotations

import hashlib
import uuid
from datetime import datetime

from schemas import DatabaseRef, Envelope, envelope
from schemas.messages import AlarmReason, ArchiveAlarm, Compression, LogArchived
from services.archiver.keys import enabled_threads, lineage_key
from services.archiver.sources import LoggedFile


def log_message_id(log: LoggedFile) -> uuid.UUID:
    """The id of `log`'s `log.archived` event: the same for the same log, on any node, forever."""
    identity = "|".join(
        (
            log.database.uid,
            lineage_key(log.lineage),
            log.kind,
            str(log.thread),
            str(log.sequence),
            log.name if log.kind != "redo" else "",
        )
    )
    digest = int.from_bytes(hashlib.sha256(identity.encode()).digest()[:10], "big")
    ms = int(log.archived_at.timestamp() * 1000) & ((1 << 48) - 1)
    value = ms << 80
    value |= 0x7 << 76  # version 7
    value |= ((digest >> 62) & 0xFFF) << 64  # 12 bits of the hash (rand_a)
    value |= 0b10 << 62  # RFC 9562 variant
    value |= digest & ((1 << 62) - 1)  # 62 bits of the hash (rand_b)
    return uuid.UUID(int=value)


def log_archived(
    log: LoggedFile,
    *,
    key: str,
    crc32c: str,
    size: int,
    compression: str,
    node: str,
    stored_at: datetime,
    source: str,
    message_id: uuid.UUID,
) -> Envelope[LogArchived]:
    data = LogArchived(
        lineage=log.lineage,
        kind=log.kind,
        thread=log.thread,
        sequence=log.sequence,
        first=log.first,
        next=log.next,
        first_time=log.first_time,
        next_time=log.next_time,
        size_bytes=size,
        crc32c=crc32c,
        compression=Compression(compression),
        object_key=key,
        file_name=log.wal_file_name,
        node=node,
        archived_at=log.archived_at,
        stored_at=stored_at,
        enabled_threads=enabled_threads(log),
        disabled_threads=log.disabled_threads,
    )
    return envelope(data, source=source, database=log.database, message_id=message_id)


def archive_alarm(
    database: DatabaseRef,
    reason: AlarmReason,
    detail: str,
    *,
    node: str,
    source: str,
    key: str | None = None,
    path: str | None = None,
    existing_crc32c: str | None = None,
    attempted_crc32c: str | None = None,
    owner_system_id: int | None = None,
) -> Envelope[ArchiveAlarm]:
    data = ArchiveAlarm(
        reason=reason,
        detail=detail[:2000],
        node=node,
        object_key=key,
        path=path,
        existing_crc32c=existing_crc32c,
        attempted_crc32c=attempted_crc32c,
        owner_system_id=owner_system_id,
    )
    return envelope(data, source=source, database=database)
