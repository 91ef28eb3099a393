"""What the catalog-replica tests share: a replica narrowed to their databases, a producer of one
database's facts, the window those facts make, and how to ask each replica for its own answer.

Used on one nats-server (`test_catalog_replicas.py`) and on a three-node cluster
(`test_catalog_cluster.py`); `replicas` is a fixture, imported by the tests that use it.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from nats.aio.client import Client

from schemas import DatabaseRef, Engine, ServiceState, Timeline, envelope
from schemas.catalog import WindowsReply
from schemas.messages import LogArchived
from services.blobstore import open_store
from services.blobstore.owner import claim_prefix
from services.bus import Delivery, Publisher
from services.catalog.queries import handlers
from services.catalog.service import CatalogService
from services.runtime import ConsumerSpec
from tests.doubles.catalog_events import SEG, backup, wal, write_log_object, write_manifest
from tests.integration.bus_helpers import unique, wait_for

BASE_START, BASE_END = SEG + 0x28, SEG + 0x100
#: What differs between two answers of one index asked a moment apart.
CLOCK = {"now", "rpo_lag_s"}


@dataclass
class Replica(CatalogService):
    """The real service narrowed to some databases, under its own replica's durable; `gate`
    holds every batch until it is set (a replay made slow enough to look at)."""

    only: Sequence[str] = ()
    gate: asyncio.Event | None = None

    def consumers(self, publisher: Publisher) -> Sequence[ConsumerSpec]:
        assert self.ingest is not None
        spec = self.ingest.consumer(databases=list(self.only))
        if self.gate is None:
            return (spec,)
        ingest, gate = self.ingest, self.gate

        async def gated(deliveries: Sequence[Delivery]) -> list[Exception | None]:
            await gate.wait()
            return await ingest.handle(deliveries)

        return (dataclasses.replace(spec, batch=gated),)


def expected(logs: int) -> list[tuple[str, int, int]]:
    """One base over logs 1..`logs`: one window, from the base's end to the last log's."""
    return [("tl-00000001", BASE_END, (logs + 1) * SEG)]


def windows_of(reply: Any) -> list[tuple[str, int, int]]:
    return [(w.lineage, w.start.value, w.end.value) for w in reply.windows]


async def own_answer(replica: Replica, uid: str) -> dict[str, Any]:
    """The replica's own windows answer, whole (lineages, windows, backups, gaps), without the
    clock: asked of its index directly, not of whichever replica the queue group picks."""
    request = f'{{"database": "{uid}"}}'.encode()
    handle = handlers(replica.index, replica.catchup)["windows"]
    reply = WindowsReply.model_validate_json(bytes(await handle(request)))  # type: ignore[arg-type]
    return reply.model_dump(exclude=CLOCK)


class Producer:
    """Publishes one database's facts into TM_EVT as the archiver and executor would (through
    the bus's `Publisher`: a publish that meets a leader move is sent again under its id), and
    keeps the objects they would have written in a bucket."""

    def __init__(self, nc: Client, bucket_dir: Path | None = None) -> None:
        self.publisher = Publisher(nc.jetstream(), source="archiver@db-node-1")
        self.uid = unique("db")
        self.db = DatabaseRef(uid=self.uid, engine=Engine.POSTGRES, name="orders", system_id=7)
        self.bucket_url = None if bucket_dir is None else f"file://{bucket_dir.absolute()}"
        self.bucket = None if self.bucket_url is None else open_store(self.bucket_url)
        self.published = 0
        self._claimed = False

    async def _keep(self, fact: Any) -> None:
        if self.bucket is None:
            return
        if not self._claimed:
            await claim_prefix(self.bucket, "", self.db)
            self._claimed = True
        if isinstance(fact, LogArchived):
            await write_log_object(self.bucket, self.db, fact)
        else:
            await write_manifest(self.bucket, fact)

    async def publish(self, fact: Any) -> None:
        await self._keep(fact)
        await self.publisher.publish(envelope(fact, source="archiver@db-node-1", database=self.db))
        self.published += 1

    async def base(self) -> None:
        await self.publish(backup("b1", BASE_START, BASE_END, Timeline(id=1), database=self.db))

    async def logs(self, first: int, last: int, *, every_s: float = 0.0) -> None:
        """Logs `first`..`last`, one each `every_s` (a flow slow enough to fault in between)."""
        for segno in range(first, last + 1):
            await self.publish(wal(segno, database=self.db))
            if every_s:
                await asyncio.sleep(every_s)

    async def close(self) -> None:
        if self.bucket is not None:
            await self.bucket.close()


@pytest.fixture
async def replicas() -> AsyncIterator[list[Replica]]:
    """Every replica a test starts, stopped at its end."""
    started: list[Replica] = []
    yield started
    for replica in started:
        if replica.state is not ServiceState.STOPPED:
            await replica.stop()


async def start(started: list[Replica], replica: Replica) -> Replica:
    await replica.start()
    started.append(replica)
    return replica


async def caught_up(*catalogs: Replica, timeout: float = 20.0) -> None:
    await wait_for(lambda: all(c.catchup.caught_up for c in catalogs), timeout=timeout)
