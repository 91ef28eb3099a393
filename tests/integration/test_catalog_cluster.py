"""Catalog replicas on a three-node JetStream cluster, as the chart deploys them (issue 16).

Three routed nats-servers, `bus.replicas = 3`, two catalog replicas on one PostgreSQL store:
while events flow, the server leading TM_EVT is killed, and later started again; every answer
over NATS, and each replica's own, is the same window throughout. A catalog started afterwards on
an empty store replays the stream and answers with the same window.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import nats
import pytest
from nats.aio.client import Client

from schemas import Lsn
from schemas.messages import TargetPosition
from services.bus import ensure_topology, topology_replicas
from services.catalog.catchup import STREAM
from services.catalog.client import CatalogClient
from services.catalog.settings import CatalogSettings
from services.settings import BusSettings, NatsSettings, Settings
from tests.doubles.catalog_events import SEG
from tests.fixtures.natscluster import NatsCluster
from tests.integration.bus_helpers import FAST, delete_topology, unique, wait_for
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
from tests.integration.test_catalog_ingest_postgres import catalog_pg, pg_url

pytestmark = pytest.mark.integration

__all__ = ["catalog_pg", "pg_url", "replicas"]  # fixtures, collected from here too

R3 = BusSettings(**{**FAST.model_dump(), "replicas": 3})
#: Between two logs while a server dies or comes back: the flow outlasts the fault.
FLOW_S = 0.01
#: Asked of the queue group at each point: enough that every replica answers some.
ASKS = 20


def settings_for(cluster: NatsCluster, state_dir: Path, **catalog: object) -> Settings:
    return Settings(
        node="catalog-node",
        state_dir=state_dir,
        nats=NatsSettings(url=cluster.url),
        bus=R3,
        catalog=CatalogSettings(**{"http_port": 0, **catalog}),
    )


@pytest.fixture
async def cluster_nc(nats_cluster: NatsCluster) -> AsyncIterator[Client]:
    """A client of every server, on a clean slate at R3 (the cluster is the session's)."""
    nc = await nats.connect(nats_cluster.urls, max_reconnect_attempts=-1, reconnect_time_wait=0.2)
    js = nc.jetstream()
    await delete_topology(js)
    await ensure_topology(js, R3)
    try:
        yield nc
    finally:
        await nc.close()


async def stream_leader(nc: Client, cluster: NatsCluster) -> int:
    """The index of the server that leads TM_EVT (whose loss moves the stream)."""
    info = await nc.jetstream().stream_info(STREAM)
    assert info.cluster is not None
    names = [f"tidemark-{s.port}" for s in cluster.servers]
    return names.index(str(info.cluster.leader))


async def agree(client: CatalogClient, catalogs: list[Replica], uid: str, logs: int) -> None:
    """Every answer over NATS and every replica's own show the window of `logs` logs."""
    want = expected(logs)
    inside = TargetPosition(position=Lsn(value=(logs // 2 + 1) * SEG))
    replies = [await client.windows(uid) for _ in range(ASKS)]
    checks = [(await client.check(uid, inside)).restorable for _ in range(ASKS)]
    assert [windows_of(r) for r in replies] == [want] * ASKS
    assert checks == [True] * ASKS
    own = [await own_answer(c, uid) for c in catalogs]
    assert all(o == own[0] for o in own)
    assert all(r.model_dump(exclude=CLOCK) == own[0] for r in replies)


async def test_catalog_replicas_agree_through_a_server_kill_and_a_fresh_one_catches_up(
    nats_cluster: NatsCluster,
    cluster_nc: Client,
    tmp_path: Path,
    pg_url: tuple[str, Path],
    replicas: list[Replica],
) -> None:
    assert set((await topology_replicas(cluster_nc.jetstream())).values()) == {3}
    url, password = pg_url
    producer = Producer(cluster_nc)
    client = CatalogClient(cluster_nc, timeout=10.0)

    def on_store(name: str) -> Replica:
        settings = settings_for(
            nats_cluster, tmp_path / name, url=url, password_file=password, replica=unique(name)
        )
        return Replica(settings=settings, only=[producer.uid])

    pair = [await start(replicas, on_store("a")), await start(replicas, on_store("b"))]
    await caught_up(*pair)

    def indexed(logs: int, *catalogs: Replica) -> bool:
        return all(c.index.snapshot(producer.uid) == expected(logs) for c in catalogs)

    await producer.base()
    await producer.logs(1, 100)
    await wait_for(lambda: indexed(100, *pair), timeout=20)
    await agree(client, pair, producer.uid, 100)

    # The stream's leader dies mid-flow: publishes wait for a new leader and are sent again
    # under their ids, each replica's consumer moves with it.
    lost = await stream_leader(cluster_nc, nats_cluster)
    flowing = asyncio.create_task(producer.logs(101, 200, every_s=FLOW_S))
    await wait_for(lambda: producer.published > 130, timeout=20)
    nats_cluster.kill(lost)
    assert not flowing.done()
    await flowing
    await wait_for(lambda: indexed(200, *pair), timeout=30)
    await agree(client, pair, producer.uid, 200)  # with one server of three down

    # And back while events flow: it catches up from the others.
    flowing = asyncio.create_task(producer.logs(201, 300, every_s=FLOW_S))
    await asyncio.to_thread(nats_cluster.restart, lost)
    await flowing
    await wait_for(lambda: indexed(300, *pair), timeout=30)
    await agree(client, pair, producer.uid, 300)

    # A catalog on an empty store (the chart's emptyDir) replays TM_EVT to the same window.
    fresh = await start(
        replicas,
        Replica(
            settings=settings_for(nats_cluster, tmp_path / "fresh", replica=unique("fresh")),
            only=[producer.uid],
        ),
    )
    await caught_up(fresh, timeout=30)
    assert indexed(300, fresh)
    await agree(client, [*pair, fresh], producer.uid, 300)
    await producer.close()
