"""Migration programs (waves): many databases, each moved by its own migration saga with its own
cutover windows, started by the planner under a concurrency limit per source and target node.

    tool ──migration.program.request──▶ planner ──(an entry's turn and slots)──▶ its migration
    tool ◀──migration.program.accepted / rejected / finished── planner
    tool ◀──migration.requested / phase / … / completed── each entry's own migration saga

A program only starts migrations: each entry is a `RequestMigration` with its own target,
method, windows and budgets, and once started it is an ordinary migration (`tidemark migrate
pause|cutover|abort SOURCE` act on it as on any other). A failure of one entry stops only that
entry; the others go on.

Program subjects end with the program's id (`tm.cmd.planner.any.program.request.wave-3`,
`tm.evt.program.accepted.wave-3`), not with a database: a program names many databases, so the
right to start one is the right to migrate every database it lists. They sit outside
`….migration.*.<source>.<target>` on purpose, so a credential scoped to one database's
migrations (`tm.cmd.planner.any.migration.*.orders-db.*`) never matches a program's subject,
whatever the program or the database is called.
"""

from __future__ import annotations

import uuid
from enum import StrEnum
from typing import Annotated, ClassVar

from pydantic import Field, StringConstraints, model_validator

from schemas._base import DatabaseUid, NodeName, StrictModel, UtcDateTime
from schemas.database import DatabaseRef
from schemas.envelope import Command, Event
from schemas.messages.common import ErrorCode, Failure, Reason
from schemas.messages.migrations import MigrationPhase, MigrationView, RequestMigration

MAX_ENTRIES = 200
"""Databases in one program: seed 003's 65 with room, and a record that stays one KV value."""

MAX_PER_NODE = 64

ProgramId = Annotated[str, StringConstraints(pattern=r"^[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?$")]
"""A program's name (`wave-3`): DNS-label shaped, so it is one subject token and a KV key."""

PROGRAM_NAMESPACE = uuid.UUID("7c1d0b7e-3f43-5a8e-9d2c-6a1f0e4b8c55")


def program_migration_id(program_id: str, position: int) -> uuid.UUID:
    """The migration id `tidemark migrate program start` gives the entry at `position` (from 1):
    a function of the program, so the ids of a program's migrations are known before it runs."""
    return uuid.uuid5(PROGRAM_NAMESPACE, f"{program_id}/{position}")


class ProgramEntry(StrictModel):
    """One database of a program: its source and the migration request it is started with."""

    source: DatabaseRef
    request: RequestMigration


class RequestMigrationProgram(Command):
    """Run `entries` as migrations, each started in list order once a slot is free on both its
    source's node and its target's node.

    A slot is held from the moment an entry's migration is started until that migration is
    final (completed, failed, aborted, rolled back): a migration copying, catching up, waiting
    in `ready` for its window or paused holds its slot, because its standby and its stream
    from the source are running. An entry never waits for a node it does not use: the first
    waiting entry whose two nodes both have a free slot starts next.
    """

    TYPE: ClassVar[str] = "migration.program.request"
    SUBJECT: ClassVar[str] = "tm.cmd.planner.any.program.request.{program}"
    SUMMARY: ClassVar[str] = "Ask the planner to run a program of migrations under node limits."

    program_id: ProgramId
    entries: list[ProgramEntry] = Field(min_length=1, max_length=MAX_ENTRIES)
    max_per_source_node: int = Field(
        default=2, ge=1, le=MAX_PER_NODE, description="migrations out of one node at a time"
    )
    max_per_target_node: int = Field(
        default=2, ge=1, le=MAX_PER_NODE, description="migrations into one node at a time"
    )
    reason: Reason = "on request"

    def subject_values(self) -> dict[str, str]:
        return {"program": self.program_id}

    @model_validator(mode="after")
    def _each_database_once(self) -> RequestMigrationProgram:
        # One migration per source at a time (the saga's own rule), and two entries building
        # the same target would overwrite each other: say which entries collide, up front.
        owner: dict[str, int] = {}  # a database uid or a migration id → the entry naming it
        for position, entry in enumerate(self.entries, start=1):
            request = entry.request
            named = (
                (f"source {entry.source.uid}", entry.source.uid),
                (f"target {request.target}", request.target),
                (f"migration id {request.migration_id}", f"id:{request.migration_id}"),
            )
            for what, key in named:
                if key in owner:
                    raise ValueError(
                        f"entry {position}: {what} is already in entry {owner[key]}; a program "
                        "moves each database once"
                    )
            owner.update({key: position for _, key in named})
        return self


