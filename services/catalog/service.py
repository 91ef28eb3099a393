"""The catalog: indexes backups and logs from events and answers "to which moments can I go
back, and what does it take?". A derived index: `tidemark catalog rebuild` recreates it from the
bucket alone.

It answers queries over NATS request/reply (`queries.py`) and serves the timeline page and JSON
API over HTTP (`web/`), both from the same in-memory index.

On start it opens the store (`catalog.url`; SQLite in the state directory by default), brings
its schema up to date, and loads every row into a `CatalogIndex`; only then is its consumer
(`ingest.py`) bound, so no event is applied to a half-loaded index.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field

from nats.micro.service import Service as MicroService

from schemas import ServiceHealth
from services.bus import Publisher
from services.catalog.heap import freeze
from services.catalog.index import CatalogIndex
from services.catalog.ingest import Ingest
from services.catalog.metrics import catalog_metrics
from services.catalog.queries import serve_queries
from services.catalog.store import CatalogStore
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

    async def on_start(self) -> None:
        catalog = self.settings.catalog
        url = catalog.url_for(self.settings.state_dir)
        self.store = await asyncio.to_thread(
            CatalogStore.open, url, password_file=catalog.password_file
        )
        counts = await asyncio.to_thread(self.store.load_into, self.index)
        # Out of the collector's reach: a full collection would pause queries (`heap.py`).
        freeze()
        log.info(
            "catalog loaded from %s: %d databases, %d logs, %d backups",
            self.store.url,
            counts.databases,
            counts.logs,
            counts.backups,
        )
        self.ingest = Ingest(self.store, self.index, self.publisher, batch=catalog.ingest_batch)
        assert self.nc is not None
        self.queries = await serve_queries(self.nc, self.index)
        catalog_metrics().watch(self.index)
        if catalog.http_port:
            self.http = await start_http(self.index, catalog.http_host, catalog.http_port)
            log.info("timeline page at %s", self.http.url)

    def consumers(self, publisher: Publisher) -> Sequence[ConsumerSpec]:
        if self.ingest is None:
            return ()
        return (self.ingest.consumer(),)

    def health(self) -> ServiceHealth:
        health = super().health()
        if self.http is None:
            return health
        return health.model_copy(update={"detail": f"timeline {self.http.url}"})

    async def on_stop(self) -> None:
        catalog_metrics().unwatch(self.index)
        if self.http is not None:
            await self.http.stop()
        if self.queries is not None:
            await self.queries.stop()
        if self.store is not None:
            self.store.close()
