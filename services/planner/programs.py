"""Migration programs (waves): a list of databases, each moved by its own migration saga with
its own windows, started in list order as slots free up on the source's and the target's node.

    migration.program.request ─▶ every entry checked as its migration request would be
        │                        (a bad entry refuses the whole program, naming its position;
        │                        nothing is started) ─▶ program.<id> created, .accepted
        ▼
    running ─── each tick: the entries whose turn it is and whose two nodes have a free slot
        │       are marked started, then handed to the migration saga's own intake
        │       (`Migrations.request`, under the entry's migration id and a command id derived
        │       from the program's); a migration refused then is that entry's end, not the
        │       program's
        ▼
    finished ── every entry refused or its migration final; .finished lists how each ended

The program only starts migrations; it never steps, pauses or fails one. Once started, an entry
is an ordinary migration with its own windows (the saga cuts over only inside them), its own
control commands and its own failure: a failure of one database stops only that one, and the
others go on. The slot rule is `schedule` (pure; its docstring is the rule).

Not a kind on the saga driver: a program has a name for an id, dispatches no job and has no
step of its own to retry; its record (`program.<id>`, compare-and-set like every plan) moves
only on the clock (`tick`, beside `Migrations.tick()`), which reads each started entry's
migration record. Marking an entry started is written *before* its migration is requested, so a
planner killed between the two requests it again on its next tick (the saga's intake is
idempotent by migration id); it never starts an entry twice under two ids.
"""

from __future__ import annotations

import contextlib
import logging
import uuid
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import ClassVar

from pydantic import BaseModel, ConfigDict, Field

from schemas import DatabaseRef, Envelope, Payload, envelope
from schemas.messages import (
    EntryState,
    MigrationView,
    ProgramAccepted,
    ProgramEntryView,
    ProgramFinished,
    ProgramPhase,
    ProgramRejected,
    ProgramStatusRequest,
    ProgramView,
    RequestMigration,
    RequestMigrationProgram,
)
from schemas.messages.common import Failure
from schemas.messages.programs import ProgramEntry, ProgramEntryOutcome, ProgramEntryRef
from services.planner.context import PlannerContext
from services.planner.errors import BUSY, Refusal, Refused
from services.planner.keys import step_id
from services.planner.migration_record import MigrationRecord, migration_key, source_claim_key
from services.planner.migrations import Migrations
from services.planner.sagas import SagaRef, until_written
from services.planner.store import Conflict
from services.runtime.phases import Transitions

log = logging.getLogger("tidemark.planner")

CODE_EXISTS = "TM-PROG-EXISTS"
"""A program of that name was already requested (by another command): names are used once."""
CODE_ENTRY_USED = "TM-PROG-ID-USED"
"""An entry's migration id is already a migration's."""

PHASES = Transitions[ProgramPhase](
    {
        ProgramPhase.RUNNING: frozenset({ProgramPhase.FINISHED}),
        ProgramPhase.FINISHED: frozenset(),
    }
)


def program_key(program_id: str) -> str:
    return f"program.{program_id}"


class EntryRefused(Refused):
    """An entry refused at the program's intake: the whole program is, naming the entry."""

    def __init__(self, position: int, entry: ProgramEntry, refusal: Refusal) -> None:
        super().__init__(
            Refusal(
                f"entry {position} ({entry.source.uid} → {entry.request.target}): {refusal.reason}",
                refusal.code,
            )
        )
        self.position = position
        self.source = entry.source.uid


class EntryRecord(BaseModel):
    """One entry as the program's record keeps it."""

    model_config = ConfigDict(extra="ignore")

    position: int
    source: DatabaseRef
    source_node: str
    request: RequestMigration
    command_id: uuid.UUID = Field(description="the id its migration request is sent under")
    state: EntryState = EntryState.WAITING
    started_at: datetime | None = None
    refusal: Failure | None = None

    @property
    def target_node(self) -> str:
        return self.request.target_instance.node

    def ref(self) -> ProgramEntryRef:
        return ProgramEntryRef(
            position=self.position,
            source=self.source.uid,
            target=self.request.target,
            migration_id=self.request.migration_id,
        )


