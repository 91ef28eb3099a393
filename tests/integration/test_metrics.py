"""Every documented metric is produced: planner, executor and catalog in this process on the
session's nats-server (the stack of `test_tracing.py`), read by the in-memory metric reader of
`tests/fixtures/telemetry.py`. The archiver's are produced in `tests/unit/test_archiver_streamer.py`
(`tidemark.archive.*`). `docs/observability.md` lists them all; `test_dashboards.py` checks the
dashboard and the alerts use only those.
"""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime
from typing import Any

import pytest
from nats.aio.client import Client
from opentelemetry.sdk.metrics.export import InMemoryMetricReader

from schemas import Lsn, node_token
from schemas.messages import BackupVerified, RequestAccepted, RequestRestore, TargetPosition
from services.bus import Publisher
from services.executor import errors
from services.planner.client import PlannerClient
from tests.doubles.executor_rig import run_backup
from tests.integration.bus_helpers import dead_letters, unique
from tests.integration.test_tracing import Stack, services

pytestmark = pytest.mark.integration

__all__ = ["services"]  # the fixture, shared with test_tracing.py


def points(reader: InMemoryMetricReader, name: str) -> list[Any]:
    data = reader.get_metrics_data()
    found: list[Any] = []
    for resource in data.resource_metrics if data else []:
        for scope in resource.scope_metrics:
            for metric in scope.metrics:
                if metric.name == name:
                    found.extend(metric.data.data_points)
    return found


def of(reader: InMemoryMetricReader, name: str, **attributes: str) -> list[Any]:
    return [
        p
        for p in points(reader, name)
        if all(p.attributes.get(k) == v for k, v in attributes.items())
    ]


async def test_the_operations_produce_every_metric(
    nc: Client, services: Stack, metric_reader: InMemoryMetricReader
) -> None:
    db, uid = services.db, services.db.uid
    answer = await PlannerClient(nc, timeout=15).request(
        RequestRestore(target=TargetPosition(position=Lsn.parse("0/4000000"))), db
    )
    assert isinstance(answer, RequestAccepted), answer
    # A job the executor refuses (its database is not hosted there): a failure and a dead letter.
    stranger = run_backup(unique("db"))
    await Publisher(nc.jetstream(), source="planner@test").publish(stranger, node=services.node)
    await dead_letters(nc.jetstream(), f"tm.cmd.executor.{node_token(services.node)}.backup")
    # A good verification the planner records.
    verified_at = datetime(2026, 3, 1, 12, tzinfo=UTC)
    await Publisher(nc.jetstream(), source="executor@test").emit(
        BackupVerified(backup_id="b1", job_id=uuid.uuid4(), ok=True, verified_at=verified_at),
        database=db,
    )

    async def restored() -> bool:
        return bool(of(metric_reader, "tidemark.job.duration", operation="restore"))

    for _ in range(200):
        verified = of(metric_reader, "tidemark.last_verification.timestamp", database=uid)
        if await restored() and verified:
            break
        await asyncio.sleep(0.1)

    [duration] = of(metric_reader, "tidemark.job.duration", operation="restore")
    assert duration.attributes["outcome"] == "succeeded"
    assert duration.count >= 1
    failures = of(
        metric_reader, "tidemark.job.failures", operation="backup", code=errors.NOT_HOSTED
    )
    assert failures, points(metric_reader, "tidemark.job.failures")
    assert of(metric_reader, "tidemark.dead_letters", error="terminal")

    [verified] = of(metric_reader, "tidemark.last_verification.timestamp", database=uid)
    assert verified.value == verified_at.timestamp()
    [start] = of(metric_reader, "tidemark.window.start_timestamp", database=uid)
    [end] = of(metric_reader, "tidemark.window.end_timestamp", database=uid)
    assert start.value < end.value
    [rpo] = of(metric_reader, "tidemark.rpo", database=uid)
    assert rpo.value == pytest.approx(datetime.now(UTC).timestamp() - end.value, abs=30)
    [backup] = of(metric_reader, "tidemark.last_backup.timestamp", database=uid)
    assert start.value <= backup.value
