"""The catalog: indexes backups and logs from events and answers "to which moments can I go
back, and what does it take?". A derived index: `tidemark catalog rebuild` recreates it from the
bucket alone.

It answers queries over NATS request/reply (`queries.py`) and serves the timeline page and JSON
API over HTTP (`web/`), both from the same in-memory index.

On start it opens the store (`catalog.url`; SQLite in the state directory by default), brings
its schema up to date, decides from the store's position in TM_EVT where to start (`catchup.py`:
replay from there, or first rebuild the store from the bucket when the stream no longer holds
it), and loads every row into a `CatalogIndex`; only then is its consumer (`ingest.py`) bound, so
no event is applied to a half-loaded index. Its queries are served from the first moment, and
refused as `catching_up` until the replay has delivered everything the stream held.

Each replica has its own durable (`catalog-ingest-<catalog.replica>`, default the node name), so
replicas on one PostgreSQL store each see every event and their answers agree; the writes are
idempotent, so every replica writing each fact is safe. A durable left by a replica that is gone
is removed by the server after `catalog.replica_idle_s` without a pull.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field

from nats.micro.service import Service as MicroService

from schemas import ServiceHealth, ServiceState, node_token
from services.blobstore import open_store
from services.bus import Publisher
from services.catalog.catchup import (
    STREAM,
    CatchUp,
    CatchUpPhase,
    StartPlan,
    first_held,
    follow_replay,
    plan_start,
)
from services.catalog.heap import freeze
from services.catalog.index import CatalogIndex
from services.catalog.ingest import Ingest
from services.catalog.metrics import catalog_metrics
from services.catalog.queries import serve_queries
from services.catalog.rebuild import RebuildGuard, RebuildRefused, rebuild
from services.catalog.store import CatalogStore, StreamPosition
from services.catalog.web import HttpServer, start_http
from services.runtime import ConsumerSpec, Service

log = logging.getLogger("tidemark.catalog")


@dataclass
class CatalogService(Service):
    name: str = "catalog"
    index: CatalogIndex = field(default_factory=CatalogIndex, init=False)
    store: CatalogStore | None = field(default=None, init=False)
    ingest: Ingest | None = field(default=None, init=False)
    queries: MicroService | None = field(default=None, init=False)
    http: HttpServer | None = field(default=None, init=False)

    catchup: CatchUp = field(default_factory=CatchUp, init=False)
    _follow: asyncio.Task[None] | None = field(default=None, init=False)

    @property
    def replica(self) -> str:
        return self.settings.catalog.replica or node_token(self.settings.node)

    async def on_start(self) -> None:
        catalog = self.settings.catalog
        assert self.nc is not None
        # Served before the store is read: an asker hears "catching up", not "no responders".
        self.queries = await serve_queries(self.nc, self.index, catchup=self.catchup)
        if catalog.http_port:
            self.http = await start_http(
                self.index, catalog.http_host, catalog.http_port, catchup=self.catchup
            )
            log.info("timeline page at %s", self.http.url)
        catalog_metrics().watch_catchup(self.replica, self.catchup)
        url = catalog.url_for(self.settings.state_dir)
        self.store = await asyncio.to_thread(
            CatalogStore.open, url, password_file=catalog.password_file
        )
        plan = await self._plan(self.store)
        self.catchup.phase, self.catchup.reason = CatchUpPhase.LOADING, plan.reason
        counts = await asyncio.to_thread(self.store.load_into, self.index)
        # Out of the collector's reach: a full collection would pause queries (`heap.py`).
        freeze()
        log.info(
            "catalog loaded from %s: %d databases, %d logs, %d backups; %s",
            self.store.url,
            counts.databases,
            counts.logs,
            counts.backups,
            plan.reason,
        )
        self.catchup.phase = CatchUpPhase.REPLAYING
        self.ingest = Ingest(
            self.store,
            self.index,
            self.publisher,
            batch=catalog.ingest_batch,
            replica=self.replica,
            start_sequence=plan.start,
            stream_created=plan.stream_created,
            idle_s=catalog.replica_idle_s,
        )
        catalog_metrics().watch(self.index)

    async def _plan(self, store: CatalogStore) -> StartPlan:
        """Where the durable starts; the store rebuilt from the bucket first if it must be."""
        # Read before the store is: what is loaded then holds at least everything up to it,
        # also when another replica writes in between.
        position = await asyncio.to_thread(store.position, STREAM)
        empty = await asyncio.to_thread(store.is_empty)
        info = await self.js.stream_info(STREAM)
        plan = plan_start(position, empty, info)
        if not plan.rebuild:
            return plan
        self.catchup.phase, self.catchup.reason = CatchUpPhase.REBUILDING, plan.reason
        log.warning("catalog: %s", plan.reason)
        catalog, archiver = self.settings.catalog, self.settings.archiver
        bucket = catalog.store_url or archiver.store_url_for(self.settings.state_dir)
        prefix = next(p for p in (catalog.prefix, archiver.prefix) if p is not None)
        before = await asyncio.to_thread(store.counts)
        guard = RebuildGuard(
            0 if empty else before.logs + before.backups,
            advice="check catalog.store_url and catalog.prefix (or rebuild by hand)",
        )
        blobs = open_store(bucket)
        try:
            report = await rebuild(
                blobs,
                store,
                prefix.strip("/"),
                accept=None if empty else guard.accept,
                position=(STREAM, StreamPosition(plan.last, plan.stream_created)),
            )
        except RebuildRefused as exc:
            # The store stays as it was; what the stream still holds is all there is to add.
            reason = f"{plan.reason}, refused ({exc}): replaying what {STREAM} holds"
            log.error("catalog: %s", reason)
            return StartPlan(first_held(info), False, reason, plan.stream_created, plan.last)
        finally:
            await blobs.close()
        counts = report.stored
        log.info(
            "catalog rebuilt from %s: %d databases, %d logs, %d backups, %d skipped",
            bucket,
            counts.databases,
            counts.logs,
            counts.backups,
            report.skipped,
        )
        return plan

    async def start(self) -> None:
        await super().start()
        assert self.ingest is not None
        ingest = self.ingest
        durable = next(c.durable for c in self._consumers if c.stream == STREAM)
        self._follow = asyncio.create_task(self._follow_replay(durable, ingest))

    async def _follow_replay(self, durable: str, ingest: Ingest) -> None:
        await follow_replay(self.js, durable, self.catchup, lambda: ingest.pending)
        with contextlib.suppress(Exception):  # said again at the next interval
            await self.report_health()

    def consumers(self, publisher: Publisher) -> Sequence[ConsumerSpec]:
        if self.ingest is None:
            return ()
        return (self.ingest.consumer(),)

    def health(self) -> ServiceHealth:
        health = super().health()
        details = [self.catchup.describe()] if not self.catchup.caught_up else []
        if self.http is not None:
            details.append(f"timeline {self.http.url}")
        update: dict[str, object] = {"detail": "; ".join(details)}
        if health.state is ServiceState.HEALTHY and not self.catchup.caught_up:
            # Not ready: a Service must not send its HTTP here, nor `status` call it healthy.
            update["state"] = ServiceState.STARTING
        return health.model_copy(update=update)

    async def on_stop(self) -> None:
        if self._follow is not None:
            self._follow.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._follow
        if self.ingest is not None and self.store is not None:
            try:
                # The next start then replays nothing this one handled.
                await asyncio.to_thread(self.ingest.record_position)
            except Exception as exc:
                log.warning("catalog position not recorded at stop: %s", exc)
        catalog_metrics().unwatch(self.index)
        catalog_metrics().unwatch_catchup(self.replica)
        if self.http is not None:
            await self.http.stop()
        if self.queries is not None:
            await self.queries.stop()
        if self.store is not None:
            self.store.close()
