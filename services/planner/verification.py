"""Verification: on `verify_cron`, prove the newest backup restorable by having the executor
restore it to scratch (`backup.verify`), and keep the latest verdict in `verify.<uid>` for the
timeline page.

The slot's command id is the `backup.verify` envelope's id and the job id derives from it, so
a re-published slot is one job.
"""

from __future__ import annotations

import logging
from datetime import datetime

from schemas import Envelope
from schemas.messages import BackupVerified, RunVerify
from services.catalog.client import CatalogError
from services.planner.context import PlannerContext
from services.planner.errors import Refused
from services.planner.keys import slot_command_id, step_id, verify_key
from services.planner.records import PolicyRecord, VerifyRecord

log = logging.getLogger("tidemark.planner")


class Verification:
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
        await self.ctx.send(
            RunVerify(
                job_id=step_id(command_id, "job"),
                backup_id=newest.backup_id,
                manifest_key=newest.manifest_key,
            ),
            record.database,
            message_id=command_id,
            correlation_id=command_id,
            node=node,
        )
        log.info("verify of %s backup %s sent to %s", uid, newest.backup_id, node)

    async def on_verified(self, event: Envelope[BackupVerified]) -> None:
        """Keep the newest verdict (by `verified_at`): a late redelivery of an older one must
        not hide a newer failure."""
        if event.database is None:
            return
        self._remember(event.data, event.database.uid)
        key = verify_key(event.database.uid)
        current = await self.ctx.plans.get(key, VerifyRecord)
        if current is not None and current.value.verified.verified_at > event.data.verified_at:
            return
        record = VerifyRecord(
            event_id=event.id, verified=event.data, recorded_at=self.ctx.clock.now()
        )
        await self.ctx.plans.put(key, record)
