"""One valid payload per migration program message type (merged into the contract test's
examples). A program names no database: its envelopes carry none."""

from __future__ import annotations

from collections.abc import Callable

from schemas import DatabaseRef, Engine, Payload
from schemas.messages import (
    Failure,
    MigrationMethod,
    MigrationPhase,
    ProgramAccepted,
    ProgramFinished,
    ProgramRejected,
    RequestMigration,
    RequestMigrationProgram,
    TargetInstance,
)
from schemas.messages.programs import (
    ProgramEntry,
    ProgramEntryOutcome,
    ProgramEntryRef,
    program_migration_id,
)
from tests.unit.migration_examples import LAG, T0, WINDOW

PROGRAM = "wave-3"


def _entry(position: int, uid: str) -> ProgramEntry:
    target = DatabaseRef(uid=f"{uid}-new", engine=Engine.POSTGRES, name=uid)
    return ProgramEntry(
        source=DatabaseRef(
            uid=uid, engine=Engine.POSTGRES, name=uid, system_id=7_312_000 + position
        ),
        request=RequestMigration(
            migration_id=program_migration_id(PROGRAM, position),
            target_instance=TargetInstance(
                database=target, node="db-node-2", data_dir=f"/var/lib/postgresql/{uid}-new"
            ),
            method=MigrationMethod.PHYSICAL_STREAM,
            windows=[WINDOW],
            downtime_budget_s=30.0,
            lag=LAG,
        ),
    )


ENTRIES = [_entry(1, "orders-db"), _entry(2, "billing-db")]
REFS = [
    ProgramEntryRef(
        position=i,
        source=e.source.uid,
        target=e.request.target,
        migration_id=e.request.migration_id,
    )
    for i, e in enumerate(ENTRIES, start=1)
]
COMMAND = program_migration_id(PROGRAM, 0)

PROGRAM_EXAMPLES: dict[str, Callable[[], tuple[Payload, DatabaseRef | None]]] = {
    "migration.program.request": lambda: (
        RequestMigrationProgram(
            program_id=PROGRAM, entries=ENTRIES, max_per_source_node=2, max_per_target_node=1
        ),
        None,
    ),
    "migration.program.accepted": lambda: (
        ProgramAccepted(
            program_id=PROGRAM,
            command_id=COMMAND,
            entries=REFS,
            max_per_source_node=2,
            max_per_target_node=1,
        ),
        None,
    ),
    "migration.program.rejected": lambda: (
        ProgramRejected(
            program_id=PROGRAM,
            command_id=COMMAND,
            position=2,
            source="billing-db",
            reason=f"entry 2 (billing-db → billing-db-new): every cutover window is in the past "
            f"(latest ended {T0:%Y-%m-%dT%H:%M:%SZ})",
            code="TM-MIG-WINDOW",
        ),
        None,
    ),
    "migration.program.finished": lambda: (
        ProgramFinished(
            program_id=PROGRAM,
            entries=[
                ProgramEntryOutcome(**REFS[0].model_dump(), phase=MigrationPhase.COMPLETED),
                ProgramEntryOutcome(
                    **REFS[1].model_dump(),
                    phase=MigrationPhase.FAILED,
                    failure=Failure(
                        reason="step copy failed: disk full", code="TM-MIG-STEP-FAILED"
                    ),
                ),
            ],
        ),
        None,
    ),
}
