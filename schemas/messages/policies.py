"""Backup policies and the planner's answers to requests.

A policy says, per database, when to take full and incremental backups, how far back restores
must reach (the recovery window) and how often the newest base is proven restorable. The
planner keeps policies in KV and acts on them; every request it gets is answered with
`request.accepted` or `request.rejected`, correlated by the request's command id.
"""

from __future__ import annotations

import uuid
from typing import Annotated, ClassVar

from pydantic import AfterValidator, Field, StringConstraints

from schemas._base import NodeName, StrictModel, UtcDateTime
from schemas.envelope import Command, Event
from schemas.messages.common import Compression, ErrorCode, Reason
from schemas.positions import Position

_CRON_FIELD = r"[0-9*,/-]+"


def _check_cron(value: str) -> str:
    fields = value.split()
    if len(fields) != 5:
        raise ValueError("a schedule is 5 cron fields: minute hour day-of-month month day-of-week")
    return " ".join(fields)


CronExpr = Annotated[
    str,
    StringConstraints(max_length=120, pattern=rf"^\s*{_CRON_FIELD}(\s+{_CRON_FIELD}){{4}}\s*$"),
    AfterValidator(_check_cron),
]
"""Five cron fields, UTC: `minute hour day-of-month month day-of-week` (`0 1 * * 0`)."""


class BackupPolicy(StrictModel):
    """How one database is protected. Times are UTC."""

    full_cron: CronExpr = Field(
        default="0 1 * * *", description="when to take a full backup (RMAN level 0, base backup)"
    )
    incremental_cron: CronExpr | None = Field(
        default=None, description="when to take an incremental (RMAN level 1); Oracle only"
    )
    recovery_window_days: float = Field(
        default=7.0, gt=0, le=3650, description="restores must reach this far back"
    )
    verify_cron: CronExpr | None = Field(
        default="0 3 * * *", description="when to verify the newest base; none: never"
    )
    compression: Compression = Compression.NONE
    node: NodeName | None = Field(
        default=None, description="run backups here; default: the node that hosts the database"
    )


class SetPolicy(Command):
    """Create, replace or (with `policy` null) remove a database's backup policy."""

    TYPE: ClassVar[str] = "policy.set"
    SUBJECT: ClassVar[str] = "tm.cmd.planner.any.policy"
    SUMMARY: ClassVar[str] = "Set (or with null, remove) the backup policy of a database."

    policy: BackupPolicy | None


class PolicyChanged(Event):
    TYPE: ClassVar[str] = "policy.changed"
    SUBJECT: ClassVar[str] = "tm.evt.policy.changed.{database}"
    SUMMARY: ClassVar[str] = "A database's backup policy was set or removed."

    policy: BackupPolicy | None
    revision: int = Field(ge=0, description="the policy's KV revision")


class CancelRequest(Command):
    """Ask the planner to stop a restore or a backup it is running."""

    TYPE: ClassVar[str] = "request.cancel"
    SUBJECT: ClassVar[str] = "tm.cmd.planner.any.cancel"
    SUMMARY: ClassVar[str] = "Cancel a restore or backup the planner is running."

    target_id: uuid.UUID = Field(description="the restore id or backup job id to stop")
    reason: Reason = "cancelled on request"


class RequestAccepted(Event):
    TYPE: ClassVar[str] = "request.accepted"
    SUBJECT: ClassVar[str] = "tm.evt.request.accepted.{database}"
    SUMMARY: ClassVar[str] = "The planner took a request; follow its work by `ref_id`."

    command_id: uuid.UUID
    command_type: Annotated[str, StringConstraints(max_length=64)]
    ref_id: Annotated[str, StringConstraints(max_length=100)] | None = Field(
        default=None, description="what to follow: a restore id, a backup id"
    )
    message: Annotated[str, StringConstraints(max_length=500)] = ""


class RequestRejected(Event):
    """A request was refused and nothing was changed. `reason` says exactly what was wrong."""

    TYPE: ClassVar[str] = "request.rejected"
    SUBJECT: ClassVar[str] = "tm.evt.request.rejected.{database}"
    SUMMARY: ClassVar[str] = "The planner refused a request; nothing was changed."

    command_id: uuid.UUID
    command_type: Annotated[str, StringConstraints(max_length=64)]
    reason: Reason
    code: ErrorCode | None = None
    nearest_before: Position | None = None
    nearest_before_time: UtcDateTime | None = None
    nearest_after: Position | None = None
    nearest_after_time: UtcDateTime | None = None


class PolicyRequest(StrictModel):
    """`tm.qry.planner.policy`: the database's policy, if any."""

    database: Annotated[str, StringConstraints(min_length=1, max_length=63)]


class PolicyReply(StrictModel):
    database: str
    policy: BackupPolicy | None
    revision: int | None = None
