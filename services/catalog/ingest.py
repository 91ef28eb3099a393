"""The catalog's consumer: facts from TM_EVT into the store and the index, and what follows.

One durable consumer (`catalog-ingest`) on `log.archived`, `log.deleted`, `backup.completed` and
`backup.deleted` of every database, one event at a time, in stream order. For each event:

    store (one transaction, committed)  →  index  →  publish what follows  →  ack

Ack policy (the bus's table in `services/bus/consumer.py` applies):

| event, outcome                                   | action                                      |
|--------------------------------------------------|---------------------------------------------|
| log.archived, new or already known               | store, index, publish `log.indexed`, ack    |
| log.archived, same log known with another range  | TerminalError: dead letter; the first log   |
|   or crc32c (store or index refuses it)          |   stays, no `log.indexed` (copy kept)       |
| backup.completed, new / known                    | store, index, ack                           |
| backup.completed of a backup deleted before      | ack: it stays deleted (tombstone)           |
| backup.completed conflicting with a known one    | TerminalError: dead letter, first kept      |
| backup.deleted, log.deleted                      | store (tombstone / delete), index, ack      |
| envelope names no database                       | TerminalError                               |
| store unreachable, publish not acknowledged      | raised: nak with backoff, redelivered       |

Redelivery is a no-op in the store and the index, but `log.indexed` is published again: a crash
between the commit and the publish must not leave the archiver holding its spool copy forever,
and its handler is idempotent. The republish carries the same message id (derived from the
`log.archived` id), so inside JetStream's duplicate window it is not even stored twice.

After each event, every lineage of the database whose restorable windows differ from the last
ones published gets a `window.changed` with its whole list. "Last published" is remembered in
memory (primed from the index at start-up), so a redelivery after a failed publish sends it
then; a crash between commit and publish loses that one notice, and the next change of the
lineage carries the full state again.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import uuid
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from schemas import DatabaseRef, Envelope, envelope, wildcard
from schemas.messages import (
    BackupCompleted,
    BackupDeleted,
    LogArchived,
    LogDeleted,
    LogIndexed,
    WindowChanged,
    WindowSummary,
)
from services.bus import Delivery, Publisher, TerminalError
from services.catalog.history import HistoryConflict
from services.catalog.index import CatalogIndex, DatabaseIndex, UnknownDatabase
from services.catalog.store import CatalogStore, Recorded, StoreConflict
from services.runtime import ConsumerSpec

log = logging.getLogger("tidemark.catalog")

DURABLE = "catalog-ingest"
T = TypeVar("T")

Windows = dict[str, list[WindowSummary]]
"""Restorable windows of one database, by lineage key."""


def derived_id(cause: uuid.UUID, what: str) -> uuid.UUID:
    """A UUIDv7-shaped id for the `what` caused by message `cause`: the same every time.

    The cause's 48-bit timestamp is kept (ids still sort by time); the rest is a hash.
    """
    digest = int.from_bytes(hashlib.sha256(f"{what}|{cause}".encode()).digest()[:10], "big")
    value = (cause.int >> 80) << 80
    value |= 0x7 << 76  # version 7
    value |= ((digest >> 62) & 0xFFF) << 64
    value |= 0b10 << 62  # RFC 9562 variant
    value |= digest & ((1 << 62) - 1)
    return uuid.UUID(int=value)


def lineage_windows(db: DatabaseIndex) -> Windows:
    """Every lineage's windows, as `window.changed` states them."""
    found: Windows = {}
    for key in sorted(db.history.lineages):
        found[key] = [
            WindowSummary(
                start=db.position(w.start),
                end=db.position(w.end),
                start_time=w.start_time,
                end_time=w.end_time,
                bases=list(w.bases),
            )
            for w in db.history.windows(key)
        ]
    return found


def _database(message: Envelope[Any]) -> DatabaseRef:
    if message.database is None:
        raise TerminalError(f"{message.type} {message.id} names no database")
    database: DatabaseRef = message.database
    return database


