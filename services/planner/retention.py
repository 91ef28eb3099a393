"""Retention: keep each policy's recovery window, delete what falls out of it.

Every `retention_interval_s` one replica (the one that claims `retention.<uid>.<period>` with
`create`) asks the catalog for a preview (`retention(db, recovery_window_days)`) and deletes
only the backups the preview lists, and only when the preview names the base that keeps the
oldest wanted moment restorable (`oldest_kept_base`): no base, no deletion, whatever else the
preview says.

A backup is deleted manifest first, then its pieces: once the manifest is gone the backup is
no longer a base for anyone (the catalog's rebuild ignores a prefix without a manifest), so a
crash half-way leaves orphan pieces, never a manifest pointing at missing ones. Then
`backup.deleted` is published and the catalog drops it.

**Logs are left in place.** The preview gives a count of deletable logs, not their keys; the
planner does not guess keys from a listing. Deleting old logs is a follow-up (a key list in the
preview). The old slot claims (`sched.*` older than twice the grace) are purged here too.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from datetime import datetime, timedelta

from schemas.messages import BackupDeleted
from services.blobstore import BlobStore, ObjectNotFound
from services.catalog.client import CatalogError
from services.planner.context import PlannerContext
from services.planner.keys import derived_id, minute_stamp, retention_key
from services.planner.policies import Policies
from services.planner.records import PolicyRecord, SlotRecord, SlotState
from services.planner.store import Conflict

log = logging.getLogger("tidemark.planner")


class Retention:
    def __init__(self, ctx: PlannerContext, policies: Policies, store: BlobStore | None) -> None:
        self.ctx = ctx
        self.policies = policies
        self.store = store

    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            try:
                await self.apply_all()
            except Exception as exc:
                log.warning("retention pass failed: %s", exc)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), self.ctx.settings.retention_interval_s)

    def period_start(self, now: datetime) -> datetime:
        interval = self.ctx.settings.retention_interval_s
        epoch = datetime(2000, 1, 1, tzinfo=now.tzinfo)
        periods = int((now - epoch).total_seconds() // interval)
        return (epoch + timedelta(seconds=periods * interval)).replace(second=0, microsecond=0)

    async def apply_all(self) -> int:
        now = self.ctx.clock.now()
        deleted = 0
        for record in await self.policies.all():
            key = retention_key(record.database.uid, self.period_start(now))
            claim = SlotRecord(
                state=SlotState.CLAIMED,
                command_id=derived_id(key),
                by=self.ctx.source,
                claimed_at=now,
            )
            try:
                await self.ctx.plans.create(key, claim)
            except Conflict:
                continue  # this period's pass is another replica's, or done
            deleted += await self.apply(record)
        await self.prune_slots(now)
        return deleted

    async def apply(self, record: PolicyRecord) -> int:
        uid = record.database.uid
        try:
            preview = await self.ctx.catalog.retention(uid, record.policy.recovery_window_days)
            windows = await self.ctx.catalog.windows(uid)
        except CatalogError as exc:
            log.info("retention of %s skipped: %s", uid, exc.error)
            return 0
        if preview.oldest_kept_base is None or not preview.delete_backups:
            return 0
        if not self.ctx.settings.retention_enabled or self.store is None:
            log.info("retention of %s would delete %s", uid, preview.delete_backups)
            return 0
        manifests = {b.backup_id: b.manifest_key for b in windows.backups}
        deleted = 0
        for backup_id in preview.delete_backups:
            if backup_id == preview.oldest_kept_base:
                continue  # never, whatever the preview's lists say
            manifest = manifests.get(backup_id)
            if manifest is None:
                log.warning("retention of %s: backup %s has no manifest key", uid, backup_id)
                continue
            await self._delete_backup(manifest)
            await self.ctx.send(
                BackupDeleted(
                    backup_id=backup_id,
                    manifest_key=manifest,
                    reason=(
                        f"outside the {record.policy.recovery_window_days:g}-day recovery window;"
                        f" {preview.oldest_kept_base} keeps its start restorable"
                    ),
                ),
                record.database,
                message_id=derived_id(uid, backup_id, "deleted"),
                correlation_id=derived_id(uid, backup_id, "retention"),
            )
            deleted += 1
            log.info("retention of %s deleted backup %s", uid, backup_id)
        return deleted

    async def _delete_backup(self, manifest_key: str) -> None:
        assert self.store is not None
        with contextlib.suppress(ObjectNotFound):
            await self.store.delete(manifest_key)
        prefix = manifest_key.rsplit("/", 1)[0] + "/"
        async for info in self.store.list(prefix):
            with contextlib.suppress(ObjectNotFound):
                await self.store.delete(info.key)

    async def prune_slots(self, now: datetime) -> None:
        """Purge claims older than twice the grace (or the retention interval): the scheduler
        never looks that far back, so such a slot can never be claimed again."""
        settings = self.ctx.settings
        keep = max(settings.catchup_grace_s, settings.retention_interval_s)
        horizon = minute_stamp(now - 2 * timedelta(seconds=keep))
        for key in await self.ctx.plans.keys("sched."):
            if key.rsplit(".", 1)[-1] < horizon:
                await self.ctx.plans.purge(key)
        for key in await self.ctx.plans.keys("retention."):
            if key.rsplit(".", 1)[-1] < horizon:
                await self.ctx.plans.purge(key)
