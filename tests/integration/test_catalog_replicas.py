"""Catalog replicas that agree, and a catalog that catches up by itself (issue 16, 1 and 2).

Against a real nats-server and real stores: replicas on one PostgreSQL store each consume every
event through their own durable and answer alike; a catalog started on an empty store replays
TM_EVT, says it is catching up meanwhile and refuses to answer until it has; a store behind a
stream that no longer holds what it lacks is rebuilt from the bucket, then the stream replayed.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import nats
import pytest
from nats.aio.client import Client
from opentelemetry.sdk.metrics.export import InMemoryMetricReader

from schemas import Lsn, ServiceState
from schemas.messages import TargetPosition
from services.bus import ensure_topology
from services.catalog.catchup import STREAM, CatchUpPhase
from services.catalog.client import CatalogClient, CatalogError
from services.catalog.store import CatalogStore
from services.stack.natsserver import NatsServer
from tests.doubles.catalog_events import SEG
from tests.integration.bus_helpers import FAST, unique, wait_for
from tests.integration.catalog_replica_rig import (
    CLOCK,
    Producer,
    Replica,
    caught_up,
    expected,
    own_answer,
    replicas,
    start,
    windows_of,
)
from tests.integration.test_catalog_ingest import catalog_settings
from tests.integration.test_catalog_ingest_postgres import catalog_pg, pg_url
from tests.integration.test_metrics import of

pytestmark = pytest.mark.integration

__all__ = ["catalog_pg", "pg_url", "replicas"]  # fixtures, collected from here too


async def test_three_replicas_on_one_postgresql_store_answer_every_query_alike(
    nc: Client,
    nats_url: str,
    tmp_path: Path,
    pg_url: tuple[str, Path],
    replicas: list[Replica],
) -> None:
    url, password = pg_url
    producer = Producer(nc)

    def replica(name: str) -> Replica:
        settings = catalog_settings(
            nats_url, tmp_path / name, url=url, password_file=password, replica=unique(name)
        )
        return Replica(settings=settings, only=[producer.uid])

    a = await start(replicas, replica("a"))
    b = await start(replicas, replica("b"))
    await caught_up(a, b)
    # Events flow while both replicas run: each sees every one through its own durable.
    await producer.base()
    await producer.logs(1, 300)
    want = expected(300)
    await wait_for(lambda: all(r.index.snapshot(producer.uid) == want for r in (a, b)), timeout=20)
    assert a.ingest is not None
    assert b.ingest is not None
    assert a.ingest.durable != b.ingest.durable
    # A third replica, started later on the same store, loads it and replays what it lacks.
    c = await start(replicas, replica("c"))
    await caught_up(c)
    await wait_for(lambda: c.index.snapshot(producer.uid) == want, timeout=20)

    client = CatalogClient(nc)
    inside = TargetPosition(position=Lsn(value=200 * SEG))
    replies = [await client.windows(producer.uid) for _ in range(30)]
    checks = [(await client.check(producer.uid, inside)).restorable for _ in range(30)]
    assert [windows_of(r) for r in replies] == [want] * 30
    assert checks == [True] * 30
    # Each replica's own answer, whole: lineages, windows, backups, gaps (not its clock).
    own = [await own_answer(r, producer.uid) for r in (a, b, c)]
    assert own[0] == own[1] == own[2]
    assert all(r.model_dump(exclude=CLOCK) == own[0] for r in replies)
    await producer.close()


async def test_a_catalog_on_an_empty_store_replays_the_stream_and_says_it_is_catching_up(
    nc: Client,
    nats_url: str,
    tmp_path: Path,
    replicas: list[Replica],
    metric_reader: InMemoryMetricReader,
) -> None:
    producer = Producer(nc)
    await producer.base()
    await producer.logs(1, 200)
    name = unique("fresh")
    gate = asyncio.Event()
    settings = catalog_settings(nats_url, tmp_path / "state", replica=name)
    catalog = await start(replicas, Replica(settings=settings, only=[producer.uid], gate=gate))

    # Held mid-replay: it says so everywhere, and answers "unknown yet", not "not restorable".
    assert catalog.catchup.phase is CatchUpPhase.REPLAYING
    health = catalog.health()
    assert health.state is ServiceState.STARTING
    assert "catching up: replaying" in health.detail
    client = CatalogClient(nc)
    for ask in (
        client.windows(producer.uid),
        client.check(producer.uid, TargetPosition(position=Lsn(value=100 * SEG))),
        client.databases(),
    ):
        with pytest.raises(CatalogError) as refused:
            await ask
        assert refused.value.status == 503
        assert "catching up" in refused.value.error
    [gauge] = of(metric_reader, "tidemark.catalog.catching_up", replica=name)
    assert gauge.value == 1

    gate.set()
    await caught_up(catalog)
    assert catalog.health().state is ServiceState.HEALTHY
    assert catalog.index.snapshot(producer.uid) == expected(200)
    assert windows_of(await client.windows(producer.uid)) == expected(200)
    [gauge] = of(metric_reader, "tidemark.catalog.catching_up", replica=name)
    assert gauge.value == 0

    # Stopped and started again, it starts where its store says it got: nothing to replay.
    await catalog.stop()
    store = CatalogStore.open(settings.catalog.url_for(settings.state_dir))
    try:
        position = store.position(STREAM)
    finally:
        store.close()
    assert position is not None
    assert position.sequence > 0
    again = await start(replicas, Replica(settings=settings, only=[producer.uid]))
    assert f"the store is at {position.sequence}" in again.catchup.reason
    await caught_up(again)
    assert again.index.snapshot(producer.uid) == expected(200)
    await producer.close()


@pytest.fixture
def own_nats(tmp_path: Path) -> Iterator[NatsServer]:
    """A nats-server of this test alone: its TM_EVT is trimmed, which the session's must not be."""
    server = NatsServer(store_dir=tmp_path / "nats")
    server.start()
    try:
        yield server
    finally:
        server.stop()


async def test_a_store_behind_a_stream_that_no_longer_holds_its_start_is_rebuilt_from_the_bucket(
    own_nats: NatsServer, tmp_path: Path, replicas: list[Replica]
) -> None:
    nc = await nats.connect(own_nats.url)
    try:
        await ensure_topology(nc.jetstream(), FAST)
        producer = Producer(nc, tmp_path / "bucket")
        await producer.base()
        await producer.logs(1, 50)
        settings = catalog_settings(
            own_nats.url, tmp_path / "state", replica="r1", store_url=producer.bucket_url, prefix=""
        )
        first = await start(replicas, Replica(settings=settings, only=[producer.uid]))
        await caught_up(first)
        await wait_for(lambda: first.index.snapshot(producer.uid) == expected(50), timeout=20)
        await first.stop()

        # While it is down the stream moves on and forgets: its store's next event is gone.
        await producer.logs(51, 120)
        js = nc.jetstream()
        last = (await js.stream_info(STREAM)).state.last_seq
        await js.purge_stream(STREAM, seq=last - 10)
        assert (await js.stream_info(STREAM)).state.first_seq == last - 10

        again = await start(replicas, Replica(settings=settings, only=[producer.uid]))
        assert "rebuilding from the bucket" in again.catchup.reason
        await caught_up(again)
        assert again.index.snapshot(producer.uid) == expected(120)
        # And it goes on from there with what comes next.
        await producer.logs(121, 125)
        await wait_for(lambda: again.index.snapshot(producer.uid) == expected(125), timeout=20)
        await producer.close()
    finally:
        await nc.close()
