"""Backup policies in `policy.<uid>`: set, removed, read.

A policy write is a compare-and-set on the key's revision, and records the `policy.set` command
that wrote it: a redelivered command finds its own id there and only answers again, so
`policy.changed` is published once per change, with the revision it produced.
"""

from __future__ import annotations

import logging
from typing import Any

from schemas import Envelope
from schemas.messages import PolicyChanged, PolicyReply, SetPolicy
from services.bus import RetryableError
from services.planner.context import PlannerContext, require_database
from services.planner.keys import policy_key, step_id
from services.planner.records import PolicyRecord
from services.planner.store import Conflict, Versioned

log = logging.getLogger("tidemark.planner")


class Policies:
    def __init__(self, ctx: PlannerContext) -> None:
        self.ctx = ctx

    async def get(self, uid: str) -> Versioned[PolicyRecord] | None:
        return await self.ctx.plans.get(policy_key(uid), PolicyRecord)

    async def all(self) -> list[PolicyRecord]:
        records = []
        for key in await self.ctx.plans.keys("policy."):
            found = await self.ctx.plans.get(key, PolicyRecord)
            if found is not None:
                records.append(found.value)
        return records

    async def reply(self, uid: str) -> PolicyReply:
        found = await self.get(uid)
        if found is None:
            return PolicyReply(database=uid, policy=None)
        return PolicyReply(database=uid, policy=found.value.policy, revision=found.revision)

    async def set(self, command: Envelope[SetPolicy]) -> None:
        database = require_database(command)
        uid = database.uid
        await self.ctx.require_known(uid)
        key = policy_key(uid)
        policy = command.data.policy
        for _ in range(10):
            found = await self.get(uid)
            if found is not None and found.value.command_id == command.id:
                revision = found.revision  # our own write, redelivered: answer again
                break
            now = self.ctx.clock.now()
            try:
                if policy is None:
                    if found is None:
                        revision = 0
                        break
                    if not await self.ctx.plans.delete(key, last=found.revision):
                        continue
                    revision = await self.ctx.plans.revision_of(key) or found.revision
                    break
                record = PolicyRecord(
                    database=database,
                    policy=policy,
                    since=found.value.since if found else now,
                    updated_at=now,
                    command_id=command.id,
                )
                if found is None:
                    revision = await self.ctx.plans.create(key, record)
                else:
                    revision = await self.ctx.plans.update(key, record, last=found.revision)
                break
            except Conflict:
                continue
        else:
            raise RetryableError(f"the policy of {uid} kept changing while being set")
        await self._announce(command, policy, revision)

    async def _announce(self, command: Envelope[Any], policy: Any, revision: int) -> None:
        database = require_database(command)
        await self.ctx.send(
            PolicyChanged(policy=policy, revision=revision),
            database,
            message_id=step_id(command.id, "changed"),
            correlation_id=command.correlation_id,
            causation_id=command.id,
        )
        what = "removed" if policy is None else f"set (revision {revision})"
        await self.ctx.accept(command, str(revision), f"policy of {database.uid} {what}")
        log.info("policy of %s %s", database.uid, what)
