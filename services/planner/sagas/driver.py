"""The saga driver: one loop that moves any kind of saga from phase to phase.

A kind (a restore, a migration) says, for the phase its record is in, what happens next — an
`Outcome` — and the driver writes it with compare-and-set and goes on until the saga waits for
something or ends:

    Move(to)      the phase is done: transition (refused unless the kind's table allows it)
    Update(...)   facts learned, same phase (a job dispatched, a round counted): write, go on
    Wait(reason)  a gate not held long enough, a window not open: record why, and stop
    Idle()        waiting for an event (a job's end): stop, the event advances it again

The driver also owns what every kind gets for free: pause after a named phase and resume,
cancel, resume of every unfinished saga after a planner restart, and the map from a job id to
the saga that dispatched it. A `Refused` raised by a step fails the saga through the kind's
own `fail` (which knows whether that is a rejection or a failure to announce).
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol

from services.planner.errors import FINISHED, Refusal, Refused
from services.planner.sagas.record import SagaRecord, SagaRef, Waiting, transition
from services.planner.sagas.store import until_written
from services.planner.store import Conflict, PlanStore, Versioned

log = logging.getLogger("tidemark.planner")


@dataclass(frozen=True)
class Move:
    to: Any
    changes: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Update:
    changes: dict[str, Any]


@dataclass(frozen=True)
class Wait:
    reason: str
    until: datetime | None = None
    changes: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Idle:
    pass


Outcome = Move | Update | Wait | Idle


class SagaKind(Protocol):
    """What a kind of saga tells the driver. One module per kind, registered with the driver."""

    @property
    def kind(self) -> str: ...

    @property
    def record(self) -> type[SagaRecord[Any]]: ...

    @property
    def prefix(self) -> str:
        """Key prefix of its records in `tm_plans` (ends with a dot)."""
        ...

    def key(self, saga_id: uuid.UUID) -> str: ...

    async def step(self, record: Any, revision: int) -> Outcome:
        """What the record's phase does next. May publish (under deterministic ids), may raise
        `Refused` (the saga fails) or `Conflict` (its own write lost: the driver re-reads)."""
        ...

    async def fail(self, record: Any, revision: int, refusal: Refusal) -> None:
        """End the saga as failed and announce it (a refusal before anything changed, or a
        failure after)."""
        ...

    async def announce(self, record: Any) -> None:
        """What a final record owes the world, published again under the same ids."""
        ...


def job_key(job_id: uuid.UUID) -> str:
    return f"job.{job_id}"


class SagaDriver:
    def __init__(self, plans: PlanStore, now: Any, kinds: Iterable[SagaKind] = ()) -> None:
        self.plans = plans
        self.now = now
        self.kinds: dict[str, SagaKind] = {}
        for kind in kinds:
            self.register(kind)

    def register(self, kind: SagaKind) -> None:
        if kind.kind in self.kinds:
            raise ValueError(f"saga kind {kind.kind!r} is registered twice")
        self.kinds[kind.kind] = kind

    def kind_of(self, ref: SagaRef) -> SagaKind:
        try:
            return self.kinds[ref.kind]
        except KeyError:
            raise LookupError(f"no saga kind {ref.kind!r} is registered") from None

    async def load(self, ref: SagaRef) -> Versioned[Any] | None:
        kind = self.kind_of(ref)
        return await self.plans.get(kind.key(ref.id), kind.record)

    async def write(
        self, kind: SagaKind, record: SagaRecord[Any], revision: int, to: Any, **changes: Any
    ) -> Any:
        """Move `record` to `to` on the table, conditional on `revision`."""
        moved = transition(record, to, self.now(), **changes)
        await self.plans.update(kind.key(record.saga_id), moved, last=revision)
        log.info("%s %s: %s → %s", kind.kind, record.saga_id, record.phase, to)
        if moved.paused and not record.paused:
            log.info("%s %s paused after %s", kind.kind, record.saga_id, to)
        return moved

    async def advance(self, ref: SagaRef) -> Any:
        """Run the saga's next steps until it waits, is paused, or ends."""
        kind = self.kind_of(ref)
        while True:
            current = await self.load(ref)
            if current is None:
                return None
            record, revision = current.value, current.revision
            try:
                if record.final:
                    await kind.announce(record)
                    return record
                if record.paused:
                    return record
                outcome = await kind.step(record, revision)
                if isinstance(outcome, Idle):
                    return record
                if isinstance(outcome, Move):
                    await self.write(kind, record, revision, outcome.to, **outcome.changes)
                elif isinstance(outcome, Update):
                    updated = record.model_copy(
                        update={**outcome.changes, "updated_at": self.now()}
                    )
                    await self.plans.update(kind.key(record.saga_id), updated, last=revision)
                else:
                    return await self._wait(kind, record, revision, outcome)
            except Conflict:
                continue  # someone else moved it: re-read
            except Refused as refused:
                await kind.fail(record, revision, refused.refusal)

    async def _wait(
        self, kind: SagaKind, record: SagaRecord[Any], revision: int, wait: Wait
    ) -> SagaRecord[Any]:
        previous = record.waiting
        same = previous is not None and (previous.reason, previous.until) == (
            wait.reason,
            wait.until,
        )
        since = previous.since if same and previous is not None else self.now()
        waiting = Waiting(reason=wait.reason, since=since, until=wait.until)
        if same and not wait.changes:
            return record  # nothing new to record: no write per re-check
        updated = record.model_copy(
            update={**wait.changes, "waiting": waiting, "updated_at": self.now()}
        )
        await self.plans.update(kind.key(record.saga_id), updated, last=revision)
        if not same:
            log.info("%s %s waits: %s", kind.kind, record.saga_id, wait.reason)
        return updated

    # -- pause and resume ------------------------------------------------------------------

    async def pause(self, ref: SagaRef, after: str | None = None) -> Any:
        """Pause now (`after` None) or once the saga has entered phase `after`."""
        return await self._set(ref, pause_after=after, paused=after is None)

    async def resume(self, ref: SagaRef) -> Any:
        """Lift a pause and go on from where the saga stands."""
        record = await self._set(ref, pause_after=None, paused=False)
        if record is None:
            return None
        return await self.advance(ref)

    async def _set(self, ref: SagaRef, **changes: Any) -> Any:
        kind = self.kind_of(ref)

        async def attempt() -> Any:
            current = await self.load(ref)
            if current is None:
                return None
            record = current.value
            if record.final:
                raise Refused(
                    Refusal(
                        f"{ref} already {record.phase}; it cannot be paused or resumed", FINISHED
                    )
                )
            updated = record.model_copy(update={**changes, "updated_at": self.now()})
            await self.plans.update(kind.key(ref.id), updated, last=current.revision)
            return updated

        return await until_written(attempt, str(ref))

    # -- jobs ------------------------------------------------------------------------------

    async def bind_job(self, ref: SagaRef, job_id: uuid.UUID) -> None:
        """Remember which saga a job belongs to, before the job is sent: its events find the
        saga by job id, whichever database they name. Binding again (a redo) is a no-op."""
        try:
            await self.plans.create(job_key(job_id), ref)
        except Conflict:
            held = await self.plans.get(job_key(job_id), SagaRef)
            if held is not None and held.value != ref:
                raise RuntimeError(f"job {job_id} already belongs to {held.value}") from None

    async def owner_of(self, job_id: uuid.UUID) -> SagaRef | None:
        found = await self.plans.get(job_key(job_id), SagaRef)
        return found.value if found else None

    # -- after a restart -------------------------------------------------------------------

    async def resume_all(self) -> int:
        """Advance every unfinished saga of every kind. Returns how many were found."""
        found = 0
        for kind in self.kinds.values():
            for key in await self.plans.keys(kind.prefix):
                try:
                    saga_id = uuid.UUID(key.removeprefix(kind.prefix))
                except ValueError:
                    continue
                ref = SagaRef(kind=kind.kind, id=saga_id)
                current = await self.load(ref)
                if current is None or current.value.final:
                    continue
                found += 1
                try:
                    await self.advance(ref)
                except Exception as exc:  # one stuck saga must not keep the others from resuming
                    log.warning("resuming %s failed (will retry on redelivery): %s", ref, exc)
        if found:
            log.info("resumed %d sagas", found)
        return found
