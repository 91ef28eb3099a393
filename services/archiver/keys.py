"""What a log's object is called and what it says about itself.

The key layout itself is `services/blobstore/layout.py` (shared with the engines and the
catalog's rebuild); this module maps a `LoggedFile` onto it.

Every object carries flat string metadata, so the bucket alone describes every log:

| key | value |
|---|---|
| `engine`, `database`, `system_id` | whose log it is |
| `lineage`, `kind`, `thread`, `sequence`, `file_name` | which log (`file_name` PostgreSQL only) |
| `first`, `next` | position range `[first, next)`: LSN as `X/Y`, SCN in decimal ("" if unknown) |
| `first_time`, `next_time`, `archived_at` | ISO 8601 UTC ("" if unknown) |
| `size`, `crc32c` | the log as the engine wrote it, before compression |
| `compression` | `none` or `zstd` (the object's own size and crc32c are the stored bytes') |
| `enabled-threads` | the lineage's threads enabled at archive time, e.g. `1,2` ("" if unknown) |
| `disabled-threads` | disabled threads, `thread:last sequence:at-until` each (`2:7:1500-1800`) |
"""

from __future__ import annotations

from datetime import datetime

from schemas import Lsn, Scn
from schemas.messages import ThreadDisabled
from services.archiver.sources import LoggedFile
from services.blobstore import Digest
from services.blobstore.layout import (
    database_prefix,
    history_key,
    lineage_key,
    owner_key,
    sequence_key,
)
from services.blobstore.layout import log_key as named_log_key

__all__ = ["database_prefix", "lineage_key", "log_key", "object_metadata", "owner_key"]


def log_key(prefix: str, log: LoggedFile) -> str:
    """The object key of `log`; a pure function of the log's identity, so every retry, restart
    and node computes the same one (create-only writes rely on that)."""
    uid = log.database.uid
    if log.kind in ("history", "backup_history"):
        return history_key(prefix, uid, log.lineage, log.name)
    if log.kind == "wal":
        return named_log_key(prefix, uid, log.lineage, log.thread, log.name)
    return sequence_key(prefix, uid, log.lineage, log.thread, log.sequence)


def _position(value: Lsn | Scn | None) -> str:
    return "" if value is None else str(value)


def _time(value: datetime | None) -> str:
    return "" if value is None else value.isoformat()


def object_metadata(log: LoggedFile, digest: Digest, compression: str) -> dict[str, str]:
    """The metadata stored with `log`'s object (see the module docstring)."""
    return {
        "engine": log.database.engine.value,
        "database": log.database.uid,
        "system_id": "" if log.database.system_id is None else str(log.database.system_id),
        "lineage": lineage_key(log.lineage),
        "kind": log.kind,
        "thread": str(log.thread),
        "sequence": str(log.sequence),
        "file_name": log.wal_file_name or "",
        "first": _position(log.first),
        "next": _position(log.next),
        "first_time": _time(log.first_time),
        "next_time": _time(log.next_time),
        "archived_at": _time(log.archived_at),
        "size": str(digest.size),
        "crc32c": digest.crc32c,
        "compression": compression,
        "enabled-threads": ",".join(str(t) for t in enabled_threads(log) or ()),
        "disabled-threads": disabled_threads_text(log.disabled_threads),
    }


def disabled_threads_text(disabled: tuple[ThreadDisabled, ...] | None) -> str:
    """`disabled-threads` metadata: `thread:last sequence:at-until`, comma-separated ("" for
    none or unknown; `catalog rebuild` reads it back)."""
    return ",".join(
        f"{d.thread}:{d.last_sequence}:{d.at.value}-{d.until.value}" for d in disabled or ()
    )


def enabled_threads(log: LoggedFile) -> tuple[int, ...] | None:
    """The threads enabled on `log`'s lineage when it was archived: PostgreSQL has one; an
    Oracle source says what V$THREAD listed (None when it cannot say)."""
    if log.kind != "redo":
        return (1,)
    return log.enabled_threads
