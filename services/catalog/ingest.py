"""The catalog's consumer: facts from TM_EVT into the store and the index, and what follows.

One durable consumer per replica (`catalog-ingest-<replica>`: every replica's index must hold
every fact, and the writes are idempotent, so each replica consumes every event and writes it)
on `log.archived`, `log.deleted`, `backup.completed` and `backup.deleted` of every database,
in stream order, up to `catalog.ingest_batch` events at a time (a `BatchConsumer`). For each batch:

    store (one transaction for the batch, committed)  →  index, event by event
        →  publish what follows (`logs.indexed`, then `window.changed`)  →  ack each

One event at a time, a transaction and a wait for the stream per event cap the catalog at a few
hundred logs a second; a batch pays each round trip once. The events of a batch are written and
applied in stream order (consecutive `log.archived` share one statement), so the outcome is the
one they would have had one by one.

Ack policy, per event (the bus's table in `services/bus/batch.py` applies):

| event, outcome                                   | action                                      |
|--------------------------------------------------|---------------------------------------------|
| log.archived, new or already known               | store, index, announce in `logs.indexed`,   |
|                                                  |   ack                                       |
| log.archived, same log known with another range  | TerminalError: dead letter; the first log   |
|   or crc32c (store or index refuses it)          |   stays, not announced (copy kept)          |
| backup.completed, new / known                    | store, index, ack                           |
| backup.completed of a backup deleted before      | ack: it stays deleted (tombstone)           |
| backup.completed conflicting with a known one    | TerminalError: dead letter, first kept      |
| backup.deleted, log.deleted                      | store (tombstone / delete), index, ack      |
| envelope names no database                       | TerminalError                               |
| subject names another database than the envelope | TerminalError: dead letter with that reason |
| log.archived of a log deleted before (tombstone) | ack: it stays deleted, not announced        |
| store unreachable, publish not acknowledged      | raised: the whole batch nak'd with backoff, |
|                                                  |   redelivered                               |

A refused event is refused alone: nothing of it is written (the store checks a log before
inserting it, and a backup is written under its own savepoint), and the rest of its batch is
stored, indexed and acknowledged.

The logs of a batch are announced together: one `logs.indexed` per database and lineage, its
logs in stream order (an announcement per log was a third of the ingest's time). Redelivery is a
no-op in the store and the index, but the logs are announced again: a crash between the commit
and the publish must not leave the archiver holding its spool copies forever, and its handler is
idempotent. An announcement's message id is derived from the `log.archived` ids it answers, so
the same batch announced again inside JetStream's duplicate window is not even stored twice.

After each batch, every lineage of a database it touched whose restorable windows differ from
the last ones published gets a `window.changed` with its whole list (caused by that database's
last event in the batch). "Last published" is remembered in memory (primed from the index at
start-up), so a redelivery after a failed publish sends it then; a crash between commit and
publish loses that one notice, and the next change of the lineage carries the full state again.
Replicas each publish their own notices: the same whole state, so a repeat changes nothing.

How far the store has applied TM_EVT (`stream_positions`, see `catchup.py`) is written in each
batch's transaction, and is the last sequence of the batches *before* it: a batch counts once
its logs are announced, so a crash between its commit and its publish replays it on
the next start. Below a batch that raised (nak'd, to be redelivered) the position does not
move until that batch is handled: the events after it may be stored already, but it is not.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, TypeVar

from schemas import DatabaseRef, Envelope, envelope, utcnow, wildcard
from schemas.messages import (
    BackupCompleted,
    BackupDeleted,
    IndexedLog,
    LogArchived,
    LogDeleted,
    LogsIndexed,
    WindowChanged,
    WindowSummary,
)
from schemas.messages.logs import MAX_INDEXED
from services.bus import Delivery, Publisher, TerminalError
from services.catalog.heap import FreezeSchedule
from services.catalog.history import HistoryConflict
from services.catalog.index import CatalogIndex, DatabaseIndex, UnknownDatabase
from services.catalog.store import CatalogStore, Recorded, StoreConflict, StreamPosition, Writer
from services.runtime import ConsumerSpec

log = logging.getLogger("tidemark.catalog")

DURABLE = "catalog-ingest"
"""The durable of releases before per-replica durables; now the prefix of each replica's."""
STREAM = "TM_EVT"
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


def _database(message: Envelope[Any], subject: str | None = None) -> DatabaseRef:
    """The database an event is about; refused when the envelope names none, or another one
    than its subject: indexing it under either would file one database's facts as another's."""
    if message.database is None:
        raise TerminalError(f"{message.type} {message.id} names no database")
    database: DatabaseRef = message.database
    if subject is not None:
        named = subject.rsplit(".", 1)[-1]
        if named != database.uid:
            raise TerminalError(
                f"{message.type} {message.id} was published on {subject} (database {named!r}) "
                f"but its envelope names database {database.uid!r}"
            )
    return database


