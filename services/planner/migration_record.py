"""The migration saga's record, its phase table, its keys and its codes (the saga's steps are
`migrations.py`, its control commands' decisions `migration_control.py`)."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any, ClassVar

from pydantic import Field

from schemas import DatabaseRef
from schemas.messages import (
    CutoverStep,
    MigrationMethod,
    MigrationPhase,
    MigrationProgress,
    MigrationStepResult,
    PhaseVisit,
    RequestMigration,
)
from schemas.messages.common import Failure
from schemas.messages.migrations import PHASE_ORDER
from services.planner.sagas import SagaRecord
from services.runtime.phases import Transitions

P = MigrationPhase

CODE_PREFLIGHT = "TM-MIG-PREFLIGHT"
CODE_METHOD = "TM-MIG-METHOD"
CODE_STATE = "TM-MIG-STATE"
CODE_STEP = "TM-MIG-STEP-FAILED"
CODE_PARITY = "TM-MIG-PARITY"
CODE_WINDOW = "TM-MIG-WINDOW-PASSED"
CODE_DRAIN = "TM-MIG-DRAIN"

CODE_DDL = "TM-MIG-DDL"


@dataclass(frozen=True)
class MethodSteps:
    """Which executor steps a method's phases run (the phases themselves are every method's).

    A method without `copy` has nothing to copy before the cutover, and without `lag` nothing
    streams: it is ready as soon as it is prepared, and its whole copy is downtime (`dump`).
    """

    prepare: bool
    """`preparing` runs `migration.prepare` (a new cluster, roles, schema) on the target."""
    copy: bool
    """`copying` runs `migration.copy`."""
    lag: bool
    """`catching_up` and `ready` sample `migration.lag` and hold its gate."""
    parity: bool
    """`verify_positions` runs `migration.parity` (rows, objects, sequences) on the target;
    without it the target's replayed position is checked against the source's final one, and
    `verifying` checks the target is the source's system (a physical copy)."""
    schema_watch: bool
    """The source's schema signature (from `prepare`) is compared at every lag sample and at
    parity: a DDL during the migration stops it (logical replication carries rows only)."""
    builds_target: bool = True
    """The target is a new database the method builds, so one an executor already hosts is
    refused at intake; `datapump` imports schemas into a database that exists (its preflight
    refuses a schema already there), `dataguard` duplicates onto an instance declared on the
    target's node and started NOMOUNT (its preflight refuses a database that exists)."""
    roles: bool = False
    """`verifying` also checks the roles the promote read back from both sides: the target
    PRIMARY and open READ WRITE, the old source a PHYSICAL STANDBY with Redo Apply running
    (the way back a switchover back needs)."""


PHYSICAL = MethodSteps(prepare=False, copy=True, lag=True, parity=False, schema_watch=False)
METHOD_STEPS: dict[MigrationMethod, MethodSteps] = {
    MigrationMethod.PHYSICAL_STREAM: PHYSICAL,
    MigrationMethod.PHYSICAL_ARCHIVE: PHYSICAL,
    # Physical, from the archive: the target is an instance declared on its node (its home and
    # SID) that holds no database; the rman preflight refuses one that does.
    MigrationMethod.RMAN: MethodSteps(
        prepare=False, copy=True, lag=True, parity=False, schema_watch=False, builds_target=False
    ),
    MigrationMethod.LOGICAL_UPGRADE: MethodSteps(
        prepare=True, copy=True, lag=True, parity=True, schema_watch=True
    ),
    MigrationMethod.DUMP: MethodSteps(
        prepare=True, copy=False, lag=False, parity=True, schema_watch=False
    ),
    MigrationMethod.DATAPUMP: MethodSteps(
        prepare=True, copy=False, lag=False, parity=True, schema_watch=False, builds_target=False
    ),
    # Physical (copy, then a lag gate, no parity): the standby is the source's own database.
    MigrationMethod.DATAGUARD: MethodSteps(
        prepare=False,
        copy=True,
        lag=True,
        parity=False,
        schema_watch=False,
        builds_target=False,
        roles=True,
    ),
}
"""The methods the saga runs, each a row of steps; the others are refused at intake."""

