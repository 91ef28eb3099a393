"""Jobs: one engine operation on one node, reported as accepted → progress… → succeeded|failed."""

from __future__ import annotations

import uuid
from typing import Annotated, ClassVar, Literal

from pydantic import Field, StringConstraints

from schemas._base import NodeName, ObjectKey, StrictModel, UtcDateTime
from schemas.envelope import Command, Event
from schemas.messages.common import BackupId, Failure, Operation, Percent, ProgressUnit, Reason
from schemas.messages.migrations import ConnectionEndpoint
from schemas.positions import Lineage, Position

Phase = Annotated[str, StringConstraints(pattern=r"^[a-z][a-z_]{0,39}$")]


class BackupResult(StrictModel):
    kind: Literal["backup"] = "backup"
    backup_id: BackupId
    manifest_key: ObjectKey
    size_bytes: int = Field(ge=0)
    consistent_at: Position


class RestoreResult(StrictModel):
    kind: Literal["restore"] = "restore"
    reached: Position
    reached_time: UtcDateTime | None = None
    lineage: Lineage


class VerifyResult(StrictModel):
    kind: Literal["verify"] = "verify"
    backup_id: BackupId
    ok: bool
    checks: list[Annotated[str, StringConstraints(max_length=200)]] = Field(default_factory=list)


MigrationStepName = Literal[
    "preflight",
    "prepare",
    "copy",
    "lag",
    "fence",
    "unfence",
    "final_sync",
    "parity",
    "promote",
    "rewind",
]
FactValue = Annotated[str, StringConstraints(max_length=500)]


class MigrationStepResult(StrictModel):
    """What one migration step found or did. Only the fields of its step are set; the saga
    reads them (`services/planner/migrations.py`). Times are the executor's clock."""

    kind: Literal["migration"] = "migration"
    step: MigrationStepName
    facts: dict[Annotated[str, StringConstraints(max_length=64)], FactValue] = Field(
        default_factory=dict, max_length=64, description="preflight: what the side is"
    )
    problems: list[FactValue] = Field(
        default_factory=list, max_length=32, description="preflight: why it cannot take part"
    )
    bytes_copied: int | None = Field(default=None, ge=0)
    lag_bytes: int | None = Field(default=None, ge=0)
    lag_seconds: float | None = Field(default=None, ge=0)
    source_position: Position | None = Field(
        default=None, description="lag: the source's current position; fence: its final one"
    )
    target_position: Position | None = Field(
        default=None, description="what the target has replayed (or was opened at)"
    )
    at: UtcDateTime | None = Field(
        default=None, description="fence: when it was raised; promote: when writes were accepted"
    )
    endpoint: ConnectionEndpoint | None = Field(default=None, description="promote, rewind")
    differences: list[FactValue] = Field(
        default_factory=list, max_length=64, description="parity: what differs; empty: it holds"
    )


JobResult = Annotated[
    BackupResult | RestoreResult | VerifyResult | MigrationStepResult,
    Field(discriminator="kind"),
]


class JobAccepted(Event):
    TYPE: ClassVar[str] = "job.accepted"
    SUBJECT: ClassVar[str] = "tm.evt.job.accepted.{database}"
    SUMMARY: ClassVar[str] = "An executor took a command and journaled it."

    job_id: uuid.UUID
    command_id: uuid.UUID
    operation: Operation
    node: NodeName


class JobProgress(Event):
    TYPE: ClassVar[str] = "job.progress"
    SUBJECT: ClassVar[str] = "tm.evt.job.progress.{database}"
    SUMMARY: ClassVar[str] = "A running job's phase and how far it has got."

    job_id: uuid.UUID
    operation: Operation
    phase: Phase
    done: int | None = Field(default=None, ge=0)
    total: int | None = Field(default=None, ge=0)
    unit: ProgressUnit | None = None
    percent: Percent | None = None
    message: Annotated[str, StringConstraints(max_length=500)] = ""


class JobSucceeded(Event):
    TYPE: ClassVar[str] = "job.succeeded"
    SUBJECT: ClassVar[str] = "tm.evt.job.succeeded.{database}"
    SUMMARY: ClassVar[str] = "A job finished; its typed result is attached."

    job_id: uuid.UUID
    operation: Operation
    result: JobResult
    started_at: UtcDateTime
    finished_at: UtcDateTime


class JobFailed(Event):
    TYPE: ClassVar[str] = "job.failed"
    SUBJECT: ClassVar[str] = "tm.evt.job.failed.{database}"
    SUMMARY: ClassVar[str] = "A job failed, was cancelled, or was interrupted by a restart."

    job_id: uuid.UUID
    operation: Operation
    failure: Failure
    interrupted: bool = Field(
        default=False, description="the executor restarted mid-job; nothing is assumed done"
    )


class CancelJob(Command):
    """Stop a running or queued job. A job that already finished is left as it is; the answer
    is the job's own `job.failed` (cancelled) event, or nothing if it had already ended."""

    TYPE: ClassVar[str] = "job.cancel"
    SUBJECT: ClassVar[str] = "tm.cmd.executor.{node}.cancel"
    SUMMARY: ClassVar[str] = "Cancel a job on the node that runs it."

    job_id: uuid.UUID
    reason: Reason = "cancelled on request"