@dataclass
class _Event:
    """One event of a batch, and what became of it so far."""

    position: int
    message: Envelope[Any]
    database: DatabaseRef
    stored: bool | Recorded | None = None
    """What the store did: a log new (True), known (False) or deleted before
    (`Recorded.DELETED`); a backup's `Recorded`."""
    refused: Exception | None = None

    @property
    def data(self) -> Any:
        return self.message.data


class Ingest:
    """Handlers of the catalog's consumer over one store and one index.

    Store calls run in a worker thread; the index is only ever touched on the event loop, so
    queries served on the same loop never see it half-updated.
    """

    def __init__(
        self,
        store: CatalogStore,
        index: CatalogIndex,
        publisher: Publisher,
        *,
        batch: int = 1,
        replica: str | None = None,
        start_sequence: int | None = None,
        stream_created: datetime | None = None,
        idle_s: float | None = None,
    ) -> None:
        self.store = store
        self.index = index
        self.publisher = publisher
        self.batch = batch
        self.durable = DURABLE if replica is None else f"{DURABLE}-{replica}"
        self.start_sequence = start_sequence
        self.stream_created = stream_created
        self.idle_s = idle_s
        # The stream position: what is handled through (its logs announced), what raised.
        self._done = (start_sequence or 1) - 1
        self._recorded = self._done
        self._unsettled: set[int] = set()
        self.pending: int | None = None
        """What the consumer had left after the last delivery handled (0: all delivered)."""
        self._heap = FreezeSchedule()
        self._published: dict[str, Windows] = {
            ref.uid: lineage_windows(index.database(ref.uid)) for ref in index.databases()
        }

    async def _in_store(self, call: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        return await asyncio.to_thread(call, *args, **kwargs)

    # -- handlers -------------------------------------------------------------------------------

    async def on_event(self, message: Envelope[Any], delivery: Delivery) -> None:
        """One event on its own: a batch of one."""
        [refused] = await self.handle([delivery])
        if refused is not None:
            raise refused

    async def handle(self, deliveries: Sequence[Delivery]) -> list[Exception | None]:
        """A batch of events, in stream order; per event, None (done) or why it was refused.

        Raises when the store or the bus fails: nothing is acknowledged, all are redelivered.
        """
        sequences = [d.stream_sequence for d in deliveries]
        self._unsettled.difference_update(sequences)
        try:
            refused = await self._handle(deliveries)
        except BaseException:
            self._unsettled.update(sequences)
            raise
        if sequences:
            self._done = max(self._done, *sequences)
            self.pending = deliveries[-1].pending
        return refused

    async def _handle(self, deliveries: Sequence[Delivery]) -> list[Exception | None]:
        refused: list[Exception | None] = [None] * len(deliveries)
        events: list[_Event] = []
        for i, delivery in enumerate(deliveries):
            try:
                database = _database(delivery.message, delivery.subject)
                events.append(_Event(i, delivery.message, database))
            except TerminalError as exc:
                refused[i] = exc
        # Nothing else runs on the loop meanwhile: work done here while the store's thread
        # writes would hold the GIL that thread takes back after every row SQLite steps over.
        position = self.position()
        await self._in_store(self._write, events, position)
        if position is not None:
            self._recorded = position.sequence
        forget = [e for e in events if e.refused is None and self._apply(e)]
        if forget:
            await self._in_store(self._forget, forget)
        done = [e for e in events if e.refused is None]
        self._heap.indexed(len(done))
        await self.publisher.publish_all(
            self._announcements(
                [
                    e
                    for e in done
                    # A deleted log is not held: saying it is indexed would be untrue.
                    if isinstance(e.data, LogArchived) and e.stored is not Recorded.DELETED
                ]
            )
        )
        last_of = {e.database.uid: e for e in done}
        for event in last_of.values():
            await self.publish_window_changes(event.database, cause=event.message)
        for event in events:
            refused[event.position] = event.refused
        return refused

    # -- the store: one transaction per batch ----------------------------------------------------

    def position(self) -> StreamPosition | None:
        """Where the store may say it is, if further than it said: every event through it is
        handled, none below it is waiting to be redelivered."""
        through = self._done
        if self._unsettled:
            through = min(through, min(self._unsettled) - 1)
        if through <= self._recorded:
            return None
        return StreamPosition(through, self.stream_created)

    def record_position(self) -> None:
        """Write the position now (at a clean stop: the next start replays nothing handled)."""
        position = self.position()
        if position is not None:
            with self.store.writing() as writer:
                writer.advance(STREAM, position)
            self._recorded = position.sequence

    def _write(self, events: list[_Event], position: StreamPosition | None = None) -> None:
        with self.store.writing() as writer:
            if position is not None:
                writer.advance(STREAM, position)
            run: list[_Event] = []  # consecutive log.archived: one statement
            for event in events:
                if event.refused is not None:
                    continue
                if isinstance(event.data, LogArchived):
                    run.append(event)
                    continue
                self._write_logs(writer, run)
                run = []
                self._write_one(writer, event)
            self._write_logs(writer, run)

    @staticmethod
    def _write_logs(writer: Writer, run: list[_Event]) -> None:
        if not run:
            return
        results = writer.record_logs([(e.database, e.data) for e in run])
        for event, result in zip(run, results, strict=True):
            if isinstance(result, StoreConflict):
                event.refused = TerminalError(str(result))
            else:
                event.stored = result

    @staticmethod
    def _write_one(writer: Writer, event: _Event) -> None:
        data, uid = event.data, event.database.uid
        if isinstance(data, LogDeleted):
            writer.delete_log(
                uid,
                data.lineage.key,
                data.kind,
                data.thread,
                data.sequence,
                data.file_name or "",
                object_key=data.object_key,
                # The fact's own time, not ours: a replay of the deletion buries the same logs.
                deleted_at=event.message.occurred_at,
                reason=data.reason,
            )
        elif isinstance(data, BackupCompleted):
            try:
                # Its own savepoint: a refused backup keeps nothing it wrote about its lineage.
                with writer.savepoint():
                    event.stored = writer.record_backup(event.database, data)
            except StoreConflict as exc:
                event.refused = TerminalError(str(exc))
        elif isinstance(data, BackupDeleted):
            writer.delete_backup(uid, data.backup_id, reason=data.reason, deleted_at=utcnow())

    def _forget(self, events: list[_Event]) -> None:
        with self.store.writing() as writer:
            for event in events:
                writer.forget_log(event.database.uid, event.data)

    # -- the index, event by event -----------------------------------------------------------------

    def _apply(self, event: _Event) -> bool:
        """Apply a stored event to the index; True if the store must forget the log it took."""
        data, database = event.data, event.database
        if isinstance(data, LogArchived):
            try:
                self.index.apply_log(database, data, deleted=event.stored is Recorded.DELETED)
            except HistoryConflict as exc:
                event.refused = TerminalError(str(exc))
                # The store took it under a finer key than the index's; keep the first there too.
                return event.stored is True
            if event.stored:
                log.debug("indexed %s", data.object_key)
        elif isinstance(data, LogDeleted):
            if data.kind not in ("wal", "redo"):
                return False
            try:
                db = self.index.database(database.uid)
            except UnknownDatabase:
                return False
            held = db.objects.get((data.lineage.key, data.thread, data.sequence))
            # The index holds one file per sequence: do not drop a segment for its .partial.
            if held is not None and held.key == data.object_key:
                self.index.remove_log(database.uid, data.lineage.key, data.thread, data.sequence)
        elif isinstance(data, BackupCompleted):
            if event.stored is Recorded.DELETED:
                log.info(
                    "%s backup %s was deleted before; not indexed", database.uid, data.backup_id
                )
            else:
                self.index.apply_backup(database, data)
        elif isinstance(data, BackupDeleted):
            with contextlib.suppress(UnknownDatabase):
                self.index.remove_backup(database.uid, data.backup_id)
        return False

    def _announcements(self, events: list[_Event]) -> list[Envelope[Any]]:
        """One `logs.indexed` per database and lineage of `events`, logs in their order."""
        groups: dict[tuple[str, str], list[_Event]] = {}
        for event in events:
            groups.setdefault((event.database.uid, event.data.lineage.key), []).append(event)
        return [
            self._indexed(group[i : i + MAX_INDEXED])
            for group in groups.values()
            for i in range(0, len(group), MAX_INDEXED)
        ]

    def _indexed(self, events: list[_Event]) -> Envelope[Any]:
        first = events[0]
        indexed = LogsIndexed(
            lineage=first.data.lineage,
            logs=tuple(
                IndexedLog(
                    thread=e.data.thread,
                    sequence=e.data.sequence,
                    object_key=e.data.object_key,
                    crc32c=e.data.crc32c,
                )
                for e in events
            ),
        )
        # The same logs announced again (a redelivered batch) get the same id.
        causes = hashlib.sha256(b"".join(e.message.id.bytes for e in events)).hexdigest()
        return envelope(
            indexed,
            source=self.publisher.source,
            database=first.database,
            causation=first.message,
            message_id=derived_id(first.message.id, f"{LogsIndexed.TYPE}|{causes}"),
        )

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
        self, *, durable: str | None = None, databases: Sequence[str] | None = None
    ) -> ConsumerSpec:
        """The consumer spec; `databases` narrows it to some uids (a catalog per shard, tests)."""
        models = (LogArchived, LogDeleted, BackupCompleted, BackupDeleted)
        if databases is None:
            subjects = [wildcard(m) for m in models]
        else:
            subjects = [wildcard(m).removesuffix("*") + uid for m in models for uid in databases]
        return ConsumerSpec(
            stream=STREAM,
            durable=durable or self.durable,
            filter_subjects=subjects,
            handlers=dict.fromkeys(models, self.on_event),
            # One at a time: a database's facts are applied in the order they were published.
            concurrency=1,
            batch=self.handle if self.batch > 1 else None,
            batch_size=self.batch,
            start_sequence=self.start_sequence,
            inactive_threshold_s=self.idle_s,
        )
