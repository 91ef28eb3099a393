"""The executor's operations, one row each: the command that asks for it, the action token of
its subject, the result it journals, the engine capability it needs, how it calls the engine,
and the domain events its end owes the world.

Everything else reads this table: the consumer's subjects and handlers (`handlers.py`), the
journal's result types (`journal.py`), the events of a job's end (`events.py`), the engine call
(`jobs.py`), and the refusal of a command the database's engine cannot do — before anything is
journaled as accepted. A new operation is one row here plus the engine's code.
"""

from __future__ import annotations

import asyncio
import shutil
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from schemas import Payload
from schemas.messages import (
    BackupCompleted,
    BackupFailed,
    BackupResult,
    BackupVerified,
    Failure,
    JobResult,
    MigrationStep,
    MigrationStepResult,
    Operation,
    RestoreCompleted,
    RestoreFailed,
    RestoreResult,
    RunBackup,
    RunMigrationCopy,
    RunMigrationFence,
    RunMigrationFinalSync,
    RunMigrationLag,
    RunMigrationParity,
    RunMigrationPreflight,
    RunMigrationPrepare,
    RunMigrationPromote,
    RunMigrationRewind,
    RunMigrationUnfence,
    RunRestore,
    RunVerify,
    VerifyResult,
)
from services.blobstore import BlobStore
from services.engines.base import (
    BackupOutcome,
    Backups,
    JobContext,
    Migrates,
    Restores,
    Verifies,
)
from services.executor.settings import HostedDatabase


@dataclass(frozen=True)
class Call:
    """What an operation's engine call gets besides the engine, the database and the command."""

    store: BlobStore
    prefix: str
    scratch_dir: Path
    ctx: JobContext


Outcome = tuple[JobResult, BackupOutcome | None]


@dataclass(frozen=True)
class OperationSpec:
    operation: Operation
    command: type[Any]
    action: str
    """The action tokens of its subject: `tm.cmd.executor.<node>.<action>` (a migration
    step's subject goes on with its two database tokens: `<action>.<source>.<target>`)."""
    result: type[Any]
    capability: type[Any]
    """The engine Protocol (`engines/base.py`) a driver must satisfy to run it."""
    run: Callable[[Any, HostedDatabase, Any, Call], Awaitable[Outcome]]
    completed: Callable[[Any, Any, datetime, BackupOutcome | None], Payload | None]
    """The domain event of a success, published before `job.succeeded` (None: there is none;
    a migration step's result is the saga's to announce)."""
    failed: Callable[[Any, Failure], Payload | None]
    """The domain event of a failure (None: there is none), published before `job.failed`."""


# -- backup --------------------------------------------------------------------------------------


async def _backup(driver: Backups, db: HostedDatabase, command: RunBackup, call: Call) -> Outcome:
    outcome = await driver.backup(
        db,
        backup_id=command.backup_id,
        spec=command.spec,
        store=call.store,
        prefix=call.prefix,
        ctx=call.ctx,
    )
    if outcome.backup_id != command.backup_id:
        raise TypeError(f"the engine reported backup {outcome.backup_id}, not {command.backup_id}")
    return backup_result(outcome), outcome


def backup_result(outcome: BackupOutcome) -> BackupResult:
    return BackupResult(
        backup_id=outcome.backup_id,
        manifest_key=outcome.manifest_key,
        size_bytes=outcome.size_bytes,
        consistent_at=outcome.consistent_at,
    )


def _backup_completed(
    command: RunBackup, result: JobResult, at: datetime, backup: BackupOutcome | None
) -> Payload:
    if backup is None or not isinstance(result, BackupResult):
        raise TypeError("a backup succeeds with a BackupOutcome")
    return BackupCompleted(
        backup_id=backup.backup_id,
        job_id=command.job_id,
        spec=command.spec,
        parent_backup_id=command.parent_backup_id,
        lineage=backup.lineage,
        start=backup.start,
        consistent_at=backup.consistent_at,
        started_at=backup.started_at,
        completed_at=backup.completed_at,
        size_bytes=backup.size_bytes,
        piece_count=backup.piece_count,
        manifest_key=backup.manifest_key,
    )


def _backup_failed(command: RunBackup, failure: Failure) -> Payload:
    return BackupFailed(backup_id=command.backup_id, job_id=command.job_id, failure=failure)


# -- restore -------------------------------------------------------------------------------------


async def _restore(
    driver: Restores, db: HostedDatabase, command: RunRestore, call: Call
) -> Outcome:
    result = await driver.restore(db, command, store=call.store, prefix=call.prefix, ctx=call.ctx)
    return result, None