METHODS_BUILT: frozenset[MigrationMethod] = frozenset(METHOD_STEPS)

STEP_ATTEMPTS = 5
"""Runs of one step while its failure is retryable (or the executor was restarted under it)."""

CUTOVER_OVERHEAD_S = 2.0
"""What a cutover costs beyond the lag it must replay (the clean stop's checkpoint, the promote,
three step round trips), for the downtime estimate; `make bench-migrate` measures the truth."""

TABLE = Transitions[MigrationPhase](
    {
        P.VALIDATING: frozenset({P.PREPARING, P.FAILED, P.ABORTED}),
        P.PREPARING: frozenset({P.COPYING, P.FAILED, P.ABORTED}),
        P.COPYING: frozenset({P.CATCHING_UP, P.FAILED, P.ABORTED}),
        P.CATCHING_UP: frozenset({P.READY, P.FAILED, P.ABORTED}),
        P.READY: frozenset({P.CUTTING_OVER, P.FAILED, P.ABORTED}),
        P.CUTTING_OVER: frozenset({P.READY, P.VERIFYING, P.FAILED, P.ABORTED, P.ROLLED_BACK}),
        P.VERIFYING: frozenset({P.COMPLETED, P.FAILED, P.ROLLED_BACK}),
        P.COMPLETED: frozenset(),
        P.FAILED: frozenset(),
        P.ABORTED: frozenset(),
        P.ROLLED_BACK: frozenset(),
    }
)
"""`cutting_over → ready`: a drain that timed out or was refused; nothing was fenced."""


def migration_key(migration_id: uuid.UUID) -> str:
    return f"migration.{migration_id}"


def source_claim_key(uid: str) -> str:
    """One migration per source at a time: created at intake, deleted when it ends."""
    return f"migrating.{uid}"


class MigrationRecord(SagaRecord[MigrationPhase]):
    """One migration, as kept in `migration.<id>`."""

    KIND: ClassVar[str] = "migration"
    PHASES: ClassVar[Transitions[Any]] = TABLE

    migration_id: uuid.UUID
    command_id: uuid.UUID
    correlation_id: uuid.UUID
    source: DatabaseRef
    source_node: str
    request: RequestMigration
    step: CutoverStep | None = None
    results: dict[str, MigrationStepResult] = Field(default_factory=dict)
    pending: dict[str, uuid.UUID] = Field(
        default_factory=dict, description="step → job id in flight"
    )
    attempts: dict[str, int] = Field(default_factory=dict)
    progress: MigrationProgress = Field(default_factory=MigrationProgress)
    visits: list[PhaseVisit] = Field(default_factory=list)
    announced: str | None = None
    accepted: bool = False
    pause_point: MigrationPhase | None = None
    paused_for: MigrationPhase | None = None
    point_of_no_return_passed: bool = False
    cutover_requested: bool = False
    abort_reason: str | None = None
    rollback_reason: str | None = None
    failing: Failure | None = None
    drain_deadline: datetime | None = None
    acks: dict[str, bool] = Field(default_factory=dict)
    source_locked: bool = False
    cancelled: list[uuid.UUID] = Field(default_factory=list)
    lag_sample: tuple[datetime, int] | None = None
    refused: bool = False
    unfence_failed: bool = False
    failure_held: bool = False
    final_announced: bool = Field(
        default=False, description="every event a final record owes was published"
    )

    @property
    def saga_id(self) -> uuid.UUID:
        return self.migration_id

    @property
    def target(self) -> str:
        return self.request.target

    @property
    def target_node(self) -> str:
        return self.request.target_instance.node

    def touched(self) -> bool:
        """Has anything been changed on either side (a copy started, a fence raised)?"""
        return any(k in self.results or k in self.pending for k in ("prepare", "copy", "fence"))

    @property
    def steps(self) -> MethodSteps:
        return METHOD_STEPS[self.request.method]


def next_phase(phase: MigrationPhase) -> MigrationPhase | None:
    order = list(PHASE_ORDER)
    return order[order.index(phase) + 1] if phase in order[:-1] else None
