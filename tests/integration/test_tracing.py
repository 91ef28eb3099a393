"""One operation, one trace: a restore requested through the planner, run by a real executor (on
a `FakeEngine`) and planned from a real catalog, on the session's nats-server, read back from
the in-memory span exporter (`tests/fixtures/telemetry.py`).

The chain: the request's producer span → the planner's intake span → the catalog's `check` and
`restore_plan` query spans → `restore.run` → the executor's job span → the job's events → the
planner's handling of them. All of it must share one trace id and be one tree.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from nats.aio.client import Client
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from schemas import DatabaseRef, Engine, Lsn, Timeline, envelope
from schemas.messages import RequestAccepted, RequestRestore, TargetPosition
from services.archiver.settings import ArchiverSettings
from services.bus import Publisher, ensure_topology
from services.catalog.client import CatalogClient, CatalogError
from services.engines.registry import EngineRegistry
from services.executor.service import ExecutorService
from services.executor.settings import ExecutorSettings
from services.planner.client import PlannerClient
from services.planner.service import PlannerService
from services.planner.settings import PlannerSettings
from services.settings import NatsSettings, Settings
from services.telemetry import tracer
from tests.doubles.catalog_events import SEG, backup, wal
from tests.doubles.executor_rig import hosted
from tests.doubles.fake_engine import FakeEngine
from tests.integration.bus_helpers import FAST, unique
from tests.integration.test_catalog_ingest import NarrowCatalog, catalog_settings

pytestmark = pytest.mark.integration


async def feed_catalog(nc: Client, db: DatabaseRef) -> None:
    """Segments 2-8 and a base backup in them: 0/4000000 is restorable."""
    payloads: list[Any] = [wal(s, database=db) for s in range(2, 9)]
    payloads.append(
        backup("b1", 2 * SEG + 40, 3 * SEG + 100, Timeline(id=1), minute=3, database=db)
    )
    js = nc.jetstream()
    for data in payloads:
        message = envelope(data, source="archiver@db-node-1", database=db)
        await js.publish(
            f"tm.evt.{data.TYPE}.{db.uid}",
            message.model_dump_json().encode(),
            headers={"Nats-Msg-Id": str(message.id)},
        )
    client = CatalogClient(nc, timeout=5)
    for _ in range(100):
        with contextlib.suppress(CatalogError):  # 404 until the first event is indexed
            if (await client.windows(db.uid)).backups:
                return
        await asyncio.sleep(0.1)
    raise AssertionError("the catalog did not index the synthetic history")


@dataclass
class Stack:
    """Planner, executor (on `node`, hosting `db`) and catalog, in this process."""

    db: DatabaseRef
    node: str


@pytest.fixture
async def services(nc: Client, nats_url: str, tmp_path: Path) -> AsyncIterator[Stack]:
    await ensure_topology(nc.jetstream(), FAST)
    uid = unique("tr")
    db = DatabaseRef(uid=uid, engine=Engine.POSTGRES, name=uid.replace("-", "_"))
    node = unique("node")
    # No timeline page: its fixed port may be taken by another test run on this machine.
    settings = catalog_settings(nats_url, tmp_path / "catalog", http_port=0)
    catalog = NarrowCatalog(settings=settings, only=[uid])
    executor_settings = Settings(
        node=node,
        state_dir=tmp_path / "executor",
        nats=NatsSettings(url=nats_url),
        bus=FAST,
        archiver=ArchiverSettings(store_url=f"file://{tmp_path / 'store'}", prefix="p"),
        executor=ExecutorSettings(
            databases=[hosted(uid)], heartbeat_s=0.2, progress_interval_s=0.05
        ),
    )
    executor = ExecutorService(
        settings=executor_settings,
        engines=EngineRegistry(executor_settings.executor, drivers={Engine.POSTGRES: FakeEngine()}),
    )
    planner = PlannerService(
        settings=Settings(
            node="planner-trace",
            state_dir=tmp_path / "planner",
            nats=NatsSettings(url=nats_url),
            bus=FAST,
            planner=PlannerSettings(tick_s=0.05, catchup_grace_s=3600),
        ),
        run_retention=False,
    )
    started = []
    try:
        for service in (catalog, executor, planner):
            await service.start()
            started.append(service)
        await feed_catalog(nc, db)
        yield Stack(db, node)
    finally:
        for service in reversed(started):
            await service.stop()


def the_trace(spans: list[ReadableSpan], trace_id: int) -> dict[int, ReadableSpan]:
    return {
        s.context.span_id: s
        for s in spans
        if s.context is not None and s.context.trace_id == trace_id
    }


async def test_a_restore_is_one_connected_trace(
    nc: Client, services: Stack, spans: InMemorySpanExporter
) -> None:
    db = services.db
    with tracer("test").start_as_current_span("operator restore") as root:
        trace_id = root.get_span_context().trace_id
        answer = await PlannerClient(nc, timeout=15).request(
            RequestRestore(target=TargetPosition(position=Lsn.parse("0/4000000"))), db
        )
    assert isinstance(answer, RequestAccepted), answer

    def names() -> list[str]:
        return [s.name for s in the_trace(list(spans.get_finished_spans()), trace_id).values()]

    # The saga ends when the planner has handled the job's end; its last span is that handler.
    wanted = {
        "process restore.request",
        "catalog check",
        "catalog restore_plan",
        "publish restore.run",
        "process restore.run",
        "job restore",
        "publish job.accepted",
        "publish job.succeeded",
        "publish restore.completed",
        "process job.succeeded",
        "process restore.completed",
    }
    for _ in range(200):
        if wanted <= set(names()):
            break
        await asyncio.sleep(0.1)
    await asyncio.sleep(0.3)  # spans of the last handlers still closing
    found = the_trace(list(spans.get_finished_spans()), trace_id)
    assert wanted <= {s.name for s in found.values()}, sorted({s.name for s in found.values()})

    roots = [s for s in found.values() if s.parent is None]
    assert [s.name for s in roots] == ["operator restore"]
    orphans = [
        s.name for s in found.values() if s.parent is not None and s.parent.span_id not in found
    ]
    assert not orphans, orphans


async def test_an_event_ingested_in_a_batch_continues_its_publishers_trace(
    nc: Client, services: Stack, spans: InMemorySpanExporter
) -> None:
    db = services.db
    data = backup("b2", 5 * SEG + 40, 6 * SEG + 100, Timeline(id=1), minute=5, database=db)
    with tracer("test").start_as_current_span("executor backup") as root:
        trace_id = root.get_span_context().trace_id
        await Publisher(nc.jetstream(), source="executor@test").emit(data, database=db)

    def ingested() -> list[ReadableSpan]:
        found = the_trace(list(spans.get_finished_spans()), trace_id)
        # The planner takes it too (one by one, no link); the catalog's comes from a batch.
        return [s for s in found.values() if s.name == "process backup.completed" and s.links]

    for _ in range(100):
        if ingested():
            break
        await asyncio.sleep(0.1)
    [span] = ingested()
    found = the_trace(list(spans.get_finished_spans()), trace_id)
    assert span.parent is not None
    assert span.parent.span_id in found
    assert found[span.parent.span_id].name == "publish backup.completed"
    # …and linked to the batch that handled it, whose own trace is the catalog's.
    [link] = span.links
    [batch] = [s for s in spans.get_finished_spans() if s.context == link.context]
    assert batch.name.startswith("process batch ")