class EntryState(StrEnum):
    """Where one entry of a program is, as far as the program is concerned (once started, the
    entry's own migration says the rest)."""

    WAITING = "waiting"
    """Not started: earlier entries hold the slots on its source's or its target's node."""
    STARTED = "started"
    """Its migration was started; it holds its slots until that migration is final."""
    REFUSED = "refused"
    """Its migration could not be started when its turn came (a window already over, its
    source taken by another migration, a node gone): the reason is kept; it holds no slot."""


class ProgramPhase(StrEnum):
    """Where a program is. `finished` is final: every entry was refused or its migration is
    final, and `migration.program.finished` says how each ended."""

    RUNNING = "running"
    """Entries are waiting or their migrations are running."""
    FINISHED = "finished"
    """Nothing is left to start or to wait for."""


class ProgramEntryRef(StrictModel):
    """An entry as the program's events name it."""

    position: int = Field(ge=1, le=MAX_ENTRIES, description="its place in the list, from 1")
    source: DatabaseUid
    target: DatabaseUid
    migration_id: uuid.UUID


class ProgramEntryOutcome(ProgramEntryRef):
    phase: MigrationPhase | None = Field(
        description="the migration's final phase; null: it was never started (refused)"
    )
    failure: Failure | None = None


class _Program(StrictModel):
    program_id: ProgramId

    def subject_values(self) -> dict[str, str]:
        return {"program": self.program_id}


class ProgramAccepted(_Program, Event):
    TYPE: ClassVar[str] = "migration.program.accepted"
    SUBJECT: ClassVar[str] = "tm.evt.program.accepted.{program}"
    SUMMARY: ClassVar[str] = "The planner took a migration program; every entry was checked."

    command_id: uuid.UUID
    entries: list[ProgramEntryRef] = Field(max_length=MAX_ENTRIES)
    max_per_source_node: int = Field(ge=1, le=MAX_PER_NODE)
    max_per_target_node: int = Field(ge=1, le=MAX_PER_NODE)


class ProgramRejected(_Program, Event):
    """A program was refused as a whole and nothing was started: `position` names the entry
    that stopped it (null: the program itself, e.g. its name is taken)."""

    TYPE: ClassVar[str] = "migration.program.rejected"
    SUBJECT: ClassVar[str] = "tm.evt.program.rejected.{program}"
    SUMMARY: ClassVar[str] = "The planner refused a migration program; nothing was started."

    command_id: uuid.UUID
    position: int | None = Field(default=None, ge=1, le=MAX_ENTRIES)
    source: DatabaseUid | None = None
    reason: Annotated[str, StringConstraints(min_length=1, max_length=2000)]
    code: ErrorCode


class ProgramFinished(_Program, Event):
    TYPE: ClassVar[str] = "migration.program.finished"
    SUBJECT: ClassVar[str] = "tm.evt.program.finished.{program}"
    SUMMARY: ClassVar[str] = "Every entry of a program ended: its migration final, or refused."

    entries: list[ProgramEntryOutcome] = Field(max_length=MAX_ENTRIES)


# --- the planner's query: `tm.qry.planner.program` ------------------------------------------


class ProgramStatusRequest(StrictModel):
    """`tm.qry.planner.program`: one program, or every one."""

    program_id: ProgramId | None = None


class ProgramEntryView(StrictModel):
    """One entry: where it stands in the program, and its migration (without its history)."""

    position: int = Field(ge=1, le=MAX_ENTRIES)
    source: DatabaseUid
    target: DatabaseUid
    source_node: NodeName
    target_node: NodeName
    migration_id: uuid.UUID
    state: EntryState
    waiting: Annotated[str, StringConstraints(max_length=500)] | None = Field(
        default=None, description="why a waiting entry has not started (which node is full)"
    )
    refusal: Failure | None = None
    migration: MigrationView | None = None


class ProgramView(StrictModel):
    program_id: ProgramId
    phase: ProgramPhase
    max_per_source_node: int = Field(ge=1, le=MAX_PER_NODE)
    max_per_target_node: int = Field(ge=1, le=MAX_PER_NODE)
    entries: list[ProgramEntryView] = Field(max_length=MAX_ENTRIES)
    reason: Reason
    requested_at: UtcDateTime
    updated_at: UtcDateTime


class ProgramStatusReply(StrictModel):
    programs: list[ProgramView]


PROGRAM_COMMANDS: tuple[type[Command], ...] = (RequestMigrationProgram,)
PROGRAM_EVENTS: tuple[type[Event], ...] = (ProgramAccepted, ProgramRejected, ProgramFinished)
