"""What the catalog answers: restorable windows, checks, restore plans, retention previews.

Served over NATS request/reply (`tm.qry.catalog.<query>`) and the catalog's HTTP JSON API.
"""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import Field

from schemas._base import DatabaseUid, ObjectKey, StrictModel, UtcDateTime
from schemas.database import DatabaseRef
from schemas.messages.common import BackupId
from schemas.messages.restores import RestoreTarget
from schemas.positions import Position

QUERY_PREFIX = "tm.qry.catalog"

VerdictCode = Literal[
    "ok",
    "unknown_database",
    "unknown_lineage",
    "no_backup",
    "before_lineage",
    "before_first_backup",
    "gap",
    "beyond_last_log",
    "unsupported_target",
]


class LineageView(StrictModel):
    key: str
    parent: str | None = None
    branch_at: Position | None = None
    first_time: UtcDateTime | None = None
    last_time: UtcDateTime | None = None


class WindowView(StrictModel):
    """Targets T with `start < T <= end` on `lineage` are restorable."""

    lineage: str
    start: Position
    end: Position
    start_time: UtcDateTime | None = None
    end_time: UtcDateTime | None = None
    bases: list[BackupId] = Field(default_factory=list)


class BackupView(StrictModel):
    backup_id: BackupId
    lineage: str
    kind: str
    start: Position
    consistent_at: Position
    completed_at: UtcDateTime
    manifest_key: ObjectKey | None = None


class GapView(StrictModel):
    lineage: str
    thread: int
    after_sequence: int | None = None
    before_sequence: int | None = None
    start: Position
    end: Position | None = None
    start_time: UtcDateTime | None = None
    description: str


class WindowsReply(StrictModel):
    database: DatabaseRef
    now: UtcDateTime
    lineages: list[LineageView]
    windows: list[WindowView]
    backups: list[BackupView]
    gaps: list[GapView]
    last_archived_at: UtcDateTime | None = None
    rpo_lag_s: float | None = None


class DatabaseSummary(StrictModel):
    database: DatabaseRef
    window_start_time: UtcDateTime | None = None
    window_end_time: UtcDateTime | None = None
    rpo_lag_s: float | None = None
    backups: int = 0
    gaps: int = 0
    logs: int = 0


class CheckRequest(StrictModel):
    database: DatabaseUid
    target: RestoreTarget
    lineage: str | None = None


class CheckReply(StrictModel):
    database: DatabaseUid
    target: RestoreTarget
    lineage: str | None
    restorable: bool
    code: VerdictCode
    reason: str
    base: BackupId | None = None
    window: WindowView | None = None
    gap: GapView | None = None
    nearest_before: Position | None = None
    nearest_before_time: UtcDateTime | None = None
    nearest_after: Position | None = None
    nearest_after_time: UtcDateTime | None = None


class PlannedObject(StrictModel):
    key: ObjectKey
    lineage: str
    thread: int
    sequence: int
    first: Position | None = None
    next: Position | None = None
    size_bytes: int | None = None
    crc32c: str | None = None


class RestorePlanReply(StrictModel):
    """Exactly what a restore to `target` needs, as typed facts: the base, every log object in
    order, the lineage and the target. Only the engine turns them into its own words (RMAN's
    `SET UNTIL`, PostgreSQL's `recovery_target_*`): the catalog knows positions and lineages,
    not recovery syntax."""

    database: DatabaseUid
    target: RestoreTarget
    lineage: str
    base: BackupView
    objects: list[PlannedObject]
    total_bytes: int


class RetentionPreview(StrictModel):
    database: DatabaseUid
    keep_from: datetime
    delete_backups: list[BackupId]
    keep_backups: list[BackupId]
    delete_logs: int
    delete_bytes: int
    oldest_kept_base: BackupId | None = None
    note: str = ""


class WindowsRequest(StrictModel):
    database: DatabaseUid


class RetentionRequest(StrictModel):
    database: DatabaseUid
    keep_days: float = Field(ge=0, le=36500)


class DatabasesRequest(StrictModel):
    pass


class DatabasesReply(StrictModel):
    databases: list[DatabaseSummary]


class QueryError(StrictModel):
    """What a refused query says: an HTTP-like status and exactly what was wrong."""

    status: int
    error: str
    check: CheckReply | None = None
