"""The archiver: one per node, streams every completed archived log (WAL segment) to the object
store the moment it exists, verifies it, and publishes `log.archived`.

On start it opens the journal and the store, builds one source per configured database and
starts the streamer (streamer.py); it consumes `log.indexed` for its databases (handlers.py).
Its health record's `detail` carries each database's backlog, which `tidemark status` shows.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from schemas import Engine, ServiceHealth
from services.archiver.handlers import log_indexed_consumer
from services.archiver.journal import Journal
from services.archiver.metrics import Backlog
from services.archiver.oracle import OracleArchiveSource
from services.archiver.postgres import PostgresSpoolSource
from services.archiver.settings import ArchivedDatabase
from services.archiver.sources import LogSource
from services.archiver.streamer import Streamer
from services.blobstore import BlobStore, RetrySettings, open_store
from services.bus import Publisher
from services.engines.oracle.session import OracleDbSession
from services.runtime import ConsumerSpec, Service

log = logging.getLogger("tidemark.archiver")


def build_source(database: ArchivedDatabase) -> LogSource:
    if database.engine is Engine.POSTGRES:
        return PostgresSpoolSource(database)
    if database.engine is Engine.ORACLE and database.oracle is not None:
        # The session connects on the first discovery, and again after a lost connection.
        return OracleArchiveSource(database, OracleDbSession(database.oracle))
    raise ValueError(f"{database.uid}: archiving {database.engine.value} needs its engine")


@dataclass
class ArchiverService(Service):
    name: str = "archiver"
    #: How a configured database becomes a source; tests put a simulated Oracle session here.
    source_factory: Callable[[ArchivedDatabase], LogSource] = build_source
    streamer: Streamer | None = field(default=None, init=False)
    _journal: Journal | None = field(default=None, init=False)
    _store: BlobStore | None = field(default=None, init=False)
    _task: asyncio.Task[None] | None = field(default=None, init=False)
    _sources: list[LogSource] = field(default_factory=list, init=False)

    async def on_start(self) -> None:
        archiver = self.settings.archiver
        sources = self._sources = [self.source_factory(d) for d in archiver.databases]
        self._journal = Journal(archiver.journal_for(self.settings.state_dir))
        url = archiver.store_url_for(self.settings.state_dir)
        # One request may retry for `request_deadline_s`, not GCS's default five minutes: a log
        # that keeps failing then gives its upload slot back and waits its own retry, so a few
        # bad requests never stall every slot.
        options = (
            {"retry": RetrySettings(deadline=archiver.request_deadline_s)}
            if url.startswith("gs://")
            else {}
        )
        self._store = open_store(url, **options)
        self.streamer = Streamer(
            sources=sources,
            journal=self._journal,
            store=self._store,
            events=self.publisher,
            settings=archiver,
            node=self.settings.node,
            source_name=self.source,
        )
        self._task = asyncio.create_task(self.streamer.run(), name="archiver streamer")

    def consumers(self, publisher: Publisher) -> Sequence[ConsumerSpec]:
        if self.streamer is None or not self.settings.archiver.databases:
            return ()
        return (log_indexed_consumer(self.streamer, self.settings.archiver, self.settings.node),)

    async def on_stop(self) -> None:
        if self.streamer is not None:
            await self.streamer.stop(timeout=self.settings.bus.drain_timeout_s)
        if self._task is not None:
            # The loop may be waiting on a store that is down (claiming a prefix): in-flight
            # logs are settled above, so nothing is lost by cancelling the wait.
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        for source in self._sources:
            if isinstance(source, OracleArchiveSource):
                try:
                    await source.aclose()
                except Exception as exc:  # stopping anyway; the server ends the session
                    log.warning("%s: closing the Oracle session: %s", source.database.uid, exc)
        if self._store is not None:
            await self._store.close()
        if self._journal is not None:
            self._journal.close()

    def health(self) -> ServiceHealth:
        health = super().health()
        if self.streamer is None:
            return health
        detail = "; ".join(
            describe(uid, backlog) for uid, backlog in sorted(self.streamer.backlogs().items())
        )
        return health.model_copy(update={"detail": detail})


def _size(n: int) -> str:
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{n} B"


def describe(uid: str, b: Backlog) -> str:
    """One database's line in `tidemark status`."""
    if b.blocked:
        return f"{uid}: BLOCKED {b.blocked}"
    parts = [f"{uid}: backlog {b.logs} logs ({_size(b.bytes)})"]
    if b.oldest_wait_s is not None:
        parts.append(f"oldest waiting {b.oldest_wait_s:.0f}s")
    if b.last_lag_s is not None:
        parts.append(f"lag {b.last_lag_s:.1f}s")
    for label, count in (
        ("unpublished", b.unpublished),
        ("awaiting catalog", b.unreleased),
        ("CONFLICTS", b.conflicts),
        ("UNREADABLE", b.unreadable + b.strays),
    ):
        if count:
            parts.append(f"{label} {count}")
    return ", ".join(parts)
