"""The backup saga: a `backup.request` (from a person or a schedule) becomes `backup.run` on the
node that hosts the database, under the database's lock.

    dispatching ──▶ running ──▶ completed
         │             │
         └─────────────┴──────▶ failed

Every id is a function of the command: the job id (also the saga's id), the backup id
(`<UTC yyyymmddThhmmss>-<8 hex of the command id>`, the time being the command's `occurred_at`,
which for a scheduled backup is the slot's minute), and the ids of everything published. A
redelivered request finds its record and goes on from its phase; one that died after sending
and before recording it sends again under the same ids (JetStream keeps one copy).
"""

from __future__ import annotations

import contextlib
import logging
import uuid
from enum import StrEnum
from typing import Any, ClassVar

from pydantic import Field

from schemas import DatabaseRef, Envelope, UtcDateTime
from schemas.messages import (
    BackupCompleted,
    BackupFailed,
    BackupKind,
    BackupRequested,
    JobFailed,
    JobSucceeded,
    RequestBackup,
    RunBackup,
)
from schemas.messages.common import Failure
from services.catalog.client import CatalogError
from services.planner.context import PlannerContext, require_database
from services.planner.errors import Refusal
from services.planner.keys import backup_id_for, policy_key, step_id
from services.planner.locks import held_lock, release_lock, take_lock
from services.planner.records import Lock, PolicyRecord
from services.planner.sagas import Idle, Move, Outcome, SagaRecord, SagaRef, Update, until_written
from services.planner.store import Conflict, Versioned
from services.runtime.phases import IllegalTransition, Transitions

log = logging.getLogger("tidemark.planner")


class BackupPhase(StrEnum):
    DISPATCHING = "dispatching"
    """Choosing the node, taking the database's lock and sending `backup.run`. A refusal here
    (busy, no node) is a `request.rejected`: nothing was started."""
    RUNNING = "running"
    """`backup.run`, `backup.requested` and `request.accepted` are out; waiting for the job's
    end (`job.*` or `backup.*`, whichever comes first)."""
    COMPLETED = "completed"
    """The job succeeded and the lock is released. Terminal."""
    FAILED = "failed"
    """Refused or failed; the lock is released. Terminal: a retry is a new request."""


TRANSITIONS = Transitions[BackupPhase](
    {
        BackupPhase.DISPATCHING: frozenset({BackupPhase.RUNNING, BackupPhase.FAILED}),
        BackupPhase.RUNNING: frozenset({BackupPhase.COMPLETED, BackupPhase.FAILED}),
        BackupPhase.COMPLETED: frozenset(),
        BackupPhase.FAILED: frozenset(),
    }
)


class BackupRecord(SagaRecord[BackupPhase]):
    """One backup, as kept in `backup.<job_id>`."""

    KIND: ClassVar[str] = "backup"
    PHASES: ClassVar[Transitions[Any]] = TRANSITIONS

    job_id: uuid.UUID
    backup_id: str
    command_id: uuid.UUID
    correlation_id: uuid.UUID
    requested_at: UtcDateTime
    database: DatabaseRef
    request: RequestBackup
    node: str | None = None
    sent: bool = Field(default=False, description="backup.run and the answers are published")
    refused: bool = False

    @property
    def saga_id(self) -> uuid.UUID:
        return self.job_id


def backup_key(job_id: uuid.UUID) -> str:
    return f"backup.{job_id}"


