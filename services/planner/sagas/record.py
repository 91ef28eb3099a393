"""What every saga keeps in `tm_plans`, whatever its kind: its phase and the history of how it
got there, the databases it holds, the jobs it ran by step, and whether it is paused or waiting.

A kind's record subclasses `SagaRecord` with its own facts (a restore's plan, a migration's
positions). Records are read tolerantly (`extra="ignore"`): a record written by a newer planner
must not wedge an older one, and new fields always get defaults.
"""

from __future__ import annotations

import uuid
from datetime import datetime
from enum import StrEnum
from typing import Any, ClassVar, Generic, TypeVar

from pydantic import BaseModel, ConfigDict, Field

from schemas import UtcDateTime
from schemas.messages.common import Failure
from services.runtime.phases import Transitions

P = TypeVar("P", bound=StrEnum)


class SagaRef(BaseModel):
    """Which saga: its kind and id. A lock's holder, a job's owner."""

    model_config = ConfigDict(extra="ignore", frozen=True)
    kind: str
    id: uuid.UUID

    def __str__(self) -> str:
        return f"{self.kind} {self.id}"


class PhaseStep(BaseModel, Generic[P]):
    model_config = ConfigDict(extra="ignore")
    phase: P
    at: UtcDateTime


class Waiting(BaseModel):
    """Why a saga is not moving although nothing failed: a gate not yet held long enough, a
    window not yet open. Shown to the user as is."""

    model_config = ConfigDict(extra="ignore")
    reason: str
    since: UtcDateTime
    until: UtcDateTime | None = Field(default=None, description="when it may move, if known")


class SagaRecord(BaseModel, Generic[P]):
    """The fields the saga machinery reads and writes. A kind adds its own."""

    model_config = ConfigDict(extra="ignore")

    KIND: ClassVar[str]
    PHASES: ClassVar[Transitions[Any]]

    phase: P
    created_at: UtcDateTime
    updated_at: UtcDateTime
    history: list[PhaseStep[P]] = Field(default_factory=list)
    databases: list[str] = Field(
        default_factory=list, description="uids whose locks this saga holds (source, target…)"
    )
    jobs: dict[str, uuid.UUID] = Field(
        default_factory=dict, description="job id by step id: the jobs this saga dispatched"
    )
    failure: Failure | None = None
    pause_after: str | None = Field(
        default=None, description="the phase after which the saga pauses until resumed"
    )
    paused: bool = False
    waiting: Waiting | None = None
    gates: dict[str, datetime] = Field(
        default_factory=dict, description="gate name → since when its condition has held"
    )
    rounds: dict[str, int] = Field(
        default_factory=dict, description="repeated step → rounds completed"
    )

    @property
    def saga_id(self) -> uuid.UUID:
        raise NotImplementedError

    @property
    def ref(self) -> SagaRef:
        return SagaRef(kind=self.KIND, id=self.saga_id)

    @property
    def final(self) -> bool:
        return self.phase in self.PHASES.final


R = TypeVar("R", bound=SagaRecord[Any])


def transition(record: R, to: Any, at: datetime, **changes: Any) -> R:
    """The record moved to `to` (with `changes`), or `IllegalTransition`. A move ends any wait
    and, when `to` is the phase the saga was asked to pause after, pauses it there."""
    record.PHASES.check(f"{record.KIND} {record.saga_id}", record.phase, to)
    update: dict[str, Any] = {
        "waiting": None,
        **changes,
        "phase": to,
        "updated_at": at,
        "history": [*record.history, PhaseStep[Any](phase=to, at=at)],
    }
    if (
        record.pause_after is not None
        and record.pause_after == str(to)
        and to not in record.PHASES.final
    ):
        update["paused"] = True
    return record.model_copy(update=update)
