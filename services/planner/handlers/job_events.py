"""The planner's durable consumer on TM_EVT: what executors report, routed to the saga or the
backup that waits for it.

    job.accepted / job.progress   → the restore holding the database's lock: running, progress
    job.* of a migration step     → the migration saga that sent it (by job id)
    job.succeeded / job.failed    → that restore ends, or that backup's lock is released
    backup.completed / .failed    → the backup's lock is released (if the job event was lost)
    restore.completed             → recorded on the restore (and ends it, if first)
    backup.verified               → `verify.<uid>`

A saga's jobs are matched to it by job id (`job.<job_id>`, written before the job is sent);
a backup's through `lock.<uid>`, which names the job running on the database. Events of jobs
the planner did not start (a verification, an operator's own run) match nothing and are
acked. The consumer starts at new messages when first created; after that the server keeps its
position, so a planner that was down receives what it missed (this is how a dispatched restore
survives a planner restart). Ack policy: ack once the KV write is done; a KV conflict storm or
NATS error naks and redelivers, and every handler is idempotent.
"""

from __future__ import annotations

from typing import Any

from schemas import Envelope
from schemas.messages import (
    BackupCompleted,
    BackupFailed,
    BackupVerified,
    JobAccepted,
    JobFailed,
    JobProgress,
    JobSucceeded,
    RestoreCompleted,
)
from services.bus import Delivery, Handler
from services.planner.backups import Backups
from services.planner.context import PlannerContext
from services.planner.locks import held_lock
from services.planner.migrations import Migrations
from services.planner.restores import Restores
from services.planner.verification import Verification

EVENTS_DURABLE = "planner-events"
EVENT_SUBJECTS = [
    "tm.evt.job.>",
    "tm.evt.backup.completed.>",
    "tm.evt.backup.failed.>",
    "tm.evt.backup.verified.>",
    "tm.evt.restore.completed.>",
]


class Events:
    def __init__(
        self,
        ctx: PlannerContext,
        backups: Backups,
        restores: Restores,
        verification: Verification,
        migrations: Migrations,
    ) -> None:
        self.ctx = ctx
        self.backups = backups
        self.restores = restores
        self.verification = verification
        self.migrations = migrations

    def handlers(self) -> dict[Any, Handler]:
        return {
            JobAccepted: self.on_job,
            JobProgress: self.on_job,
            JobSucceeded: self.on_job,
            JobFailed: self.on_job,
            BackupCompleted: self.on_backup_end,
            BackupFailed: self.on_backup_end,
            RestoreCompleted: self.on_restore_completed,
            BackupVerified: self.on_verified,
        }

    async def on_job(self, event: Envelope[Any], delivery: Delivery) -> None:
        owner = await self.ctx.sagas.owner_of(event.data.job_id)
        if owner is not None and owner.kind == Restores.kind:
            await self.restores.on_job(event, owner.id)
            return
        if owner is not None and owner.kind == Migrations.kind:
            await self.migrations.on_job(event, owner.id)
            return
        if owner is not None and owner.kind == Verification.kind:
            if isinstance(event.data, JobFailed):
                await self.verification.on_end(event.data.job_id, event.data.failure)
            return
        if owner is not None and owner.kind == Backups.kind:
            if isinstance(event.data, JobSucceeded | JobFailed):
                await self.backups.on_end(event)
            return
        if event.database is None:
            return
        held = await held_lock(self.ctx.plans, event.database.uid)
        if held is None or held.value.job_id != event.data.job_id:
            return
        if held.value.kind == Restores.kind and held.value.restore_id is not None:
            # A restore dispatched before jobs were bound to their saga: found by its lock.
            await self.restores.on_job(event, held.value.restore_id)
        elif isinstance(event.data, JobSucceeded | JobFailed):
            await self.backups.on_end(event)

    async def on_backup_end(self, event: Envelope[Any], delivery: Delivery) -> None:
        await self.backups.on_end(event)

    async def on_restore_completed(
        self, event: Envelope[RestoreCompleted], delivery: Delivery
    ) -> None:
        await self.restores.on_completed(event)

    async def on_verified(self, event: Envelope[BackupVerified], delivery: Delivery) -> None:
        await self.verification.on_verified(event)
