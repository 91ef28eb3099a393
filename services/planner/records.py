"""What the planner keeps in `tm_plans`, one pydantic model per key family (see `keys.py`).

These are the planner's own state, not the wire contract: they may change between releases as
long as a newer planner still reads what an older one wrote (new fields get defaults).
"""

from __future__ import annotations

import uuid
from datetime import datetime
from enum import StrEnum

from pydantic import BaseModel, ConfigDict, Field

from schemas import DatabaseRef
from schemas.messages import BackupPolicy, BackupVerified
from services.planner.sagas.record import SagaRef


class _Record(BaseModel):
    # Tolerant on read: a record written by a newer planner must not wedge an older one.
    model_config = ConfigDict(extra="ignore")


class PolicyRecord(_Record):
    database: DatabaseRef
    policy: BackupPolicy
    since: datetime = Field(description="first set; slots before this were never owed")
    updated_at: datetime
    command_id: uuid.UUID = Field(description="the SetPolicy that wrote this revision")


class Lock(_Record):
    """Who is running on a database. Backups, restores and every other saga take the same
    lock, so a restore never overwrites a database that a backup is reading, and a backup never
    copies one that a restore is rewriting. A saga that touches several databases (a migration:
    source and target) holds the lock of each, all naming it as their holder."""

    kind: str = Field(description="what holds it: backup, restore, or another saga kind")
    holder: SagaRef | None = Field(default=None, description="the saga holding it, if a saga")
    job_id: uuid.UUID
    node: str
    backup_id: str | None = None
    restore_id: uuid.UUID | None = None
    command_id: uuid.UUID
    taken_at: datetime


class SlotState(StrEnum):
    CLAIMED = "claimed"
    """A planner won the slot; its command may or may not be published yet."""
    EMITTED = "emitted"
    """The command is in TM_CMD; nothing is left to do for this slot."""


class SlotRecord(_Record):
    state: SlotState
    command_id: uuid.UUID
    by: str
    claimed_at: datetime


class VerifyRecord(_Record):
    """The latest verification of a database, for the timeline page."""

    event_id: uuid.UUID
    verified: BackupVerified
    recorded_at: datetime
