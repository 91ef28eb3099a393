"""Backups: requested by a user or a policy, run by an executor, completed or failed."""

from __future__ import annotations

import uuid
from enum import StrEnum
from typing import ClassVar

from pydantic import Field, model_validator

from schemas._base import BackupTag, NodeName, ObjectKey, StrictModel, UtcDateTime
from schemas.envelope import Command, Event
from schemas.messages.common import BackupId, Compression, Failure, Reason
from schemas.positions import Lineage, Position


class BackupKind(StrEnum):
    """Full: a restore base on its own (RMAN level 0, a PostgreSQL base backup).
    Incremental: RMAN level 1 on top of a level 0. Snapshot: storage snapshots in backup mode."""

    FULL = "full"
    INCREMENTAL = "incremental"
    SNAPSHOT = "snapshot"


class BackupSpec(StrictModel):
    """What kind of backup to take. Engine defaults fill what is left out."""

    kind: BackupKind = BackupKind.FULL
    cumulative: bool = Field(
        default=False, description="RMAN level 1 cumulative (else differential)"
    )
    tag: BackupTag | None = None
    compression: Compression = Compression.NONE

    @model_validator(mode="after")
    def _cumulative_needs_incremental(self) -> BackupSpec:
        if self.cumulative and self.kind is not BackupKind.INCREMENTAL:
            raise ValueError("cumulative applies only to incremental backups")
        return self


class RequestBackup(Command):
    """A platform tool or the CLI asks the planner for a backup now."""

    TYPE: ClassVar[str] = "backup.request"
    SUBJECT: ClassVar[str] = "tm.cmd.planner.any.backup"
    SUMMARY: ClassVar[str] = "Ask the planner for a backup of a database now."

    spec: BackupSpec = Field(default_factory=BackupSpec)
    reason: Reason = "on request"


class RunBackup(Command):
    """The planner tells the executor on the database's node to take a backup."""

    TYPE: ClassVar[str] = "backup.run"
    SUBJECT: ClassVar[str] = "tm.cmd.executor.{node}.backup"
    SUMMARY: ClassVar[str] = "Take a backup on the node that hosts the database."

    job_id: uuid.UUID
    backup_id: BackupId
    spec: BackupSpec
    parent_backup_id: BackupId | None = Field(
        default=None, description="the level 0 an incremental builds on"
    )


class BackupRequested(Event):
    TYPE: ClassVar[str] = "backup.requested"
    SUBJECT: ClassVar[str] = "tm.evt.backup.requested.{database}"
    SUMMARY: ClassVar[str] = "The planner accepted a backup and routed it to a node."

    backup_id: BackupId
    spec: BackupSpec
    node: NodeName
    reason: Reason


class BackupCompleted(Event):
    """A backup is durable in the object store; it is a restore base from `consistent_at` on."""

    TYPE: ClassVar[str] = "backup.completed"
    SUBJECT: ClassVar[str] = "tm.evt.backup.completed.{database}"
    SUMMARY: ClassVar[str] = "A backup and its manifest are durable in the object store."

    backup_id: BackupId
    job_id: uuid.UUID
    spec: BackupSpec
    parent_backup_id: BackupId | None = None
    lineage: Lineage
    start: Position = Field(description="where media recovery starts (min checkpoint / start LSN)")
    consistent_at: Position = Field(
        description="M_B: the highest absolute-fuzzy/checkpoint SCN, or the end LSN; "
        "recovery must reach beyond it"
    )
    started_at: UtcDateTime
    completed_at: UtcDateTime
    size_bytes: int = Field(ge=0)
    piece_count: int = Field(ge=0)
    manifest_key: ObjectKey

    @model_validator(mode="after")
    def _ordered(self) -> BackupCompleted:
        if self.start.kind != self.consistent_at.kind:
            raise ValueError("start and consistent_at must be the same kind of position")
        if self.consistent_at < self.start:
            raise ValueError("consistent_at must not precede start")
        if self.completed_at < self.started_at:
            raise ValueError("completed_at must not precede started_at")
        return self


class BackupFailed(Event):
    TYPE: ClassVar[str] = "backup.failed"
    SUBJECT: ClassVar[str] = "tm.evt.backup.failed.{database}"
    SUMMARY: ClassVar[str] = "A backup did not complete; nothing partial is left as a base."

    backup_id: BackupId
    job_id: uuid.UUID | None = None
    failure: Failure


class BackupDeleted(Event):
    """A backup's manifest and pieces are gone from the object store (retention, or a person):
    it is no longer a restore base."""

    TYPE: ClassVar[str] = "backup.deleted"
    SUBJECT: ClassVar[str] = "tm.evt.backup.deleted.{database}"
    SUMMARY: ClassVar[str] = "A backup was removed from the object store; it is no longer a base."

    backup_id: BackupId
    manifest_key: ObjectKey | None = None
    reason: Reason


class RunVerify(Command):
    """The planner asks an executor to prove a backup restorable: restore it into a scratch
    place and check it (PostgreSQL: `pg_verifybackup`, start, a consistency query; Oracle:
    `RESTORE ... VALIDATE`)."""

    TYPE: ClassVar[str] = "backup.verify"
    SUBJECT: ClassVar[str] = "tm.cmd.executor.{node}.verify"
    SUMMARY: ClassVar[str] = "Verify a backup by restoring it somewhere scratch and checking it."

    job_id: uuid.UUID
    backup_id: BackupId
    manifest_key: ObjectKey


class BackupVerified(Event):
    """The outcome of a verification, good or bad: the timeline page shows the latest."""

    TYPE: ClassVar[str] = "backup.verified"
    SUBJECT: ClassVar[str] = "tm.evt.backup.verified.{database}"
    SUMMARY: ClassVar[str] = "A backup was restored to scratch and checked; ok says how it went."

    backup_id: BackupId
    job_id: uuid.UUID
    ok: bool
    checks: list[Reason] = Field(default_factory=list, description="each check and its outcome")
    verified_at: UtcDateTime
