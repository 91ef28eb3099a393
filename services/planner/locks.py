"""One lock per database (`lock.<uid>`): a backup and a restore of one database never run at
once. Taken with `create` (exactly one taker wins), released by the job's end event with a
delete conditional on the revision read, so a release can never remove a newer holder's lock.

A second request while the lock is held is refused (`TM-PLAN-BUSY`), not queued: a queued
backup that starts minutes after a restore would copy a database the operator may not have
looked at yet, and a refusal tells the caller now instead of surprising them later. A
scheduled backup refused this way is skipped; the next slot takes it.
"""

from __future__ import annotations

import logging
import uuid

from services.planner.errors import BUSY, Refusal, Refused
from services.planner.keys import lock_key
from services.planner.records import Lock
from services.planner.store import Conflict, PlanStore, Versioned

log = logging.getLogger("tidemark.planner")


async def take_lock(plans: PlanStore, uid: str, lock: Lock) -> None:
    """Take the database's lock for `lock`'s command, or refuse. Taking it again for the same
    command (a redelivery) succeeds."""
    key = lock_key(uid)
    while True:
        try:
            await plans.create(key, lock)
            return
        except Conflict:
            held = await plans.get(key, Lock)
            if held is None:
                continue  # released between our create and get: try again
            if held.value.command_id == lock.command_id:
                return
            raise Refused(busy(uid, held.value)) from None


async def take_locks(plans: PlanStore, uids: list[str], lock: Lock) -> None:
    """Take the lock of every database in `uids` for one holder, or none of them: a saga that
    touches a source and a target must never run holding only one. Taken in sorted order, so
    two sagas reaching for the same pair cannot each hold one and wait for the other."""
    taken: list[str] = []
    try:
        for uid in sorted(set(uids)):
            await take_lock(plans, uid, lock)
            taken.append(uid)
    except BaseException:
        for uid in taken:
            await release_lock(plans, uid, lock.job_id)
        raise


async def release_locks(plans: PlanStore, uids: list[str], job_id: uuid.UUID) -> None:
    for uid in sorted(set(uids)):
        await release_lock(plans, uid, job_id)


def busy(uid: str, held: Lock) -> Refusal:
    if held.kind == "backup":
        what = f"backup {held.backup_id}"
    elif held.kind == "restore":
        what = f"restore {held.restore_id}"
    else:
        what = str(held.holder) if held.holder else held.kind
    return Refusal(
        f"database {uid!r} is busy: {what} (job {held.job_id}) is running on {held.node} since "
        f"{held.taken_at:%Y-%m-%d %H:%M:%S}Z; a backup and a restore of one database never run "
        "at once — try again when it has finished",
        BUSY,
    )


async def held_lock(plans: PlanStore, uid: str) -> Versioned[Lock] | None:
    return await plans.get(lock_key(uid), Lock)


async def release_lock(plans: PlanStore, uid: str, job_id: uuid.UUID) -> bool:
    """Release the lock if `job_id` holds it. True if this call released it."""
    held = await held_lock(plans, uid)
    if held is None or held.value.job_id != job_id:
        return False
    released = await plans.delete(lock_key(uid), last=held.revision)
    if released:
        log.info("released lock of %s held by job %s", uid, job_id)
    return released
