"""The catalog's own ingest, store and index, driven event by event without a bus, and
restarted or rebuilt from a bucket on demand.

Events go through the real `Ingest.handle` (the consumer's batch handler) over a real SQLite
store; only the bus is replaced: deliveries are built here and what the catalog publishes is
recorded by `RecordingPublisher` (a fake, labeled as such: it acknowledges every publish).
"""

from __future__ import annotations

import asyncio
from datetime import datetime
from pathlib import Path
from typing import Any, cast

from nats.aio.msg import Msg

from schemas import DatabaseRef, Envelope, Payload, envelope
from schemas.messages import BackupCompleted, LogArchived
from services.blobstore import MemoryStore
from services.blobstore.owner import claim_prefix
from services.bus import Delivery, Publisher
from services.catalog.index import CatalogIndex
from services.catalog.ingest import Ingest
from services.catalog.rebuild import rebuild
from services.catalog.settings import sqlite_url
from services.catalog.store import CatalogStore
from tests.doubles.catalog_events import write_log_object, write_manifest


class RecordingPublisher:
    """Fake publisher: keeps what would have been published, acknowledges all of it."""

    source = "catalog"

    def __init__(self) -> None:
        self.sent: list[Envelope[Any]] = []

    async def publish(self, message: Envelope[Any], *, node: str | None = None) -> None:
        self.sent.append(message)

    async def publish_all(self, messages: list[Envelope[Any]]) -> None:
        self.sent.extend(messages)


class CatalogRig:
    """One catalog over a store in `directory`; `restart()` reloads it as a restart would."""

    def __init__(self, directory: Path) -> None:
        self.url = sqlite_url(directory / "catalog.db")
        self.publisher = RecordingPublisher()
        self.bucket = MemoryStore()
        self._sequence = 0
        self._claimed: set[str] = set()
        self.store = CatalogStore.open(self.url)
        self.index = CatalogIndex()
        self.store.load_into(self.index)
        self.ingest = self._ingest()

    def _ingest(self) -> Ingest:
        return Ingest(self.store, self.index, cast(Publisher, self.publisher))

    def send(
        self,
        database: DatabaseRef,
        data: Payload,
        *,
        at: datetime | None = None,
        subject_uid: str | None = None,
    ) -> Exception | None:
        """Deliver one event as the consumer would; None, or why it was refused."""
        message = envelope(data, source="archiver", database=database)
        if at is not None:
            message = message.model_copy(update={"occurred_at": at})
        subject = type(data).SUBJECT.format(database=subject_uid or database.uid)
        self._sequence += 1
        delivery = Delivery(
            message=message,
            subject=subject,
            attempt=1,
            stream_sequence=self._sequence,
            publisher=cast(Publisher, self.publisher),
            _msg=cast(Msg, None),  # never acked here: the rig has no bus
        )
        [refused] = asyncio.run(self.ingest.handle([delivery]))
        return refused

    def keep_object(self, database: DatabaseRef, fact: LogArchived | BackupCompleted) -> None:
        """Write the object the archiver or executor would have written for `fact`."""
        if database.uid not in self._claimed:
            asyncio.run(claim_prefix(self.bucket, "", database))
            self._claimed.add(database.uid)
        if isinstance(fact, LogArchived):
            asyncio.run(write_log_object(self.bucket, database, fact))
        else:
            asyncio.run(write_manifest(self.bucket, fact))

    def drop_object(self, key: str) -> None:
        asyncio.run(self.bucket.delete(key))

    def restart(self) -> None:
        """A new process over the same store."""
        self.store.close()
        self.store = CatalogStore.open(self.url)
        self.index = CatalogIndex()
        self.store.load_into(self.index)
        self.ingest = self._ingest()

    def rebuild(self) -> None:
        """`catalog rebuild` from the bucket, then a restart."""
        asyncio.run(rebuild(self.bucket, self.store))
        self.restart()

    def close(self) -> None:
        self.store.close()
