"""A streamer on a temp spool, an in-memory store and a recording event sink, for unit tests."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader

from schemas import Envelope
from schemas.messages import ArchiveAlarm, LogArchived
from services.archiver.journal import Journal
from services.archiver.metrics import ArchiverMetrics
from services.archiver.postgres import PostgresSpoolSource
from services.archiver.settings import ArchivedDatabase, ArchiverSettings
from services.archiver.sources import LogSource
from services.archiver.streamer import Streamer
from services.blobstore import BlobStore, MemoryStore
from services.engines.postgres.spool import Spool
from tests.doubles.wal_segments import SYSTEM_ID, segment_bytes, segment_name, write_ready

FAST = {"rescan_s": 0.05, "retry_base_s": 0.01, "retry_max_s": 0.05}


class RecordingSink:
    """Records published events; drops a repeated id, as JetStream's duplicate window does."""

    def __init__(self) -> None:
        self.messages: list[Envelope[Any]] = []
        self.sent = 0
        self.fail_next = 0
        #: Alarms wait on this (set by default): clear it to play NATS that never answers.
        self.alarms_flow = asyncio.Event()
        self.alarms_flow.set()

    async def publish(self, message: Envelope[Any]) -> object:
        if isinstance(message.data, ArchiveAlarm):
            await self.alarms_flow.wait()
        if self.fail_next:
            self.fail_next -= 1
            raise TimeoutError("injected: NATS did not answer")
        self.sent += 1
        if all(m.id != message.id for m in self.messages):
            self.messages.append(message)
        return None

    @property
    def archived(self) -> list[LogArchived]:
        return [m.data for m in self.messages if isinstance(m.data, LogArchived)]

    @property
    def alarms(self) -> list[ArchiveAlarm]:
        return [m.data for m in self.messages if isinstance(m.data, ArchiveAlarm)]


def pg_database(
    spool: Path, uid: str = "orders-db", system_id: int = SYSTEM_ID
) -> ArchivedDatabase:
    return ArchivedDatabase(
        uid=uid, engine="postgres", name="orders", system_id=system_id, spool_dir=spool
    )


def make_spool(root: Path, uid: str = "orders-db") -> Spool:
    spool = Spool(root / f"spool-{uid}")
    spool.init(uid)
    return spool


def add_segments(spool: Spool, numbers: Sequence[int], timeline: int = 1) -> list[str]:
    names = []
    for number in numbers:
        name = segment_name(timeline, number)
        write_ready(spool.ready_dir, name, segment_bytes(timeline, number))
        names.append(name)
    return names


class Rig:
    """One streamer, started and stopped by the test."""

    def __init__(
        self,
        tmp_path: Path,
        *,
        sources: Sequence[LogSource] | None = None,
        store: BlobStore | None = None,
        sink: RecordingSink | None = None,
        **settings: Any,
    ) -> None:
        self.tmp_path = tmp_path
        self.spool = make_spool(tmp_path)
        self.database = pg_database(self.spool.path)
        self.sources = (
            list(sources) if sources is not None else [PostgresSpoolSource(self.database)]
        )
        self.store: BlobStore = store or MemoryStore()
        self.sink = sink or RecordingSink()
        self.settings = ArchiverSettings(**{**FAST, **settings})
        self.reader = InMemoryMetricReader()
        self.meter_provider = MeterProvider(metric_readers=[self.reader])
        self.metrics = ArchiverMetrics(self.meter_provider.get_meter("test"))
        self.journal_path = tmp_path / "journal.sqlite"
        self.streamer: Streamer | None = None
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> Streamer:
        self.journal = Journal(self.journal_path)
        self.streamer = Streamer(
            sources=self.sources,
            journal=self.journal,
            store=self.store,
            events=self.sink,
            settings=self.settings,
            node="db-node-1",
            source_name="archiver@db-node-1",
            metrics=self.metrics,
        )
        self._task = asyncio.create_task(self.streamer.run())
        return self.streamer

    async def stop(self, timeout: float = 5.0) -> None:
        assert self.streamer is not None
        assert self._task is not None
        await self.streamer.stop(timeout=timeout)
        await asyncio.wait_for(self._task, 5)
        self.journal.close()

    async def until(self, predicate: Callable[[], bool], timeout: float = 10.0) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while not predicate():
            if self._task is not None and self._task.done():
                self._task.result()  # surface the streamer's crash
            if loop.time() > deadline:
                raise AssertionError(f"condition not met within {timeout}s")
            await asyncio.sleep(0.01)

    def metric_points(self, name: str) -> list[Any]:
        data = self.reader.get_metrics_data()
        points: list[Any] = []
        for resource in data.resource_metrics if data else []:
            for scope in resource.scope_metrics:
                for metric in scope.metrics:
                    if metric.name == name:
                        points.extend(metric.data.data_points)
        return points


def ids(messages: Sequence[Envelope[Any]]) -> list[uuid.UUID]:
    return [m.id for m in messages]
