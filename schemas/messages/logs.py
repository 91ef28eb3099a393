"""Archived logs: an Oracle archived redo log or a PostgreSQL WAL segment, stored and indexed."""

from __future__ import annotations

from typing import Annotated, ClassVar, Literal

from pydantic import Field, StringConstraints, model_validator

from schemas._base import Crc32c, NodeName, ObjectKey, StrictModel, UtcDateTime
from schemas.envelope import Event
from schemas.messages.common import Compression, Reason
from schemas.positions import Lineage, Position, Scn, check_on_lineage

WalFileName = Annotated[
    str,
    StringConstraints(
        pattern=r"^[0-9A-F]{24}(\.partial)?$"
        r"|^[0-9A-F]{8}\.history$"
        r"|^[0-9A-F]{24}\.[0-9A-F]{8}\.backup$"
    ),
]
"""A WAL segment (or the `.partial` left by a promotion), a timeline history file, or a backup
history file (`<segment>.<offset>.backup`, written by pg_backup_stop)."""


class ThreadDisabled(StrictModel):
    """A redo thread disabled on the log's lineage (Oracle: `ALTER DATABASE DISABLE THREAD`;
    V$THREAD ENABLED='DISABLED'), as V$THREAD showed it when the log was found.

    The thread has no redo from `at` (DISABLE_CHANGE#) to `until`, and its last log before the
    disable is `last_sequence`: recovery to a point in `[at, until]` needs none of its redo
    after that log. `until` is the thread's ENABLE_CHANGE# once it was enabled again (its redo
    resumes there), otherwise the database's SCN when V$THREAD still said DISABLED: a later
    report extends it, and the catalog never counts the thread absent past the last one.
    """

    thread: int = Field(ge=1, le=65535)
    last_sequence: int = Field(ge=0, lt=1 << 63)
    at: Scn
    until: Scn

    @model_validator(mode="after")
    def _ordered(self) -> ThreadDisabled:
        if self.until < self.at:
            raise ValueError("until must not precede at: a thread is disabled from `at` on")
        return self


class LogArchived(Event):
    """A completed log is in the object store, verified (crc32c) against what the store holds.

    Covers `[first, next)` on its thread within its lineage. For PostgreSQL the thread is 1 and
    the sequence is the segment number; history files have the timeline id as sequence, a
    timeline history file has no positions, and a backup history file carries the backup's start
    and stop LSN. `size_bytes` and `crc32c` describe the log as the engine wrote
    it; with compression the stored object has its own crc32c, verified by the store.
    """

    TYPE: ClassVar[str] = "log.archived"
    SUBJECT: ClassVar[str] = "tm.evt.log.archived.{database}"
    SUMMARY: ClassVar[str] = "A completed log is stored and verified in the object store."

    lineage: Lineage
    kind: Literal["redo", "wal", "history", "backup_history"]
    thread: int = Field(ge=1, le=65535)
    sequence: int = Field(ge=0, lt=1 << 63)
    first: Position | None = None
    next: Position | None = None
    first_time: UtcDateTime | None = None
    next_time: UtcDateTime | None = None
    size_bytes: int = Field(ge=0)
    crc32c: Crc32c
    compression: Compression = Compression.NONE
    object_key: ObjectKey
    file_name: WalFileName | None = Field(
        default=None, description="PostgreSQL WAL or history file name"
    )
    node: NodeName
    archived_at: UtcDateTime = Field(description="when the engine completed the log")
    stored_at: UtcDateTime = Field(description="when the object store confirmed it")
    enabled_threads: tuple[Annotated[int, Field(ge=1, le=65535)], ...] | None = Field(
        default=None,
        description="the threads enabled on this lineage when the log was archived, as the "
        "engine reports them (Oracle: V$THREAD; PostgreSQL: 1); sorted, and holding `thread`. "
        "Absent from producers that predate it: the catalog then knows only the threads it saw",
    )
    disabled_threads: tuple[ThreadDisabled, ...] | None = Field(
        default=None,
        description="the stretches of this lineage on which a thread was disabled and has no "
        "redo, as the engine reported them when the log was found (Oracle: V$THREAD "
        "DISABLE_CHANGE#, to ENABLE_CHANGE# for a thread enabled again); sorted by thread. "
        "Absent when the engine cannot say (a log of an older incarnation, PostgreSQL, "
        "producers that predate it)",
    )

    @model_validator(mode="after")
    def _consistent(self) -> LogArchived:
        check_on_lineage(self.lineage, self.first, self.next)
        if self.enabled_threads is not None:
            if list(self.enabled_threads) != sorted(set(self.enabled_threads)):
                raise ValueError("enabled_threads must be sorted and without repeats")
            if self.kind in ("redo", "wal") and self.thread not in self.enabled_threads:
                raise ValueError(f"thread {self.thread} is not among enabled_threads")
        if self.disabled_threads:
            if self.lineage.kind != "incarnation":
                raise ValueError("only an Oracle incarnation has threads to disable")
            numbers = [d.thread for d in self.disabled_threads]
            if numbers != sorted(set(numbers)):
                raise ValueError("disabled_threads must be sorted by thread and without repeats")
        if self.kind in ("redo", "wal") and (self.first is None or self.next is None):
            raise ValueError(f"a {self.kind} log needs first and next positions")
        if self.first is not None and self.next is not None and self.next < self.first:
            raise ValueError("next must not precede first: a log covers [first, next)")
        if self.kind == "redo" and self.lineage.kind != "incarnation":
            raise ValueError("redo logs belong to an Oracle incarnation")
        if self.kind in ("wal", "history", "backup_history") and self.lineage.kind != "timeline":
            raise ValueError("WAL and history files belong to a PostgreSQL timeline")
        return self