def _restore_completed(
    command: RunRestore, result: JobResult, at: datetime, backup: BackupOutcome | None
) -> Payload:
    if not isinstance(result, RestoreResult):
        raise TypeError("a restore succeeds with a RestoreResult")
    return RestoreCompleted(
        restore_id=command.restore_id,
        target=command.target,
        reached=result.reached,
        reached_time=result.reached_time,
        lineage=result.lineage,
    )


def _restore_failed(command: RunRestore, failure: Failure) -> Payload:
    return RestoreFailed(restore_id=command.restore_id, failure=failure)


# -- verify --------------------------------------------------------------------------------------


async def _verify(driver: Verifies, db: HostedDatabase, command: RunVerify, call: Call) -> Outcome:
    scratch = call.scratch_dir / str(command.job_id)
    scratch.mkdir(parents=True, exist_ok=True)
    try:
        result = await driver.verify(
            db,
            backup_id=command.backup_id,
            manifest_key=command.manifest_key,
            store=call.store,
            prefix=call.prefix,
            scratch_dir=str(scratch),
            ctx=call.ctx,
        )
    finally:
        await asyncio.to_thread(shutil.rmtree, scratch, True)
    return result, None


def _verify_completed(
    command: RunVerify, result: JobResult, at: datetime, backup: BackupOutcome | None
) -> Payload:
    if not isinstance(result, VerifyResult):
        raise TypeError("a verification succeeds with a VerifyResult")
    return BackupVerified(
        backup_id=result.backup_id,
        job_id=command.job_id,
        ok=result.ok,
        checks=[c for c in result.checks if c],
        verified_at=at,
    )


def _verify_failed(command: RunVerify, failure: Failure) -> None:
    # `backup.verified` reports a check, and nothing was checked: no domain event.
    return None


# -- migration steps ---------------------------------------------------------------------------


async def _migration_step(
    driver: Migrates, db: HostedDatabase, command: MigrationStep, call: Call
) -> Outcome:
    result = await driver.migration_step(
        db, command, store=call.store, prefix=call.prefix, ctx=call.ctx
    )
    expected = command.TYPE.removeprefix("migration.")
    if result.step != expected:
        raise TypeError(f"the engine answered a {expected} step with a {result.step} result")
    return result, None


def _no_domain_event(*_: Any) -> None:
    # The planner's migration saga reads the job's result and announces the migration itself.
    return None


def _migration_row(command: type[MigrationStep]) -> OperationSpec:
    return OperationSpec(
        Operation.MIGRATION,
        command,
        command.TYPE,
        MigrationStepResult,
        Migrates,
        _migration_step,
        _no_domain_event,
        _no_domain_event,
    )


MIGRATION_STEP_COMMANDS: tuple[type[MigrationStep], ...] = (
    RunMigrationPreflight,
    RunMigrationPrepare,
    RunMigrationCopy,
    RunMigrationLag,
    RunMigrationFence,
    RunMigrationUnfence,
    RunMigrationFinalSync,
    RunMigrationParity,
    RunMigrationPromote,
    RunMigrationRewind,
)

OPERATIONS: tuple[OperationSpec, ...] = (
    OperationSpec(
        Operation.BACKUP,
        RunBackup,
        "backup",
        BackupResult,
        Backups,
        _backup,
        _backup_completed,
        _backup_failed,
    ),
    OperationSpec(
        Operation.RESTORE,
        RunRestore,
        "restore",
        RestoreResult,
        Restores,
        _restore,
        _restore_completed,
        _restore_failed,
    ),
    OperationSpec(
        Operation.VERIFY,
        RunVerify,
        "verify",
        VerifyResult,
        Verifies,
        _verify,
        _verify_completed,
        _verify_failed,
    ),
    *(_migration_row(command) for command in MIGRATION_STEP_COMMANDS),
)

BY_COMMAND: dict[type[Any], OperationSpec] = {spec.command: spec for spec in OPERATIONS}
BY_RESULT_KIND: dict[str, type[Any]] = {
    spec.result.model_fields["kind"].default: spec.result for spec in OPERATIONS
}


def spec_of(command: Any) -> OperationSpec:
    try:
        return BY_COMMAND[type(command)]
    except KeyError:
        raise TypeError(f"{type(command).__name__} is not an executor operation") from None


def can_run(driver: object, spec: OperationSpec) -> bool:
    """Does this engine driver declare the capability the operation needs?"""
    return isinstance(driver, spec.capability)
