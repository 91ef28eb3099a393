"""The engine Protocols: what the executor asks of a database engine, one capability each
(describe, archiving, backups, restores, verification, migration steps), and `Engine`, the
first five (`Migrates` is declared by the engines that have migration methods).

An engine runs one operation for one database on this node and reports as it goes through a
`JobContext`. It returns typed results and raises `EngineError` with a `Failure` when it cannot
finish; cancellation and timeouts arrive as `asyncio.CancelledError`, and an engine leaves no
child process behind when it gets one (every subprocess is killed in a `finally`).

Engines never acknowledge or publish anything themselves: the executor owns the journal, the
events and the ack. An engine's job is to make its effect durable before it returns.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from datetime import datetime
from typing import Protocol, runtime_checkable

from schemas import Lineage, Position
from schemas.messages import (
    BackupSpec,
    Failure,
    MigrationStep,
    MigrationStepResult,
    RestoreResult,
    RunRestore,
    VerifyResult,
)
from schemas.messages.common import ProgressUnit
from services.blobstore import BlobStore
from services.engines.settings import HostedDatabase


class EngineError(Exception):
    """An operation failed; `failure` says why and whether a retry can help."""

    def __init__(self, failure: Failure) -> None:
        super().__init__(failure.reason)
        self.failure = failure

    @classmethod
    def of(cls, reason: str, *, code: str | None = None, retryable: bool = False) -> EngineError:
        return cls(Failure(reason=reason, code=code, retryable=retryable))


class JobContext(Protocol):
    """What an engine can tell the executor while it works."""

    @property
    def job_id(self) -> uuid.UUID: ...

    async def progress(
        self,
        phase: str,
        *,
        done: int | None = None,
        total: int | None = None,
        unit: ProgressUnit | None = None,
        message: str = "",
    ) -> None:
        """Report a phase and how far it has got (rate-limited by the executor); also keeps the
        command's delivery alive (`in_progress()`)."""
        ...


@dataclass(frozen=True)
class BackupOutcome:
    """A backup that is durable in the store, manifest last: everything `backup.completed`
    says."""

    backup_id: str
    lineage: Lineage
    start: Position
    consistent_at: Position
    started_at: datetime
    completed_at: datetime
    size_bytes: int
    piece_count: int
    manifest_key: str


@dataclass(frozen=True)
class Description:
    """What the engine sees of a database right now."""

    system_id: int | None
    version: str
    lineage: Lineage | None
    position: Position | None
    in_recovery: bool = False
    details: dict[str, str] = field(default_factory=dict)


@runtime_checkable
class Describes(Protocol):
    async def describe(self, db: HostedDatabase) -> Description: ...


@runtime_checkable
class Archives(Protocol):
    async def setup_archiving(self, db: HostedDatabase, store: BlobStore, prefix: str) -> None:
        """Configure the database so each completed log reaches the archiver; refuse (with an
        `EngineError`) when the archive prefix already belongs to another database."""
        ...


@runtime_checkable
class Backups(Protocol):
    async def backup(
        self,
        db: HostedDatabase,
        *,
        backup_id: str,
        spec: BackupSpec,
        store: BlobStore,
        prefix: str,
        ctx: JobContext,
    ) -> BackupOutcome: ...


@runtime_checkable
class Restores(Protocol):
    async def restore(
        self,
        db: HostedDatabase,
        command: RunRestore,
        *,
        store: BlobStore,
        prefix: str,
        ctx: JobContext,
    ) -> RestoreResult: ...


@runtime_checkable
class Verifies(Protocol):
    async def verify(
        self,
        db: HostedDatabase,
        *,
        backup_id: str,
        manifest_key: str,
        store: BlobStore,
        prefix: str,
        scratch_dir: str,
        ctx: JobContext,
    ) -> VerifyResult: ...


@runtime_checkable
class Migrates(Protocol):
    """The engine half of a migration: one step (`migration.<step>`) of one method, run on the
    node of the step's side. Steps are idempotent: a step rerun from its start after a restart
    or a retry finds what its first run did and goes on (ZDM's rule for resumable phases)."""

    async def migration_step(
        self,
        db: HostedDatabase,
        command: MigrationStep,
        *,
        store: BlobStore,
        prefix: str,
        ctx: JobContext,
    ) -> MigrationStepResult: ...


@runtime_checkable
class Engine(Describes, Archives, Backups, Restores, Verifies, Protocol):
    """A database engine driver with every capability. One instance serves every database of
    its engine on a node. A driver may declare fewer (a `Describes` + `Backups` engine): the
    executor refuses an operation whose capability its driver lacks, before anything runs
    (`executor/operations.py`)."""
