"""Restores: to a time, a position, a transaction, a named point, or the earliest consistent
moment; in place or into a new instance (a clone)."""

from __future__ import annotations

import re
import uuid
from enum import StrEnum
from typing import Annotated, ClassVar, Literal

from pydantic import Field, StringConstraints, model_validator

from schemas._base import NodeName, ObjectKey, StrictModel, UtcDateTime
from schemas.envelope import Command, Event
from schemas.messages.common import AbsPath, BackupId, Failure, Percent, Port, Reason
from schemas.positions import Lineage, Position


class TargetTime(StrictModel):
    kind: Literal["time"] = "time"
    at: UtcDateTime


class TargetPosition(StrictModel):
    """An SCN (Oracle `SET UNTIL SCN`, exclusive) or LSN (`recovery_target_lsn`)."""

    kind: Literal["position"] = "position"
    position: Position


class TargetXid(StrictModel):
    """PostgreSQL `recovery_target_xid`."""

    kind: Literal["xid"] = "xid"
    xid: int = Field(ge=3, lt=1 << 64)


class TargetName(StrictModel):
    """PostgreSQL restore point (`pg_create_restore_point`) or Oracle guaranteed restore point."""

    kind: Literal["name"] = "name"
    name: Annotated[str, StringConstraints(pattern=r"^[A-Za-z][A-Za-z0-9_]{0,62}$")]


class TargetImmediate(StrictModel):
    """Stop as soon as the base backup is consistent."""

    kind: Literal["immediate"] = "immediate"


class TargetSequence(StrictModel):
    """Oracle `SET UNTIL SEQUENCE s THREAD t` (exclusive of s)."""

    kind: Literal["sequence"] = "sequence"
    thread: int = Field(ge=1, le=65535)
    sequence: int = Field(ge=1)


RestoreTarget = Annotated[
    TargetTime | TargetPosition | TargetXid | TargetName | TargetImmediate | TargetSequence,
    Field(discriminator="kind"),
]


class RestoreMode(StrEnum):
    IN_PLACE = "in_place"
    CLONE = "clone"


class CloneSpec(StrictModel):
    """Where a clone goes: a new data directory and port, on a named node or the source's."""

    data_dir: AbsPath
    port: Port
    node: NodeName | None = None


_SETTING_NAME = re.compile(r"[a-z][a-z_]{0,62}")


class RestorePlan(StrictModel):
    """What the catalog says the restore needs, in order."""

    base_backup_id: BackupId
    base_manifest_key: ObjectKey
    log_keys: list[ObjectKey] = Field(default_factory=list)
    lineage: Lineage
    recovery: dict[str, Annotated[str, StringConstraints(max_length=200)]] = Field(
        default_factory=dict,
        description="PostgreSQL recovery settings that override the engine's own translation "
        "of the target (recovery_target_* names only); empty from the planner, which leaves "
        "the translation of the target and lineage to the engine",
    )

    @model_validator(mode="after")
    def _setting_names(self) -> RestorePlan:
        for name in self.recovery:
            if not _SETTING_NAME.fullmatch(name):
                raise ValueError(f"recovery setting name {name!r} is not a lower_snake name")
        return self


def _check_mode(mode: RestoreMode, clone: CloneSpec | None) -> None:
    if mode is RestoreMode.CLONE and clone is None:
        raise ValueError("a clone restore needs `clone` (data_dir and port)")
    if mode is RestoreMode.IN_PLACE and clone is not None:
        raise ValueError("`clone` is only for mode=clone")


class RequestRestore(Command):
    TYPE: ClassVar[str] = "restore.request"
    SUBJECT: ClassVar[str] = "tm.cmd.planner.any.restore"
    SUMMARY: ClassVar[str] = "Ask the planner to restore a database to a target."

    target: RestoreTarget
    lineage: Lineage | None = Field(default=None, description="default: the current lineage")
    mode: RestoreMode = RestoreMode.IN_PLACE
    clone: CloneSpec | None = None
    reason: Reason = "on request"

    @model_validator(mode="after")
    def _mode(self) -> RequestRestore:
        _check_mode(self.mode, self.clone)
        return self


class RunRestore(Command):
    TYPE: ClassVar[str] = "restore.run"
    SUBJECT: ClassVar[str] = "tm.cmd.executor.{node}.restore"
    SUMMARY: ClassVar[str] = "Restore on the node that hosts the database (or the clone's node)."

    job_id: uuid.UUID
    restore_id: uuid.UUID
    target: RestoreTarget
    mode: RestoreMode
    clone: CloneSpec | None = None
    plan: RestorePlan

    @model_validator(mode="after")
    def _mode(self) -> RunRestore:
        _check_mode(self.mode, self.clone)
        return self


class RestoreRequested(Event):
    TYPE: ClassVar[str] = "restore.requested"
    SUBJECT: ClassVar[str] = "tm.evt.restore.requested.{database}"
    SUMMARY: ClassVar[str] = "The planner accepted a restore; the target was checked."

    restore_id: uuid.UUID
    target: RestoreTarget
    mode: RestoreMode
    clone: CloneSpec | None = None
    reason: Reason


class RestoreProgress(Event):
    TYPE: ClassVar[str] = "restore.progress"
    SUBJECT: ClassVar[str] = "tm.evt.restore.progress.{database}"
    SUMMARY: ClassVar[str] = "A restore moved to a new phase or made progress."

    restore_id: uuid.UUID
    phase: Annotated[str, StringConstraints(pattern=r"^[a-z][a-z_]{0,39}$")]
    percent: Percent | None = None
    message: Annotated[str, StringConstraints(max_length=500)] = ""


class RestoreCompleted(Event):
    TYPE: ClassVar[str] = "restore.completed"
    SUBJECT: ClassVar[str] = "tm.evt.restore.completed.{database}"
    SUMMARY: ClassVar[str] = "A restore reached its target and the database is open."

    restore_id: uuid.UUID
    target: RestoreTarget
    reached: Position
    reached_time: UtcDateTime | None = None
    lineage: Lineage = Field(description="the new lineage the database opened on")


class RestoreFailed(Event):
    TYPE: ClassVar[str] = "restore.failed"
    SUBJECT: ClassVar[str] = "tm.evt.restore.failed.{database}"
    SUMMARY: ClassVar[str] = "A restore was refused or did not reach its target."

    restore_id: uuid.UUID
    failure: Failure
