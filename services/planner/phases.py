"""The restore saga's phases, as data: an enum and one table of allowed transitions; the one
function that moves a record from phase to phase is the saga machinery's (`sagas.record`).

    checking ──▶ planning ──▶ dispatched ──▶ running ──▶ completed
        │            │            │             │
        └────────────┴────────────┴─────────────┴──────▶ failed

`dispatched` may go straight to `completed` or `failed`: job events can overtake each other
(a fast job's `job.succeeded` may be handled before its `job.accepted`), and the saga must not
wait for an event that will never come after the end.
"""

from __future__ import annotations

import uuid
from enum import StrEnum
from typing import Any, ClassVar

from pydantic import Field

from schemas import DatabaseRef, Position
from schemas.messages import RequestRestore, RestoreCompleted, RestorePlan
from services.planner.sagas.record import SagaRecord, transition
from services.runtime.phases import IllegalTransition, Transitions


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


TRANSITIONS = Transitions[RestorePhase](
    {
        RestorePhase.CHECKING: frozenset({RestorePhase.PLANNING, RestorePhase.FAILED}),
        RestorePhase.PLANNING: frozenset({RestorePhase.DISPATCHED, RestorePhase.FAILED}),
        RestorePhase.DISPATCHED: frozenset(
            {RestorePhase.RUNNING, RestorePhase.COMPLETED, RestorePhase.FAILED}
        ),
        RestorePhase.RUNNING: frozenset({RestorePhase.COMPLETED, RestorePhase.FAILED}),
        RestorePhase.COMPLETED: frozenset(),
        RestorePhase.FAILED: frozenset(),
    }
)

FINAL = TRANSITIONS.final


class RestoreRecord(SagaRecord[RestorePhase]):
    """One restore saga, as kept in `restore.<restore_id>` and updated by compare-and-set."""

    KIND: ClassVar[str] = "restore"
    PHASES: ClassVar[Transitions[Any]] = TRANSITIONS

    restore_id: uuid.UUID
    command_id: uuid.UUID
    correlation_id: uuid.UUID
    database: DatabaseRef
    request: RequestRestore
    node: str | None = None
    job_id: uuid.UUID | None = None
    plan: RestorePlan | None = None
    sent: bool = Field(default=False, description="restore.run and the answers are published")
    refused: bool = Field(default=False, description="failed before dispatch: a rejection")
    completed: RestoreCompleted | None = None
    reached: Position | None = None
    percent: float | None = None

    @property
    def saga_id(self) -> uuid.UUID:
        return self.restore_id


__all__ = [
    "FINAL",
    "TRANSITIONS",
    "IllegalTransition",
    "RestorePhase",
    "RestoreRecord",
    "transition",
]
