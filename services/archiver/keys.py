"""Where a log lives in the object store, and what its object says about itself.

    <prefix>/<database-uid>/owner.json                          who owns this prefix (owner.py)
    <prefix>/<database-uid>/<lineage>/logs/<thread>/<name>      WAL segments: the file name
                                                                (also `.partial`)
    <prefix>/<database-uid>/<lineage>/logs/<thread>/<sequence>  Oracle redo: zero-padded to 10
    <prefix>/<database-uid>/<lineage>/history/<name>            timeline and backup history files

`<lineage>` is `tl-XXXXXXXX` (PostgreSQL timeline, hex as in WAL names) or `inc-<resetlogs id>`
(Oracle incarnation). Padding keeps a thread's logs in sequence order in a listing, which is
how `catalog rebuild` walks them. A prefix of "" puts databases at the bucket's root.

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
"""

from __future__ import annotations

from datetime import datetime

from schemas import Incarnation, Lineage, Lsn, Scn, Timeline
from services.archiver.sources import LoggedFile
from services.blobstore import Digest

#: Oracle sequences are padded to this width (2^32 has 10 digits) so listings sort numerically.
SEQUENCE_WIDTH = 10


def database_prefix(prefix: str, uid: str) -> str:
    return f"{prefix}/{uid}" if prefix else uid


def owner_key(prefix: str, uid: str) -> str:
    return f"{database_prefix(prefix, uid)}/owner.json"


def lineage_key(lineage: Lineage) -> str:
    if isinstance(lineage, Timeline | Incarnation):
        return lineage.key
    raise TypeError(f"not a lineage: {lineage!r}")


def log_key(prefix: str, log: LoggedFile) -> str:
    """The object key of `log`; a pure function of the log's identity, so every retry, restart
    and node computes the same one (create-only writes rely on that)."""
    base = f"{database_prefix(prefix, log.database.uid)}/{lineage_key(log.lineage)}"
    if log.kind in ("history", "backup_history"):
        return f"{base}/history/{log.name}"
    if log.kind == "wal":
        return f"{base}/logs/{log.thread}/{log.name}"
    return f"{base}/logs/{log.thread}/{log.sequence:0{SEQUENCE_WIDTH}d}"


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
    }


def enabled_threads(log: LoggedFile) -> tuple[int, ...] | None:
    """The threads enabled on `log`'s lineage when it was archived: PostgreSQL has one; an
    Oracle source says what V$THREAD listed (None while it does not say)."""
    if log.kind != "redo":
        return (1,)
    found: tuple[int, ...] | None = getattr(log, "enabled_threads", None)
    return found