class ProgramRecord(BaseModel):
    """One program, as kept in `program.<id>`."""

    model_config = ConfigDict(extra="ignore")
    KIND: ClassVar[str] = "program"

    program_id: str
    command_id: uuid.UUID
    correlation_id: uuid.UUID
    phase: ProgramPhase = ProgramPhase.RUNNING
    max_per_source_node: int
    max_per_target_node: int
    reason: str
    entries: list[EntryRecord]
    created_at: datetime
    updated_at: datetime


# -- the slot rule -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Seat:
    """An entry as the slot rule sees it: its two nodes, and whether it holds their slots
    (started, its migration not final) or waits for them (not started)."""

    position: int
    source_node: str
    target_node: str
    holds: bool = False
    waits: bool = False


@dataclass(frozen=True)
class Schedule:
    starts: list[int] = field(default_factory=list)
    """Positions to start now, in list order."""
    waiting: dict[int, str] = field(default_factory=dict)
    """Position → why it does not start yet (which node is full)."""


def schedule(
    seats: Sequence[Seat], *, max_per_source_node: int, max_per_target_node: int
) -> Schedule:
    """Which waiting entries start now.

    A started entry holds one slot on its source's node and one on its target's node until its
    migration is final; a node has `max_per_source_node` slots for migrations out of it and
    `max_per_target_node` for migrations into it. Waiting entries are taken in list order, and
    each starts if both its nodes have a free slot; one that cannot start does not hold back
    later entries on other nodes (an entry never waits for a node it does not use).
    """
    out_of = Counter(s.source_node for s in seats if s.holds)
    into = Counter(s.target_node for s in seats if s.holds)
    starts: list[int] = []
    waiting: dict[int, str] = {}
    for seat in seats:
        if not seat.waits:
            continue
        full = []
        if out_of[seat.source_node] >= max_per_source_node:
            full.append(
                f"{out_of[seat.source_node]} of {max_per_source_node} migrations out of "
                f"{seat.source_node} running"
            )
        if into[seat.target_node] >= max_per_target_node:
            full.append(
                f"{into[seat.target_node]} of {max_per_target_node} migrations into "
                f"{seat.target_node} running"
            )
        if full:
            waiting[seat.position] = "waiting for a slot: " + "; ".join(full)
            continue
        starts.append(seat.position)
        out_of[seat.source_node] += 1
        into[seat.target_node] += 1
    return Schedule(starts, waiting)


# -- the program ---------------------------------------------------------------------------------


