"""Rows of the catalog store <-> the contract's models (`LogArchived`, `BackupCompleted`, lineages).

Rows keep positions as plain integers; the database's engine says whether they are SCNs or LSNs.
"""

from __future__ import annotations

import uuid
from typing import Any

from sqlalchemy.engine import Row

from schemas import Engine as DbEngine
from schemas import Incarnation, Lineage, Lsn, Position, Scn, Timeline, lineage_from_key
from schemas.messages import BackupCompleted, BackupKind, BackupSpec, Compression, LogArchived

#: The node a log row names when it was rebuilt from the bucket (objects do not say who wrote
#: them); any valid node name would do, this one says what happened.
UNKNOWN_NODE = "unknown"


def name_of(log: LogArchived) -> str:
    return log.file_name or ""


def lineage_row(uid: str, lineage: Lineage) -> dict[str, Any]:
    if isinstance(lineage, Timeline):
        return {
            "database_uid": uid,
            "key": lineage.key,
            "kind": "timeline",
            "ident": lineage.id,
            "parent": None if lineage.parent is None else Timeline(id=lineage.parent).key,
            "branch_at": None if lineage.branch_lsn is None else lineage.branch_lsn.value,
            "number": None,
        }
    prior = lineage.prior_resetlogs_id
    return {
        "database_uid": uid,
        "key": lineage.key,
        "kind": "incarnation",
        "ident": lineage.resetlogs_id,
        "parent": None if prior is None else f"inc-{prior}",
        "branch_at": lineage.resetlogs_scn.value,
        "number": lineage.number,
    }


def lineage_model(row: Row[Any] | dict[str, Any]) -> Lineage:
    values = row if isinstance(row, dict) else row._mapping
    parent = values["parent"]
    if values["kind"] == "timeline":
        return Timeline(
            id=values["ident"],
            parent=None if parent is None else _timeline_id(parent),
            branch_lsn=None if values["branch_at"] is None else Lsn(value=values["branch_at"]),
        )
    return Incarnation(
        resetlogs_id=values["ident"],
        resetlogs_scn=Scn(value=values["branch_at"]),
        number=values["number"],
        prior_resetlogs_id=None if parent is None else _resetlogs_id(parent),
    )


def _timeline_id(key: str) -> int:
    lineage = lineage_from_key(key)
    if not isinstance(lineage, Timeline):
        raise ValueError(f"a timeline's parent {key!r} is not a timeline")
    return lineage.id


def _resetlogs_id(key: str) -> int:
    lineage = lineage_from_key(key)
    if not isinstance(lineage, Incarnation):
        raise ValueError(f"an incarnation's prior {key!r} is not an incarnation")
    return lineage.resetlogs_id


def position(engine: DbEngine, value: int | None) -> Position | None:
    if value is None:
        return None
    return Scn(value=value) if engine is DbEngine.ORACLE else Lsn(value=value)


def log_row(uid: str, log: LogArchived) -> dict[str, Any]:
    return {
        "database_uid": uid,
        "lineage": log.lineage.key,
        "thread": log.thread,
        "sequence": log.sequence,
        "kind": log.kind,
        "name": name_of(log),
        "first": None if log.first is None else log.first.value,
        "next": None if log.next is None else log.next.value,
        "first_time": log.first_time,
        "next_time": log.next_time,
        "archived_at": log.archived_at,
        "stored_at": log.stored_at,
        "size_bytes": log.size_bytes,
        "crc32c": log.crc32c,
        "compression": log.compression.value,
        "object_key": log.object_key,
        "node": None if log.node == UNKNOWN_NODE else log.node,
    }


def log_model(row: Row[Any], lineage: Lineage, engine: DbEngine) -> LogArchived:
    return LogArchived(
        lineage=lineage,
        kind=row.kind,
        thread=row.thread,
        sequence=row.sequence,
        first=position(engine, row.first),
        next=position(engine, row.next),
        first_time=row.first_time,
        next_time=row.next_time,
        size_bytes=row.size_bytes,
        crc32c=row.crc32c,
        compression=Compression(row.compression),
        object_key=row.object_key,
        file_name=row.name or None,
        node=row.node or UNKNOWN_NODE,
        archived_at=row.archived_at,
        stored_at=row.stored_at,
    )


def backup_row(uid: str, backup: BackupCompleted) -> dict[str, Any]:
    return {
        "database_uid": uid,
        "backup_id": backup.backup_id,
        "lineage": backup.lineage.key,
        "kind": backup.spec.kind.value,
        "cumulative": backup.spec.cumulative,
        "tag": backup.spec.tag,
        "compression": backup.spec.compression.value,
        "parent_backup_id": backup.parent_backup_id,
        "job_id": str(backup.job_id),
        "start": backup.start.value,
        "consistent_at": backup.consistent_at.value,
        "started_at": backup.started_at,
        "completed_at": backup.completed_at,
        "size_bytes": backup.size_bytes,
        "piece_count": backup.piece_count,
        "manifest_key": backup.manifest_key,
    }


def backup_model(row: Row[Any], lineage: Lineage, engine: DbEngine) -> BackupCompleted:
    start = position(engine, row.start)
    consistent = position(engine, row.consistent_at)
    assert start is not None
    assert consistent is not None
    return BackupCompleted(
        backup_id=row.backup_id,
        job_id=uuid.UUID(row.job_id),
        spec=BackupSpec(
            kind=BackupKind(row.kind),
            cumulative=row.cumulative,
            tag=row.tag,
            compression=Compression(row.compression),
        ),
        parent_backup_id=row.parent_backup_id,
        lineage=lineage,
        start=start,
        consistent_at=consistent,
        started_at=row.started_at,
        completed_at=row.completed_at,
        size_bytes=row.size_bytes,
        piece_count=row.piece_count,
        manifest_key=row.manifest_key,
    )
