"""The restore saga's phases, as data: an enum, one table of allowed transitions, and the one
function that moves a record from phase to phase.

    checking ──▶ planning ──▶ dispatched ──▶ running ──▶ completed
        │            │            │             │
        └────────────┴────────────┴─────────────┴──────▶ failed

`dispatched` may go straight to `completed` or `failed`: job events can overtake each other
(a fast job's `job.succeeded` may be handled before its `job.accepted`), and the saga must not
wait for an event that will never come after the end.
"""

from __future__ import annotations

import uuid
from datetime import datetime
from enum import StrEnum
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from schemas import DatabaseRef, Position, UtcDateTime
from schemas.messages import RequestRestore, RestoreCompleted, RestorePlan
from schemas.messages.common import Failure


class RestorePhase(StrEnum):
    CHECKING = "checking"
    """Asking the catalog whether the target is inside a restorable window. Nothing has been
    changed; a refusal here is a `request.rejected`."""
    PLANNING = "planning"
    """The target is restorable; asking the catalog for the exact plan, choosing the node and
    taking the database's lock. A refusal here is still a `request.rejected`."""
    DISPATCHED = "dispatched"
    """`restore.run` is (being) sent to the node; the request was accepted. From here on the
    database is being changed, so a failure is `restore.failed`, never a rejection."""
    RUNNING = "running"
    """The executor took the job and reports progress."""
    COMPLETED = "completed"
    """The job succeeded (or the executor said `restore.completed`). Terminal: a late
    `job.failed` after this is an executor bug to be logged, not a reason to rewrite history."""
    FAILED = "failed"
    """Refused, failed, or cancelled. Terminal: a retry is a new request with a new id, so the
    record of this attempt stays what it was."""


TRANSITIONS: dict[RestorePhase, frozenset[RestorePhase]] = {
    RestorePhase.CHECKING: frozenset({RestorePhase.PLANNING, RestorePhase.FAILED}),
    RestorePhase.PLANNING: frozenset({RestorePhase.DISPATCHED, RestorePhase.FAILED}),
    RestorePhase.DISPATCHED: frozenset(
        {RestorePhase.RUNNING, RestorePhase.COMPLETED, RestorePhase.FAILED}
    ),
    RestorePhase.RUNNING: frozenset({RestorePhase.COMPLETED, RestorePhase.FAILED}),
    RestorePhase.COMPLETED: frozenset(),
    RestorePhase.FAILED: frozenset(),
}

FINAL = frozenset(p for p, after in TRANSITIONS.items() if not after)


class IllegalTransition(Exception):
    def __init__(self, restore_id: uuid.UUID, src: RestorePhase, dst: RestorePhase) -> None:
        super().__init__(f"restore {restore_id}: {src.value} → {dst.value} is not allowed")
        self.src = src
        self.dst = dst


class PhaseStep(BaseModel):
    model_config = ConfigDict(extra="ignore")
    phase: RestorePhase
    at: UtcDateTime


class RestoreRecord(BaseModel):
    """One restore saga, as kept in `restore.<restore_id>` and updated by compare-and-set."""

    model_config = ConfigDict(extra="ignore")

    restore_id: uuid.UUID
    command_id: uuid.UUID
    correlation_id: uuid.UUID
    database: DatabaseRef
    request: RequestRestore
    phase: RestorePhase
    node: str | None = None
    job_id: uuid.UUID | None = None
    plan: RestorePlan | None = None
    sent: bool = Field(default=False, description="restore.run and the answers are published")
    refused: bool = Field(default=False, description="failed before dispatch: a rejection")
    failure: Failure | None = None
    completed: RestoreCompleted | None = None
    reached: Position | None = None
    percent: float | None = None
    created_at: UtcDateTime
    updated_at: UtcDateTime
    history: list[PhaseStep] = Field(default_factory=list)

    @property
    def final(self) -> bool:
        return self.phase in FINAL


def transition(
    record: RestoreRecord, to: RestorePhase, at: datetime, **changes: Any
) -> RestoreRecord:
    """The record moved to `to` (with `changes`), or `IllegalTransition`."""
    if to not in TRANSITIONS[record.phase]:
        raise IllegalTransition(record.restore_id, record.phase, to)
    return record.model_copy(
        update={
            **changes,
            "phase": to,
            "updated_at": at,
            "history": [*record.history, PhaseStep(phase=to, at=at)],
        }
    )
