"""Verification: on `verify_cron`, prove the newest backup restorable by having the executor
restore it to scratch (`backup.verify`), and keep the latest verdict in `verify.<uid>` for the
timeline page.

Each verification is a saga (`verifying.<job_id>`): dispatching → running → completed | failed,
ended by the job's end (found by job id), so a verification that could not run is recorded as
failed instead of vanishing. The slot's command id is the `backup.verify` envelope's id and the
job id derives from it, so a re-published slot is one job and one saga.

    dispatching ──▶ running ──▶ completed
         └─────────────┴──────▶ failed
"""

from __future__ import annotations

import contextlib
import logging
import uuid
from datetime import datetime
from enum import StrEnum
from typing import Any, ClassVar

from schemas import DatabaseRef, Envelope
from schemas.messages import BackupVerified, RunVerify
from schemas.messages.common import Failure
from services.catalog.client import CatalogError
from services.planner.context import PlannerContext
from services.planner.errors import Refusal, Refused
from services.planner.keys import slot_command_id, step_id, verify_key
from services.planner.records import PolicyRecord, VerifyRecord
from services.planner.sagas import Idle, Move, Outcome, SagaRecord, until_written
from services.planner.store import Conflict
from services.runtime.phases import IllegalTransition, Transitions

log = logging.getLogger("tidemark.planner")


class VerifyPhase(StrEnum):
    DISPATCHING = "dispatching"
    """The newest backup is chosen and `backup.verify` sent to a node hosting the database."""
    RUNNING = "running"
    """Sent; waiting for the job's end."""
    COMPLETED = "completed"
    """The executor reported a verdict (good or bad: `backup.verified` says which). Terminal."""
    FAILED = "failed"
    """The verification could not run (`job.failed`). Terminal."""


TRANSITIONS = Transitions[VerifyPhase](
    {
        VerifyPhase.DISPATCHING: frozenset({VerifyPhase.RUNNING, VerifyPhase.FAILED}),
        VerifyPhase.RUNNING: frozenset({VerifyPhase.COMPLETED, VerifyPhase.FAILED}),
        VerifyPhase.COMPLETED: frozenset(),
        VerifyPhase.FAILED: frozenset(),
    }
)


class VerifyingRecord(SagaRecord[VerifyPhase]):
    """One verification, as kept in `verifying.<job_id>`."""

    KIND: ClassVar[str] = "verifying"
    PHASES: ClassVar[Transitions[Any]] = TRANSITIONS

    job_id: uuid.UUID
    command_id: uuid.UUID
    database: DatabaseRef
    backup_id: str
    manifest_key: str
    node: str

    @property
    def saga_id(self) -> uuid.UUID:
        return self.job_id