class Backups:
    """The backup saga kind: registered with the planner's saga driver."""

    kind = BackupRecord.KIND
    record = BackupRecord
    prefix = "backup."

    def __init__(self, ctx: PlannerContext) -> None:
        self.ctx = ctx

    def key(self, saga_id: uuid.UUID) -> str:
        return backup_key(saga_id)

    async def request(self, command: Envelope[RequestBackup]) -> None:
        database = require_database(command)
        job_id = step_id(command.id, "job")
        now = self.ctx.clock.now()
        record = BackupRecord(
            job_id=job_id,
            backup_id=backup_id_for(command.id, command.occurred_at),
            command_id=command.id,
            correlation_id=command.correlation_id,
            requested_at=command.occurred_at,
            database=database,
            databases=[database.uid],
            request=command.data,
            phase=BackupPhase.DISPATCHING,
            jobs={"backup": job_id},
            created_at=now,
            updated_at=now,
        )
        with contextlib.suppress(Conflict):  # a redelivery: go on from the recorded phase
            await self.ctx.plans.create(backup_key(job_id), record)
        await self.ctx.sagas.advance(SagaRef(kind=self.kind, id=job_id))

    async def step(self, record: BackupRecord, revision: int) -> Outcome:
        if record.phase is BackupPhase.DISPATCHING:
            if record.sent:
                return Move(BackupPhase.RUNNING)
            node = await self._dispatch(record)
            return Update({"sent": True, "node": node})
        return Idle()  # waiting for the job's end

    async def _dispatch(self, record: BackupRecord) -> str:
        uid = record.database.uid
        policy = await self.ctx.plans.get(policy_key(uid), PolicyRecord)
        preferred = policy.value.policy.node if policy else None
        node = await self.ctx.route(uid, preferred)
        await self.ctx.sagas.bind_job(record.ref, record.job_id)
        await take_lock(
            self.ctx.plans,
            uid,
            Lock(
                kind=self.kind,
                holder=record.ref,
                job_id=record.job_id,
                node=node,
                backup_id=record.backup_id,
                command_id=record.command_id,
                taken_at=self.ctx.clock.now(),
            ),
        )
        spec = record.request.spec
        parent = await self._parent(uid) if spec.kind is BackupKind.INCREMENTAL else None
        cause = record.command_id
        await self.ctx.send(
            RunBackup(
                job_id=record.job_id, backup_id=record.backup_id, spec=spec, parent_backup_id=parent
            ),
            record.database,
            message_id=step_id(cause, "run"),
            correlation_id=record.correlation_id,
            causation_id=cause,
            node=node,
        )
        await self.ctx.send(
            BackupRequested(
                backup_id=record.backup_id, spec=spec, node=node, reason=record.request.reason
            ),
            record.database,
            message_id=step_id(cause, "requested"),
            correlation_id=record.correlation_id,
            causation_id=cause,
        )
        await self.ctx.accept_command(
            record.command_id,
            RequestBackup.TYPE,
            record.database,
            record.backup_id,
            f"{spec.kind.value} backup {record.backup_id} on {node} (job {record.job_id})",
            correlation_id=record.correlation_id,
        )
        log.info("backup %s of %s sent to %s", record.backup_id, uid, node)
        return node

    async def _parent(self, uid: str) -> str | None:
        """The newest full backup an incremental builds on; None lets the engine choose."""
        try:
            windows = await self.ctx.catalog.windows(uid)
        except CatalogError:
            return None
        fulls = [b for b in windows.backups if b.kind == BackupKind.FULL.value]
        return max(fulls, key=lambda b: b.completed_at).backup_id if fulls else None

    async def fail(self, record: BackupRecord, revision: int, refusal: Refusal) -> None:
        """Refused before it started (busy, no node): the requester is told no."""
        failure = Failure(reason=refusal.reason[:2000], code=refusal.code)
        try:
            failed = await self.ctx.sagas.write(
                self, record, revision, BackupPhase.FAILED, failure=failure, refused=True
            )
        except IllegalTransition:
            return
        await self.announce(failed, refusal)

    async def announce(self, record: BackupRecord, refusal: Refusal | None = None) -> None:
        await release_lock(self.ctx.plans, record.database.uid, record.job_id)
        if record.phase is BackupPhase.FAILED and record.refused and record.failure is not None:
            await self.ctx.reject(
                record.command_id,
                RequestBackup.TYPE,
                record.database,
                refusal or Refusal(record.failure.reason, record.failure.code or "TM-PLAN"),
                correlation_id=record.correlation_id,
            )

    async def on_end(self, event: Envelope[Any]) -> None:
        """A backup's job ended (`job.succeeded`/`job.failed`, or `backup.completed`/
        `backup.failed`): the saga ends and the database is free. Whichever arrives first ends
        it; the others find it final and only make sure the lock is gone."""
        data = event.data
        job_id: uuid.UUID | None = getattr(data, "job_id", None)
        if job_id is None or await self.ctx.sagas.owner_of(job_id) is None:
            await self._release_unowned(event)
            return
        ok = isinstance(data, JobSucceeded | BackupCompleted)
        failure = data.failure if isinstance(data, JobFailed | BackupFailed) else None

        async def attempt() -> None:
            current: Versioned[BackupRecord] | None = await self.ctx.plans.get(
                backup_key(job_id), BackupRecord
            )
            if current is None:
                return
            record = current.value
            if not record.final:
                to = BackupPhase.COMPLETED if ok else BackupPhase.FAILED
                if record.phase is BackupPhase.DISPATCHING:
                    record = await self.ctx.sagas.write(
                        self, record, current.revision, BackupPhase.RUNNING
                    )
                    current = await self.ctx.plans.get(backup_key(job_id), BackupRecord)
                    assert current is not None
                await self.ctx.sagas.write(
                    self, current.value, current.revision, to, failure=failure
                )
            await release_lock(self.ctx.plans, record.database.uid, job_id)

        await until_written(attempt, f"backup {job_id}")

    async def _release_unowned(self, event: Envelope[Any]) -> None:
        """A backup started before backups were sagas (no `job.<id>` record): free its lock
        when its end arrives, as the lock alone recorded it."""
        if event.database is None:
            return
        held = await held_lock(self.ctx.plans, event.database.uid)
        if held is None or held.value.kind != self.kind:
            return
        data = event.data
        job_id = getattr(data, "job_id", None)
        backup_id = getattr(data, "backup_id", None)
        if job_id == held.value.job_id or (backup_id and backup_id == held.value.backup_id):
            await release_lock(self.ctx.plans, event.database.uid, held.value.job_id)
