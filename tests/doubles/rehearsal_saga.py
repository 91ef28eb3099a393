"""A saga kind that exists only for the tests: a migration's shape without a database.

It exercises every piece of the saga machinery the way a migration will — two databases locked
for its whole life, a step repeated in rounds until it converges, a gate that must hold for a
while, a step allowed only inside a window, pause after a named phase — while its "world" is a
labeled in-memory stand-in (`World`) for the engine, because the machinery is what is under
test. It is also the worked example of "a new saga kind is one module plus its registration":
this module, and one `driver.register(Rehearsal(...))`.

    preparing ──▶ copying ⟲ (rounds until converged) ──▶ ready ──▶ cutting_over ──▶ completed
        └────────────┴──────────────────────────────────────┴─────────┴──────────▶ failed
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from datetime import timedelta
from enum import StrEnum
from typing import Any, ClassVar

from schemas.messages.common import Failure
from services.planner.errors import Refusal, Refused
from services.planner.locks import release_locks, take_locks
from services.planner.records import Lock
from services.planner.sagas import (
    Idle,
    Move,
    Outcome,
    SagaDriver,
    SagaRecord,
    TimeWindow,
    Update,
    Wait,
    check_gate,
    check_windows,
    round_finished,
    round_ref,
    step_ref,
)
from services.planner.store import PlanStore
from services.runtime.phases import Transitions


class Phase(StrEnum):
    PREPARING = "preparing"
    """Both databases' locks are being taken; nothing else has happened."""
    COPYING = "copying"
    """Rounds of copying, each its own id, until the world says the copy has converged."""
    READY = "ready"
    """Waiting for the lag gate to hold for the hold time."""
    CUTTING_OVER = "cutting_over"
    """Cutting over, only inside a window."""
    COMPLETED = "completed"
    """Done; the locks are released."""
    FAILED = "failed"
    """Refused or failed; the locks are released."""


TABLE = Transitions[Phase](
    {
        Phase.PREPARING: frozenset({Phase.COPYING, Phase.FAILED}),
        Phase.COPYING: frozenset({Phase.READY, Phase.FAILED}),
        Phase.READY: frozenset({Phase.CUTTING_OVER, Phase.FAILED}),
        Phase.CUTTING_OVER: frozenset({Phase.COMPLETED, Phase.FAILED}),
        Phase.COMPLETED: frozenset(),
        Phase.FAILED: frozenset(),
    }
)


class RehearsalRecord(SagaRecord[Phase]):
    KIND: ClassVar[str] = "rehearsal"
    PHASES: ClassVar[Transitions[Any]] = TABLE

    rehearsal_id: uuid.UUID
    source: str
    target: str
    lag_budget: int
    hold_s: float
    windows: list[TimeWindow] = []

    @property
    def saga_id(self) -> uuid.UUID:
        return self.rehearsal_id


@dataclass
class World:
    """In-memory stand-in for the engine (labeled: not a database). Records every id it was
    asked to act under, so a test can see a redo reuse an id and a new round get a new one."""

    rounds_to_converge: int = 3
    lag: int = 10_000
    round_ids: list[uuid.UUID] = field(default_factory=list)
    cutovers: list[uuid.UUID] = field(default_factory=list)

    def run_round(self, round_id: uuid.UUID) -> bool:
        if round_id not in self.round_ids:
            self.round_ids.append(round_id)
        return len(self.round_ids) >= self.rounds_to_converge


class Rehearsal:
    kind = RehearsalRecord.KIND
    record = RehearsalRecord
    prefix = "rehearsal."

    def __init__(self, plans: PlanStore, driver: SagaDriver, world: World) -> None:
        self.plans = plans
        self.driver = driver
        self.world = world

    def key(self, saga_id: uuid.UUID) -> str:
        return f"{self.prefix}{saga_id}"

    def lock(self, record: RehearsalRecord) -> Lock:
        return Lock(
            kind=self.kind,
            holder=record.ref,
            job_id=step_ref(record.saga_id, "lock"),
            node="-",
            command_id=record.saga_id,
            taken_at=record.created_at,
        )

    async def step(self, record: RehearsalRecord, revision: int) -> Outcome:
        now = self.driver.now()
        if record.phase is Phase.PREPARING:
            databases = [record.source, record.target]
            await take_locks(self.plans, databases, self.lock(record))
            return Move(Phase.COPYING, {"databases": databases})
        if record.phase is Phase.COPYING:
            converged = self.world.run_round(round_ref(record, "copy"))
            changes = round_finished(record, "copy")
            return Move(Phase.READY, changes) if converged else Update(changes)
        if record.phase is Phase.READY:
            gate = check_gate(
                record,
                "lag",
                holds=self.world.lag <= record.lag_budget,
                hold=timedelta(seconds=record.hold_s),
                now=now,
            )
            if gate.open:
                return Move(Phase.CUTTING_OVER, gate.changes)
            return Wait(
                f"lag {self.world.lag} against a budget of {record.lag_budget}, held for "
                f"{gate.held_for.total_seconds():.0f} of {record.hold_s:.0f} s",
                changes=gate.changes,
            )
        if record.phase is Phase.CUTTING_OVER:
            window = check_windows(record.windows, now)
            if not window.open:
                if window.next_start is None:
                    raise_refusal("every cutover window has passed")
                return Wait("outside its cutover window", until=window.next_start)
            cutover = step_ref(record.saga_id, "cutover")
            if cutover not in self.world.cutovers:
                self.world.cutovers.append(cutover)
            return Move(Phase.COMPLETED)
        return Idle()

    async def fail(self, record: RehearsalRecord, revision: int, refusal: Refusal) -> None:
        failure = Failure(reason=refusal.reason, code=refusal.code)
        await self.driver.write(self, record, revision, Phase.FAILED, failure=failure)
        await self.announce(record)

    async def announce(self, record: RehearsalRecord) -> None:
        await release_locks(self.plans, [record.source, record.target], self.lock(record).job_id)


def raise_refusal(reason: str) -> None:
    raise Refused(Refusal(reason, "TM-PLAN-WINDOW-PASSED"))
