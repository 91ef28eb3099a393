"""Backups: a `backup.request` (from a person or a schedule) becomes `backup.run` on the node
that hosts the database, under the database's lock.

Every id is a function of the command: the job id, the backup id
(`<UTC yyyymmddThhmmss>-<8 hex of the command id>`, the time being the command's
`occurred_at`, which for a scheduled backup is the slot's minute), and the ids of everything
published. A redelivered request finds its own lock, publishes the same messages again (kept
once by JetStream) and answers again.
"""

from __future__ import annotations

import logging
from typing import Any

from schemas import Envelope
from schemas.messages import (
    BackupKind,
    BackupRequested,
    RequestBackup,
    RunBackup,
)
from services.catalog.client import CatalogError
from services.planner.context import PlannerContext, require_database
from services.planner.keys import backup_id_for, policy_key, step_id
from services.planner.locks import held_lock, release_lock, take_lock
from services.planner.records import Lock, PolicyRecord

log = logging.getLogger("tidemark.planner")


class Backups:
    def __init__(self, ctx: PlannerContext) -> None:
        self.ctx = ctx

    async def request(self, command: Envelope[RequestBackup]) -> None:
        database = require_database(command)
        uid = database.uid
        policy = await self.ctx.plans.get(policy_key(uid), PolicyRecord)
        preferred = policy.value.policy.node if policy else None
        node = await self.ctx.route(uid, preferred)
        job_id = step_id(command.id, "job")
        backup_id = backup_id_for(command.id, command.occurred_at)
        await take_lock(
            self.ctx.plans,
            uid,
            Lock(
                kind="backup",
                job_id=job_id,
                node=node,
                backup_id=backup_id,
                command_id=command.id,
                taken_at=self.ctx.clock.now(),
            ),
        )
        spec = command.data.spec
        parent = await self._parent(uid) if spec.kind is BackupKind.INCREMENTAL else None
        await self.ctx.send(
            RunBackup(job_id=job_id, backup_id=backup_id, spec=spec, parent_backup_id=parent),
            database,
            message_id=step_id(command.id, "run"),
            correlation_id=command.correlation_id,
            causation_id=command.id,
            node=node,
        )
        await self.ctx.send(
            BackupRequested(backup_id=backup_id, spec=spec, node=node, reason=command.data.reason),
            database,
            message_id=step_id(command.id, "requested"),
            correlation_id=command.correlation_id,
            causation_id=command.id,
        )
        await self.ctx.accept(
            command, backup_id, f"{spec.kind.value} backup {backup_id} on {node} (job {job_id})"
        )
        log.info("backup %s of %s sent to %s", backup_id, uid, node)

    async def _parent(self, uid: str) -> str | None:
        """The newest full backup an incremental builds on; None lets the engine choose."""
        try:
            windows = await self.ctx.catalog.windows(uid)
        except CatalogError:
            return None
        fulls = [b for b in windows.backups if b.kind == BackupKind.FULL.value]
        return max(fulls, key=lambda b: b.completed_at).backup_id if fulls else None

    async def on_end(self, event: Envelope[Any]) -> None:
        """A backup's job ended (`job.succeeded`/`job.failed`, or `backup.completed`/
        `backup.failed`): free the database. Whichever arrives first releases the lock; the
        others find it gone, or held by someone else, and do nothing."""
        if event.database is None:
            return
        held = await held_lock(self.ctx.plans, event.database.uid)
        if held is None or held.value.kind != "backup":
            return
        data = event.data
        job_id = getattr(data, "job_id", None)
        backup_id = getattr(data, "backup_id", None)
        if job_id == held.value.job_id or (backup_id and backup_id == held.value.backup_id):
            await release_lock(self.ctx.plans, event.database.uid, held.value.job_id)