class LogIndexed(Event):
    """The catalog holds the log; the archiver may release its local spool copy.

    Superseded by `logs.indexed` (one message for many logs): catalogs no longer publish it,
    archivers still act on it, for the events an older catalog left in the stream.
    """

    TYPE: ClassVar[str] = "log.indexed"
    SUBJECT: ClassVar[str] = "tm.evt.log.indexed.{database}"
    SUMMARY: ClassVar[str] = "The catalog indexed a stored log; its spool copy may be released."

    lineage: Lineage
    thread: int = Field(ge=1, le=65535)
    sequence: int = Field(ge=0, lt=1 << 63)
    object_key: ObjectKey
    crc32c: Crc32c


MAX_INDEXED = 1024
"""The most logs one `logs.indexed` names (the catalog's largest batch)."""


class IndexedLog(StrictModel):
    """One log of a `logs.indexed`: enough for its archiver to find and check its copy."""

    thread: int = Field(ge=1, le=65535)
    sequence: int = Field(ge=0, lt=1 << 63)
    object_key: ObjectKey
    crc32c: Crc32c


class LogsIndexed(Event):
    """The catalog holds these logs of one lineage; their archivers may release their local
    spool copies.

    One message per lineage per batch the catalog ingests, in the order it indexed them: an
    announcement per log cost the catalog a third of its ingest. Each node's archiver acts on the
    logs it holds and passes over the others (another node's thread).
    """

    TYPE: ClassVar[str] = "logs.indexed"
    SUBJECT: ClassVar[str] = "tm.evt.logs.indexed.{database}"
    SUMMARY: ClassVar[str] = (
        "The catalog indexed stored logs of a lineage; their spool copies may be released."
    )

    lineage: Lineage
    logs: tuple[IndexedLog, ...] = Field(min_length=1, max_length=MAX_INDEXED)


class LogDeleted(Event):
    """A log's object is gone from the object store (retention, or a person)."""

    TYPE: ClassVar[str] = "log.deleted"
    SUBJECT: ClassVar[str] = "tm.evt.log.deleted.{database}"
    SUMMARY: ClassVar[str] = "A log was removed from the object store; restores cannot use it."

    lineage: Lineage
    kind: Literal["redo", "wal", "history", "backup_history"]
    thread: int = Field(ge=1, le=65535)
    sequence: int = Field(ge=0, lt=1 << 63)
    object_key: ObjectKey
    file_name: WalFileName | None = None
    reason: Reason
