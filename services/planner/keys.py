"""Names in the `tm_plans` bucket and the deterministic ids derived from them.

    policy.<uid>                          PolicyRecord (the policy, its database, since when)
    lock.<uid>                            Lock: the one backup or restore running on a database
    restore.<restore_id>                  RestoreRecord: the restore saga's phase and facts
    sched.<uid>.<kind>.<YYYYMMDDHHMM>     SlotRecord: a scheduled slot, claimed once
    verify.<uid>                          the latest BackupVerified of the database
    retention.<uid>.<YYYYMMDDHHMM>        a retention run, claimed once per interval

Ids are derived from a name (a uuid5 hash of it, shaped as the UUIDv7 the envelope requires:
the 48-bit time is the slot's minute or the causing message's own time), so the same slot,
command or step always yields the same id. That id goes out as `Nats-Msg-Id`: a planner that
crashes after claiming a slot and before (or while) publishing can publish again, and
JetStream keeps one copy.
"""

from __future__ import annotations

import uuid
from datetime import datetime

NAMESPACE = uuid.UUID("5d1c7a52-8b0e-4a57-9a43-2f1f4d6c7e01")

SLOT_KINDS = ("full", "incremental", "verify")


def policy_key(uid: str) -> str:
    return f"policy.{uid}"


def lock_key(uid: str) -> str:
    return f"lock.{uid}"


def restore_key(restore_id: uuid.UUID) -> str:
    return f"restore.{restore_id}"


def verify_key(uid: str) -> str:
    return f"verify.{uid}"


def minute_stamp(minute: datetime) -> str:
    return f"{minute:%Y%m%d%H%M}"


def slot_key(uid: str, kind: str, minute: datetime) -> str:
    """The key a scheduled (database, kind, minute) is claimed under with `kv.create`."""
    return f"sched.{uid}.{kind}.{minute_stamp(minute)}"


def retention_key(uid: str, period_start: datetime) -> str:
    return f"retention.{uid}.{minute_stamp(period_start)}"


_MS_MASK = (1 << 48) - 1
_LOW_MASK = (1 << 80) - 1


def derived_id(*parts: object, millis: int = 0) -> uuid.UUID:
    """The same parts always give the same id: a UUIDv7 whose time is `millis` (Unix ms) and
    whose other bits are a uuid5 hash of the parts."""
    digest = uuid.uuid5(NAMESPACE, "/".join(str(p) for p in parts)).int
    value = ((millis & _MS_MASK) << 80) | (digest & _LOW_MASK)
    value &= ~(0xF << 76)
    value |= 0x7 << 76  # version 7
    value &= ~(0x3 << 62)
    value |= 0x2 << 62  # RFC 9562 variant
    return uuid.UUID(int=value)


def millis_of(at: datetime) -> int:
    return int(at.timestamp() * 1000)


def slot_command_id(uid: str, kind: str, minute: datetime) -> uuid.UUID:
    """The envelope id of the command a slot emits (also its `Nats-Msg-Id`)."""
    return derived_id(slot_key(uid, kind, minute), millis=millis_of(minute))


def step_id(cause: uuid.UUID, step: str) -> uuid.UUID:
    """The id of what the planner publishes for `step` of the work `cause` started; it keeps
    the cause's time when the cause is a UUIDv7."""
    millis = cause.int >> 80 if cause.version == 7 else 0
    return derived_id(cause, step, millis=millis)


def backup_id_for(command_id: uuid.UUID, at: datetime) -> str:
    """`<UTC yyyymmddThhmmss>-<8 hex>`: sorts by time, readable in a bucket listing, and the
    same for every delivery of one command (it is a pure function of the command)."""
    # The last 8 hex digits: a UUIDv7 begins with its timestamp, so its first ones repeat for
    # every command of the same minute; its last ones are random.
    return f"{at:%Y%m%dT%H%M%S}-{command_id.hex[-8:]}"