class Ingest:
    """Handlers of the catalog's consumer over one store and one index.

    Store calls run in a worker thread; the index is only ever touched on the event loop, so
    queries served on the same loop never see it half-updated.
    """

    def __init__(self, store: CatalogStore, index: CatalogIndex, publisher: Publisher) -> None:
        self.store = store
        self.index = index
        self.publisher = publisher
        self._published: dict[str, Windows] = {
            ref.uid: lineage_windows(index.database(ref.uid)) for ref in index.databases()
        }

    async def _in_store(self, call: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        return await asyncio.to_thread(call, *args, **kwargs)

    # -- handlers -------------------------------------------------------------------------------

    async def on_log_archived(self, message: Envelope[Any], delivery: Delivery) -> None:
        database = _database(message)
        data: LogArchived = message.data
        try:
            new = await self._in_store(self.store.record_log, database, data)
        except StoreConflict as exc:
            raise TerminalError(str(exc)) from None
        try:
            self.index.apply_log(database, data)
        except HistoryConflict as exc:
            if new:
                # The store took it under a finer key than the index's; keep the first there too.
                await self._in_store(self.store.forget_log, database.uid, data)
            raise TerminalError(str(exc)) from None
        if new:
            log.debug("indexed %s", data.object_key)
        indexed = LogIndexed(
            lineage=data.lineage,
            thread=data.thread,
            sequence=data.sequence,
            object_key=data.object_key,
            crc32c=data.crc32c,
        )
        await self.publisher.publish(
            envelope(
                indexed,
                source=self.publisher.source,
                causation=message,
                message_id=derived_id(message.id, LogIndexed.TYPE),
            )
        )
        await self.publish_window_changes(database, cause=message)

    async def on_log_deleted(self, message: Envelope[Any], delivery: Delivery) -> None:
        database = _database(message)
        data: LogDeleted = message.data
        await self._in_store(
            self.store.delete_log,
            database.uid,
            data.lineage.key,
            data.kind,
            data.thread,
            data.sequence,
            data.file_name or "",
        )
        if data.kind in ("wal", "redo"):
            try:
                db = self.index.database(database.uid)
            except UnknownDatabase:
                return
            held = db.objects.get((data.lineage.key, data.thread, data.sequence))
            # The index holds one file per sequence: do not drop a segment for its .partial.
            if held is not None and held.key == data.object_key:
                self.index.remove_log(database.uid, data.lineage.key, data.thread, data.sequence)
        await self.publish_window_changes(database, cause=message)

    async def on_backup_completed(self, message: Envelope[Any], delivery: Delivery) -> None:
        database = _database(message)
        data: BackupCompleted = message.data
        try:
            recorded = await self._in_store(self.store.record_backup, database, data)
        except StoreConflict as exc:
            raise TerminalError(str(exc)) from None
        if recorded is Recorded.DELETED:
            log.info("%s backup %s was deleted before; not indexed", database.uid, data.backup_id)
            return
        self.index.apply_backup(database, data)
        await self.publish_window_changes(database, cause=message)

    async def on_backup_deleted(self, message: Envelope[Any], delivery: Delivery) -> None:
        database = _database(message)
        data: BackupDeleted = message.data
        await self._in_store(
            self.store.delete_backup, database.uid, data.backup_id, reason=data.reason
        )
        try:
            self.index.remove_backup(database.uid, data.backup_id)
        except UnknownDatabase:
            return
        await self.publish_window_changes(database, cause=message)

    # -- window.changed -------------------------------------------------------------------------

    async def publish_window_changes(
        self, database: DatabaseRef, *, cause: Envelope[Any] | None = None
    ) -> list[str]:
        """Publish `window.changed` for each lineage whose windows moved; their keys."""
        try:
            now = lineage_windows(self.index.database(database.uid))
        except UnknownDatabase:
            return []
        before = self._published.setdefault(database.uid, {})
        changed = [
            key for key in sorted(set(now) | set(before)) if now.get(key, []) != before.get(key, [])
        ]
        for key in changed:
            windows = now.get(key, [])
            await self.publisher.publish(
                envelope(
                    WindowChanged(lineage=key, windows=windows),
                    source=self.publisher.source,
                    database=database,
                    causation=cause,
                )
            )
            before[key] = windows
        return changed

    # -- the consumer ---------------------------------------------------------------------------

    def consumer(
        self, *, durable: str = DURABLE, databases: Sequence[str] | None = None
    ) -> ConsumerSpec:
        """The consumer spec; `databases` narrows it to some uids (a catalog per shard, tests)."""
        models = (LogArchived, LogDeleted, BackupCompleted, BackupDeleted)
        if databases is None:
            subjects = [wildcard(m) for m in models]
        else:
            subjects = [wildcard(m).removesuffix("*") + uid for m in models for uid in databases]
        return ConsumerSpec(
            stream="TM_EVT",
            durable=durable,
            filter_subjects=subjects,
            handlers={
                LogArchived: self.on_log_archived,
                LogDeleted: self.on_log_deleted,
                BackupCompleted: self.on_backup_completed,
                BackupDeleted: self.on_backup_deleted,
            },
            # One at a time: a database's facts are applied in the order they were published.
            concurrency=1,
        )