class Verification:
    kind = VerifyingRecord.KIND
    record = VerifyingRecord
    prefix = "verifying."

    def key(self, saga_id: uuid.UUID) -> str:
        return f"{self.prefix}{saga_id}"

    def __init__(self, ctx: PlannerContext) -> None:
        self.ctx = ctx
        #: database uid → epoch seconds of its newest good verification (the gauge's source).
        self.last_ok: dict[str, float] = {}

    def verified(self) -> dict[str, float]:
        return dict(self.last_ok)

    async def prime(self) -> None:
        """Read the recorded verdicts, so a restarted planner reports what it knew."""
        for key in await self.ctx.plans.keys("verify."):
            record = await self.ctx.plans.get(key, VerifyRecord)
            if record is not None:
                self._remember(record.value.verified, key.removeprefix("verify."))

    def _remember(self, verdict: BackupVerified, uid: str) -> None:
        if verdict.ok:
            at = verdict.verified_at.timestamp()
            self.last_ok[uid] = max(at, self.last_ok.get(uid, at))

    async def run(self, record: PolicyRecord, kind: str, minute: datetime) -> None:
        uid = record.database.uid
        try:
            windows = await self.ctx.catalog.windows(uid)
        except CatalogError as exc:
            if exc.status == 404:
                log.info("verify %s: the catalog has no backup of it yet", uid)
                return
            raise
        candidates = [b for b in windows.backups if b.manifest_key]
        if not candidates:
            log.info("verify %s: no backup to verify yet", uid)
            return
        newest = max(candidates, key=lambda b: b.completed_at)
        assert newest.manifest_key is not None
        try:
            node = await self.ctx.route(uid, record.policy.node)
        except Refused as refused:
            log.warning("verify %s skipped: %s", uid, refused.refusal.reason)
            return
        command_id = slot_command_id(uid, kind, minute)
        job_id = step_id(command_id, "job")
        now = self.ctx.clock.now()
        saga = VerifyingRecord(
            job_id=job_id,
            command_id=command_id,
            database=record.database,
            databases=[uid],
            backup_id=newest.backup_id,
            manifest_key=newest.manifest_key,
            node=node,
            jobs={"verify": job_id},
            phase=VerifyPhase.DISPATCHING,
            created_at=now,
            updated_at=now,
        )
        with contextlib.suppress(Conflict):  # the slot re-published: the same saga
            await self.ctx.plans.create(self.key(job_id), saga)
        await self.ctx.sagas.advance(saga.ref)

    async def step(self, record: VerifyingRecord, revision: int) -> Outcome:
        if record.phase is not VerifyPhase.DISPATCHING:
            return Idle()
        await self.ctx.sagas.bind_job(record.ref, record.job_id)
        await self.ctx.send(
            RunVerify(
                job_id=record.job_id,
                backup_id=record.backup_id,
                manifest_key=record.manifest_key,
            ),
            record.database,
            message_id=record.command_id,
            correlation_id=record.command_id,
            node=record.node,
        )
        log.info(
            "verify of %s backup %s sent to %s",
            record.database.uid,
            record.backup_id,
            record.node,
        )
        return Move(VerifyPhase.RUNNING)

    async def fail(self, record: VerifyingRecord, revision: int, refusal: Refusal) -> None:
        failure = Failure(reason=refusal.reason[:2000], code=refusal.code)
        with contextlib.suppress(IllegalTransition):
            await self.ctx.sagas.write(self, record, revision, VerifyPhase.FAILED, failure=failure)

    async def announce(self, record: VerifyingRecord) -> None:
        return None  # the verdict itself (`backup.verified`) is the executor's to publish

    async def on_end(self, job_id: uuid.UUID, failure: Failure | None) -> None:
        """The verification's job ended: a verdict came (completed) or it could not run."""

        async def attempt() -> None:
            current = await self.ctx.plans.get(self.key(job_id), VerifyingRecord)
            if current is None or current.value.final:
                return
            record, revision = current.value, current.revision
            if record.phase is VerifyPhase.DISPATCHING:
                record = await self.ctx.sagas.write(self, record, revision, VerifyPhase.RUNNING)
                current = await self.ctx.plans.get(self.key(job_id), VerifyingRecord)
                assert current is not None
                record, revision = current.value, current.revision
            to = VerifyPhase.COMPLETED if failure is None else VerifyPhase.FAILED
            await self.ctx.sagas.write(self, record, revision, to, failure=failure)

        await until_written(attempt, f"verification {job_id}")

    async def on_verified(self, event: Envelope[BackupVerified]) -> None:
        """Keep the newest verdict (by `verified_at`): a late redelivery of an older one must
        not hide a newer failure."""
        if event.database is None:
            return
        if await self.ctx.sagas.owner_of(event.data.job_id) is not None:
            await self.on_end(event.data.job_id, None)
        self._remember(event.data, event.database.uid)
        key = verify_key(event.database.uid)
        current = await self.ctx.plans.get(key, VerifyRecord)
        if current is not None and current.value.verified.verified_at > event.data.verified_at:
            return
        record = VerifyRecord(
            event_id=event.id, verified=event.data, recorded_at=self.ctx.clock.now()
        )
        await self.ctx.plans.put(key, record)
