"""The topology on a three-node JetStream cluster: replicas go up at start-up, never down.

A service started without `bus.replicas` (default 1) against a cluster's R3 streams leaves them
at R3 and says so; streams and buckets made at R1 are raised to the setting; replicas the
servers cannot hold refuse the start with the reason; lowering is `tidemark bus replicas --set N
--yes` and nothing else."""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import AsyncIterator
from pathlib import Path

import nats
import pytest
from nats.aio.client import Client
from nats.js import JetStreamContext
from nats.js.api import ConsumerConfig
from typer.testing import CliRunner

from services.bus import PLANS_BUCKET, TopologyError, ensure_topology, topology_replicas
from services.bus.topology import topology_streams
from services.cli.main import app
from services.settings import BusSettings
from tests.fixtures.natscluster import NatsCluster
from tests.integration.bus_helpers import delete_topology

pytestmark = pytest.mark.integration

R1 = BusSettings(replicas=1)
R3 = BusSettings(replicas=3)


async def _connect(cluster: NatsCluster) -> Client:
    return await nats.connect(cluster.urls, max_reconnect_attempts=-1, reconnect_time_wait=0.2)


@pytest.fixture
async def js(nats_cluster: NatsCluster) -> AsyncIterator[JetStreamContext]:
    nc = await _connect(nats_cluster)
    context = nc.jetstream()
    await delete_topology(context)
    try:
        yield context
    finally:
        await nc.close()


async def _replicas(js: JetStreamContext) -> set[int | None]:
    return set((await topology_replicas(js)).values())


async def test_a_service_started_with_one_replica_leaves_r3_streams_at_r3_and_warns(
    js: JetStreamContext, caplog: pytest.LogCaptureFixture
) -> None:
    await ensure_topology(js, R3)
    await js.add_consumer(
        "TM_CMD", ConsumerConfig(durable_name="executor-n1", ack_policy="explicit")
    )

    with caplog.at_level(logging.WARNING, logger="tidemark.bus"):
        drifts = await ensure_topology(js, R1)

    assert await _replicas(js) == {3}
    assert sorted(d.stream for d in drifts) == sorted(topology_streams())
    assert all((d.kept, d.setting) == (3, 1) for d in drifts)
    warned = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warned) == len(topology_streams())
    assert "never lowered" in warned[0]
    assert "tidemark bus replicas --set 1 --yes" in warned[0]
    # The consumers stay with their stream's three servers, too.
    consumer = await js.consumer_info("TM_CMD", "executor-n1")
    assert consumer.cluster is not None
    assert len(consumer.cluster.replicas or []) == 2


async def test_streams_and_buckets_made_at_r1_are_raised_to_the_configured_replicas(
    js: JetStreamContext,
) -> None:
    await ensure_topology(js, R1)  # an older release, or a first service without the setting
    plans = await js.key_value(PLANS_BUCKET.name)
    await plans.put("lock.orders", b"held")
    assert await _replicas(js) == {1}

    assert await ensure_topology(js, R3) == []

    assert await _replicas(js) == {3}
    for stream in topology_streams():
        cluster = (await js.stream_info(stream)).cluster
        assert cluster is not None
        assert cluster.leader
        assert [p.current for p in cluster.replicas or []] == [True, True], stream
    entry = await plans.get("lock.orders")
    assert entry.value == b"held"


async def test_replicas_the_cluster_cannot_hold_refuse_the_start_with_the_reason(
    js: JetStreamContext,
) -> None:
    with pytest.raises(TopologyError, match=r"TM_CMD cannot have 5 replicas: no suitable peers"):
        await ensure_topology(js, BusSettings(replicas=5))


async def test_r3_on_a_single_server_refuses_the_start_with_the_reason(nc: Client) -> None:
    js = nc.jetstream()
    await ensure_topology(js, R1)
    with pytest.raises(TopologyError, match=r"not supported in non-clustered mode"):
        await ensure_topology(js, R3)
    assert await _replicas(js) == {1}


async def test_the_topology_is_ensured_with_one_server_of_three_down(
    nats_cluster: NatsCluster, js: JetStreamContext
) -> None:
    await ensure_topology(js, R3)
    nats_cluster.kill(0)
    try:
        # A service starting now meets leaders being elected (seconds): it waits them out,
        # finds its R3 streams (two of three are a quorum) and leaves them at R3.
        assert await ensure_topology(js, R3) == []
        assert await _replicas(js) == {3}
    finally:
        nats_cluster.restart(0)


def _tidemark(cluster: NatsCluster, state: Path, *args: str) -> tuple[int, str]:
    result = CliRunner().invoke(
        app,
        ["bus", "replicas", *args, "--nats-url", cluster.url, "--state-dir", str(state)],
        env={"COLUMNS": "200"},
    )
    return result.exit_code, result.output


def test_lowering_is_the_explicit_admin_command_and_needs_yes(
    nats_cluster: NatsCluster, tmp_path: Path
) -> None:
    async def prepare() -> None:
        nc = await _connect(nats_cluster)
        try:
            await delete_topology(nc.jetstream())
            await ensure_topology(nc.jetstream(), R3)
        finally:
            await nc.close()

    async def replicas() -> set[int | None]:
        nc = await _connect(nats_cluster)
        try:
            return await _replicas(nc.jetstream())
        finally:
            await nc.close()

    asyncio.run(prepare())

    code, out = _tidemark(nats_cluster, tmp_path, "--set", "1")
    assert code == 1, out
    assert "refused" in out
    assert "Nothing was changed" in out
    assert asyncio.run(replicas()) == {3}

    code, out = _tidemark(nats_cluster, tmp_path, "--set", "1", "--yes")
    assert code == 0, out
    assert asyncio.run(replicas()) == {1}

    # Raising needs no confirmation: it is what `bus.replicas = 3` does at start-up anyway.
    code, out = _tidemark(nats_cluster, tmp_path, "--set", "3")
    assert code == 0, out
    assert asyncio.run(replicas()) == {3}
    code, out = _tidemark(nats_cluster, tmp_path)
    assert code == 0, out
    assert re.search(r"KV_tm_plans +R3 ", out), out