class Programs:
    """The program intake, its clock and its status query."""

    prefix = "program."

    def __init__(self, ctx: PlannerContext, migrations: Migrations) -> None:
        self.ctx = ctx
        self.migrations = migrations
        self._final: dict[uuid.UUID, MigrationRecord] = {}
        """Migrations seen final: a final record never changes, so the clock reads it once."""

    def now(self) -> datetime:
        return self.ctx.clock.now()

    # -- intake --------------------------------------------------------------------------------

    async def request(self, command: Envelope[RequestMigrationProgram]) -> None:
        """Check every entry, create the program (once) and start what may start at once; or
        refuse the whole program, naming the first entry that stops it. Answered by
        `migration.program.accepted` / `.rejected`; acked once answered (a refusal changed
        nothing, so retrying would refuse again)."""
        data = command.data
        key = program_key(data.program_id)
        existing = await self.ctx.plans.get(key, ProgramRecord)
        if existing is None:
            try:
                record = await self._checked(command)
            except Refused as refused:
                await self._reject(command, refused)
                return
            with contextlib.suppress(Conflict):  # a redelivery raced us: answer from its record
                await self.ctx.plans.create(key, record)
            existing = await self.ctx.plans.get(key, ProgramRecord)
            assert existing is not None
        if existing.value.command_id != command.id:
            when = f"{existing.value.created_at:%Y-%m-%dT%H:%M:%SZ}"
            await self._reject(
                command,
                Refused(
                    Refusal(
                        f"a program named {data.program_id!r} was already requested ({when}); "
                        "a program's name is used once: give this one another name",
                        CODE_EXISTS,
                    )
                ),
            )
            return
        record = existing.value
        await self._say(
            record,
            ProgramAccepted(
                program_id=record.program_id,
                command_id=record.command_id,
                entries=[e.ref() for e in record.entries],
                max_per_source_node=record.max_per_source_node,
                max_per_target_node=record.max_per_target_node,
            ),
            "accepted",
        )
        await self.advance(data.program_id)

    async def _checked(self, command: Envelope[RequestMigrationProgram]) -> ProgramRecord:
        """The program's record, every entry checked as its own request would be at intake."""
        data = command.data
        entries = []
        for position, entry in enumerate(data.entries, start=1):
            try:
                source_node = await self._check_entry(entry)
            except Refused as refused:
                raise EntryRefused(position, entry, refused.refusal) from None
            entries.append(
                EntryRecord(
                    position=position,
                    source=await self.ctx.nodes.ref(entry.source.uid) or entry.source,
                    source_node=source_node,
                    request=entry.request,
                    command_id=step_id(command.id, f"entry.{position}"),
                )
            )
        now = self.now()
        return ProgramRecord(
            program_id=data.program_id,
            command_id=command.id,
            correlation_id=command.correlation_id,
            max_per_source_node=data.max_per_source_node,
            max_per_target_node=data.max_per_target_node,
            reason=data.reason,
            entries=entries,
            created_at=now,
            updated_at=now,
        )

    async def _check_entry(self, entry: ProgramEntry) -> str:
        """Refuse an entry its migration's intake would refuse now; its source's node."""
        request = entry.request
        # The saga's own intake check (unknown source, every window past, method not built,
        # target node not live, target already a database): one rule, not a copy of it.
        await self.migrations.check(entry.source, request)
        if await self.ctx.plans.get(migration_key(request.migration_id), MigrationRecord):
            raise Refused(
                Refusal(f"migration id {request.migration_id} is already used", CODE_ENTRY_USED)
            )
        held = await self.ctx.plans.get(source_claim_key(entry.source.uid), SagaRef)
        if held is not None:
            raise Refused(
                Refusal(
                    f"{entry.source.uid} is already being migrated ({held.value}); one "
                    "migration per source at a time",
                    BUSY,
                )
            )
        hosting = await self.ctx.nodes.hosting(entry.source.uid)
        return hosting[0].node

    async def _reject(self, command: Envelope[RequestMigrationProgram], refused: Refused) -> None:
        data = command.data
        refusal = refused.refusal
        entry = refused if isinstance(refused, EntryRefused) else None
        position = entry.position if entry else None
        source = entry.source if entry else None
        log.info("rejected program %s: %s", data.program_id, refusal.reason)
        await self._publish(
            ProgramRejected(
                program_id=data.program_id,
                command_id=command.id,
                position=position,
                source=source,
                reason=refusal.reason[:2000],
                code=refusal.code,
            ),
            message_id=step_id(command.id, "answer"),
            correlation_id=command.correlation_id,
            causation_id=command.id,
        )

    # -- the clock -----------------------------------------------------------------------------

    async def tick(self) -> int:
        """Start what may start in every running program, and finish the programs with nothing
        left. Returns how many migrations were started."""
        started = 0
        for key in await self.ctx.plans.keys(self.prefix):
            program_id = key.removeprefix(self.prefix)
            try:
                started += await self.advance(program_id)
            except Exception as exc:  # one program must not stop the others' clock
                log.warning("program %s: advancing failed (retried next tick): %s", program_id, exc)
        return started

    async def advance(self, program_id: str) -> int:
        """Start the entries whose turn it is; finish the program when nothing is left."""
        current = await self.ctx.plans.get(program_key(program_id), ProgramRecord)
        if current is None or current.value.phase is ProgramPhase.FINISHED:
            return 0
        record = current.value
        migrations = await self._migrations(record)
        # Marked started by a planner that died before requesting it: request it again.
        lost = [
            e
            for e in record.entries
            if e.state is EntryState.STARTED and e.request.migration_id not in migrations
        ]
        for entry in lost:
            await self._start(program_id, entry)
        chosen = await self._mark_started(program_id)
        for entry in chosen:
            await self._start(program_id, entry)
        await self._finish_if_done(program_id)
        return len(chosen)

    async def _migrations(self, record: ProgramRecord) -> dict[uuid.UUID, MigrationRecord]:
        """The migration record of every started entry that has one."""
        found: dict[uuid.UUID, MigrationRecord] = {}
        for entry in record.entries:
            if entry.state is not EntryState.STARTED:
                continue
            migration_id = entry.request.migration_id
            if migration_id in self._final:
                found[migration_id] = self._final[migration_id]
                continue
            got = await self.ctx.plans.get(migration_key(migration_id), MigrationRecord)
            if got is None:
                continue
            found[migration_id] = got.value
            if got.value.final:
                self._final[migration_id] = got.value
        return found

    def _seats(
        self, record: ProgramRecord, migrations: dict[uuid.UUID, MigrationRecord]
    ) -> list[Seat]:
        seats = []
        for entry in record.entries:
            migration = migrations.get(entry.request.migration_id)
            seats.append(
                Seat(
                    position=entry.position,
                    source_node=entry.source_node,
                    target_node=entry.target_node,
                    # Started but not yet recorded by the saga: it holds its slots all the same.
                    holds=entry.state is EntryState.STARTED
                    and (migration is None or not migration.final),
                    waits=entry.state is EntryState.WAITING,
                )
            )
        return seats

    def _schedule(
        self, record: ProgramRecord, migrations: dict[uuid.UUID, MigrationRecord]
    ) -> Schedule:
        return schedule(
            self._seats(record, migrations),
            max_per_source_node=record.max_per_source_node,
            max_per_target_node=record.max_per_target_node,
        )

    async def _mark_started(self, program_id: str) -> list[EntryRecord]:
        """Mark the entries whose turn it is started (compare-and-set): the ones returned are
        this replica's to request."""

        async def attempt() -> list[EntryRecord]:
            current = await self.ctx.plans.get(program_key(program_id), ProgramRecord)
            if current is None or current.value.phase is ProgramPhase.FINISHED:
                return []
            record = current.value
            plan = self._schedule(record, await self._migrations(record))
            if not plan.starts:
                return []
            now = self.now()
            starting = set(plan.starts)
            entries = [
                e.model_copy(update={"state": EntryState.STARTED, "started_at": now})
                if e.position in starting
                else e
                for e in record.entries
            ]
            updated = record.model_copy(update={"entries": entries, "updated_at": now})
            await self.ctx.plans.update(program_key(program_id), updated, last=current.revision)
            chosen = [e for e in entries if e.position in starting]
            for entry in chosen:
                log.info(
                    "program %s: starting entry %d (%s → %s)",
                    program_id,
                    entry.position,
                    entry.source.uid,
                    entry.request.target,
                )
            return chosen

        return await until_written(attempt, f"program {program_id}")

    async def _start(self, program_id: str, entry: EntryRecord) -> None:
        """Hand the entry to the migration saga's intake, as if its request had arrived."""
        current = await self.ctx.plans.get(program_key(program_id), ProgramRecord)
        assert current is not None
        record = current.value
        command = envelope(
            entry.request,
            source=self.ctx.source,
            database=entry.source,
            correlation_id=record.correlation_id,
            message_id=entry.command_id,
        ).model_copy(update={"causation_id": record.command_id})
        try:
            await self.migrations.request(command)
        except Refused as refused:
            await self.ctx.reject(
                entry.command_id,
                RequestMigration.TYPE,
                entry.source,
                refused.refusal,
                correlation_id=record.correlation_id,
            )
            await self._refuse(program_id, entry.position, refused.refusal)

    async def _refuse(self, program_id: str, position: int, refusal: Refusal) -> None:
        log.info("program %s: entry %d refused: %s", program_id, position, refusal.reason)
        failure = Failure(reason=refusal.reason[:2000], code=refusal.code)

        async def attempt() -> None:
            current = await self.ctx.plans.get(program_key(program_id), ProgramRecord)
            if current is None:
                return
            record = current.value
            entries = [
                e.model_copy(update={"state": EntryState.REFUSED, "refusal": failure})
                if e.position == position
                else e
                for e in record.entries
            ]
            updated = record.model_copy(update={"entries": entries, "updated_at": self.now()})
            await self.ctx.plans.update(program_key(program_id), updated, last=current.revision)

        await until_written(attempt, f"program {program_id}")

    async def _finish_if_done(self, program_id: str) -> None:
        current = await self.ctx.plans.get(program_key(program_id), ProgramRecord)
        if current is None or current.value.phase is ProgramPhase.FINISHED:
            return
        record = current.value
        migrations = await self._migrations(record)
        outcomes = []
        for entry in record.entries:
            migration = migrations.get(entry.request.migration_id)
            if entry.state is EntryState.REFUSED:
                phase, failure = None, entry.refusal
            elif migration is not None and migration.final:
                phase, failure = migration.phase, migration.failure or migration.failing
            else:
                return  # something is still waiting or running
            outcomes.append(
                ProgramEntryOutcome(**entry.ref().model_dump(), phase=phase, failure=failure)
            )
        # Said before it is recorded, under one id: a planner killed between the two says it
        # again on its next tick and JetStream keeps one copy.
        await self._say(
            record, ProgramFinished(program_id=program_id, entries=outcomes), "finished"
        )
        PHASES.check(f"program {program_id}", record.phase, ProgramPhase.FINISHED)
        done = record.model_copy(update={"phase": ProgramPhase.FINISHED, "updated_at": self.now()})
        with contextlib.suppress(Conflict):  # another replica's write: the next tick re-reads
            await self.ctx.plans.update(program_key(program_id), done, last=current.revision)
        log.info("program %s finished", program_id)

    # -- the status query ----------------------------------------------------------------------

    async def views(self, asked: ProgramStatusRequest) -> list[ProgramView]:
        if asked.program_id is not None:
            keys = [program_key(asked.program_id)]
        else:
            keys = list(await self.ctx.plans.keys(self.prefix))
        found = []
        for key in keys:
            current = await self.ctx.plans.get(key, ProgramRecord)
            if current is not None:
                found.append(await self.view(current.value))
        return sorted(found, key=lambda v: v.requested_at)

    async def view(self, record: ProgramRecord) -> ProgramView:
        migrations = await self._migrations(record)
        waiting = self._schedule(record, migrations).waiting
        entries = []
        for entry in record.entries:
            migration = migrations.get(entry.request.migration_id)
            shown: MigrationView | None = None
            if migration is not None:
                # Without its history: a program's view is one row per database.
                shown = self.migrations.view(migration).model_copy(update={"history": []})
            reason = waiting.get(entry.position)
            if entry.state is EntryState.WAITING and reason is None:
                reason = "its turn: starting at the next tick"
            entries.append(
                ProgramEntryView(
                    position=entry.position,
                    source=entry.source.uid,
                    target=entry.request.target,
                    source_node=entry.source_node,
                    target_node=entry.target_node,
                    migration_id=entry.request.migration_id,
                    state=entry.state,
                    waiting=reason if entry.state is EntryState.WAITING else None,
                    refusal=entry.refusal,
                    migration=shown,
                )
            )
        return ProgramView(
            program_id=record.program_id,
            phase=record.phase,
            max_per_source_node=record.max_per_source_node,
            max_per_target_node=record.max_per_target_node,
            entries=entries,
            reason=record.reason,
            requested_at=record.created_at,
            updated_at=record.updated_at,
        )

    # -- telling the world -----------------------------------------------------------------------

    async def _say(self, record: ProgramRecord, data: Payload, what: str) -> None:
        await self._publish(
            data,
            message_id=step_id(record.command_id, what),
            correlation_id=record.correlation_id,
            causation_id=record.command_id,
        )

    async def _publish(
        self,
        data: Payload,
        *,
        message_id: uuid.UUID,
        correlation_id: uuid.UUID,
        causation_id: uuid.UUID,
    ) -> None:
        """A program event: it names no database (its subject ends with the program's id)."""
        message = envelope(
            data, source=self.ctx.source, correlation_id=correlation_id, message_id=message_id
        ).model_copy(update={"causation_id": causation_id})
        await self.ctx.publisher.publish(message)
