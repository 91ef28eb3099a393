"""The scheduler: each policy's `full_cron`, `incremental_cron` and `verify_cron`, emitted
exactly once per (database, kind, minute), however many planner replicas run.

Every `tick_s` each replica asks, per policy and kind, for the latest minute the cron matches
at or before now, no older than `catchup_grace_s` and not before the policy was first set.
For that slot it:

1. claims `sched.<uid>.<kind>.<YYYYMMDDHHMM>` with `kv.create` — exactly one replica wins;
2. publishes the slot's command under an id derived from the slot key (`Nats-Msg-Id`);
3. marks the slot `emitted`.

A replica that sees a slot still `claimed` (its claimer died between 1 and 3) publishes it
again: the id is the same, so JetStream's duplicate window keeps one copy, and beyond that
window the backup's lock and id (both functions of the command id) make the repeat a no-op.

**Catch-up.** Because each tick looks at the *latest* matching minute within the grace period,
a planner that was down at 01:00 and is back at 01:40 still takes the 01:00 backup; one back at
02:05 (grace 1 h) does not, and two missed slots are caught up as one. A scheduled backup is a
`backup.request` to the planner itself (so it takes the same path as a person's, lock and all);
a scheduled verification is sent to the executor directly (`verification.py`).

**Reading the policies.** A tick reads them from memory: `run` keeps a `KeyMirror` of
`policy.*`, one long-lived watch merged with the server's listing and re-listed every
`policy_resync_s` (`services/bus/mirror.py` says how it catches up and what it does when the
watch misses). Listing every policy every second in every replica was a JetStream request per
key per tick, and the first tick after a server loss waited out a 5-second timeout. A policy
the watch missed is seen at the next re-listing at the latest: well inside the catch-up grace,
so its slot is still emitted. Without a running mirror (`tick()` called alone, or the watch
could not be opened yet) a tick lists the policies from the server as before.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from datetime import datetime, timedelta

from pydantic import ValidationError

from schemas.messages import BackupKind, BackupSpec, RequestBackup
from services.bus.mirror import KeyMirror
from services.planner.context import PlannerContext
from services.planner.cron import CronError, CronSchedule, latest_match
from services.planner.keys import minute_stamp, slot_command_id, slot_key
from services.planner.policies import Policies
from services.planner.records import PolicyRecord, SlotRecord, SlotState
from services.planner.store import Conflict

log = logging.getLogger("tidemark.planner")

Emit = Callable[[PolicyRecord, str, datetime], Awaitable[None]]


def due_slots(record: PolicyRecord, now: datetime, grace: timedelta) -> list[tuple[str, datetime]]:
    """The (kind, minute) slots a policy owes at `now`: per kind, the latest matching minute
    within the grace period and not before the policy existed."""
    policy = record.policy
    crons = {
        "full": policy.full_cron,
        "incremental": policy.incremental_cron,
        "verify": policy.verify_cron,
    }
    since = record.since.replace(second=0, microsecond=0)
    due = []
    for kind, expression in crons.items():
        if expression is None:
            continue
        try:
            schedule = CronSchedule.parse(expression)
        except CronError as exc:
            log.error("policy of %s: %s cron %r: %s", record.database.uid, kind, expression, exc)
            continue
        minute = latest_match(schedule, now, lookback=grace)
        if minute is not None and minute >= since:
            due.append((kind, minute))
    return due


class Scheduler:
    def __init__(self, ctx: PlannerContext, policies: Policies, verify: Emit) -> None:
        self.ctx = ctx
        self.policies = policies
        self.verify = verify
        self._done: set[str] = set()
        """Slots this process knows are emitted: no KV round trip for them every tick."""
        self.mirror: KeyMirror | None = None

    @property
    def grace(self) -> timedelta:
        return timedelta(seconds=self.ctx.settings.catchup_grace_s)

    async def run(self, stop: asyncio.Event) -> None:
        try:
            while not stop.is_set():
                if self.mirror is None:
                    await self._start_mirror()
                try:
                    await self.tick()
                except Exception as exc:  # NATS restarting, catalog away: the next tick retries
                    log.warning("scheduler tick failed: %s", exc)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), self.ctx.settings.tick_s)
        finally:
            if self.mirror is not None:
                await self.mirror.stop()
                self.mirror = None

    async def _start_mirror(self) -> None:
        mirror = KeyMirror(self.ctx.plans.kv, "policy.", resync_s=self.ctx.settings.policy_resync_s)
        try:
            await mirror.start()
        except Exception as exc:  # NATS away: this tick lists, the next one tries again
            await mirror.stop()
            log.warning("scheduler: cannot watch the policies yet (%r); listing them", exc)
            return
        self.mirror = mirror

    async def _policies(self) -> list[PolicyRecord]:
        if self.mirror is None or not self.mirror.ready:
            return await self.policies.all()
        records = []
        for key, value in sorted(self.mirror.values().items()):
            try:
                records.append(PolicyRecord.model_validate_json(value))
            except ValidationError as exc:
                log.error("unreadable policy %s: %s", key, exc)
        return records

    async def tick(self) -> int:
        """Emit every slot due now. Returns how many this replica emitted."""
        now = self.ctx.clock.now()
        emitted = 0
        for record in await self._policies():
            for kind, minute in due_slots(record, now, self.grace):
                if await self.emit_slot(record, kind, minute):
                    emitted += 1
        self._forget_before(now - self.grace - timedelta(minutes=1))
        return emitted

    async def emit_slot(self, record: PolicyRecord, kind: str, minute: datetime) -> bool:
        uid = record.database.uid
        key = slot_key(uid, kind, minute)
        if key in self._done:
            return False
        command_id = slot_command_id(uid, kind, minute)
        claim = SlotRecord(
            state=SlotState.CLAIMED,
            command_id=command_id,
            by=self.ctx.source,
            claimed_at=self.ctx.clock.now(),
        )
        try:
            revision = await self.ctx.plans.create(key, claim)
        except Conflict:
            found = await self.ctx.plans.get(key, SlotRecord)
            if found is None or found.value.state is SlotState.EMITTED:
                self._done.add(key)
                return False
            # Claimed but not marked emitted: the claimer may have died before publishing.
            # Publishing again is safe (same id); see the module docstring.
            revision = found.revision
            log.info("slot %s was claimed but not emitted; publishing it again", key)
        if kind == "verify":
            await self.verify(record, kind, minute)
        else:
            await self._backup(record, kind, minute)
        emitted = claim.model_copy(update={"state": SlotState.EMITTED})
        with contextlib.suppress(Conflict):  # a peer re-published and marked it first
            await self.ctx.plans.update(key, emitted, last=revision)
        self._done.add(key)
        log.info("scheduled %s of %s for %s emitted", kind, uid, minute_stamp(minute))
        return True

    async def _backup(self, record: PolicyRecord, kind: str, minute: datetime) -> None:
        policy = record.policy
        spec = BackupSpec(
            kind=BackupKind.INCREMENTAL if kind == "incremental" else BackupKind.FULL,
            compression=policy.compression,
        )
        cron = policy.incremental_cron if kind == "incremental" else policy.full_cron
        command_id = slot_command_id(record.database.uid, kind, minute)
        await self.ctx.send(
            RequestBackup(
                spec=spec, reason=f"scheduled {kind} ({cron}) at {minute:%Y-%m-%d %H:%M}Z"
            ),
            record.database,
            message_id=command_id,
            correlation_id=command_id,
            # The slot's minute, not the wall clock: the backup id is derived from it, so a
            # re-publish after a crash names the same backup.
            occurred_at=minute,
        )

    def _forget_before(self, horizon: datetime) -> None:
        stamp = minute_stamp(horizon)
        self._done = {k for k in self._done if k.rsplit(".", 1)[-1] >= stamp}
