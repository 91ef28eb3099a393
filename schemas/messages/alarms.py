"""Alarms: facts an operator must act on. The archiver raises them when it refuses to archive."""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated, ClassVar

from pydantic import Field, StringConstraints

from schemas._base import Crc32c, NodeName, ObjectKey
from schemas.envelope import Event
from schemas.messages.common import Reason


class AlarmReason(StrEnum):
    """Why the archiver refused (or could not) archive something. Each needs a person."""

    CHECKSUM_CONFLICT = "checksum_conflict"
    """The key already holds a log with a different checksum: two logs claim one name. The
    stored object is never replaced and the local copy is kept for inspection."""

    FOREIGN_ARCHIVE = "foreign_archive"
    """The database's prefix belongs to another database (different engine or system id):
    nothing is written there."""

    UNREADABLE = "unreadable"
    """A completed log could not be read (permissions, I/O error). It is kept and reported,
    and examined again when the file changes."""

    INVALID = "invalid"
    """A file is not a complete log of this database: truncated, another system id, or a
    header that contradicts its name. It is kept and not uploaded."""


class ArchiveAlarm(Event):
    """The archiver refused or could not archive a log; the log stays where it is."""

    TYPE: ClassVar[str] = "archive.alarm"
    SUBJECT: ClassVar[str] = "tm.evt.archive.alarm.{database}"
    SUMMARY: ClassVar[str] = "The archiver refused or could not archive a log; a person must look."

    reason: AlarmReason
    detail: Reason = Field(description="what exactly is wrong, in one sentence")
    node: NodeName
    object_key: ObjectKey | None = None
    path: Annotated[str, StringConstraints(min_length=1, max_length=1024)] | None = Field(
        default=None, description="the local file concerned, if any"
    )
    existing_crc32c: Crc32c | None = Field(default=None, description="what the store holds")
    attempted_crc32c: Crc32c | None = Field(default=None, description="what was to be written")
    owner_system_id: int | None = Field(
        default=None, ge=0, lt=1 << 64, description="system id recorded as the prefix's owner"
    )
