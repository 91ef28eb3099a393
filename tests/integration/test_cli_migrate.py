"""`tidemark migrate status` and a control command's choice of migration, against a real
nats-server with a tiny responder in the planner's place on `tm.qry.planner.migration`."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import pytest
from nats.aio.client import Client
from nats.aio.msg import Msg

from schemas import uuid7
from schemas.messages import (
    MigrationMethod,
    MigrationPhase,
    MigrationProgress,
    MigrationStatusReply,
    MigrationStatusRequest,
    MigrationView,
    PhaseVisit,
)
from services.cli.migratecmds import STATUS_SUBJECT
from services.stack.natsserver import NatsServer

pytestmark = pytest.mark.integration

T0 = datetime(2026, 12, 7, 12, 0, tzinfo=UTC)
READY = MigrationView(
    migration_id=uuid7(),
    source="orders-db",
    target="orders-db-new",
    method=MigrationMethod.PHYSICAL_STREAM,
    phase=MigrationPhase.READY,
    paused=True,
    waiting="a cutover command",
    progress=MigrationProgress(bytes_copied=1 << 30, bytes_total=1 << 30, lag_seconds=0.4),
    downtime_estimate_s=4.0,
    downtime_budget_s=30.0,
    history=[
        PhaseVisit(phase=MigrationPhase.VALIDATING, at=T0),
        PhaseVisit(phase=MigrationPhase.COPYING, at=T0 + timedelta(minutes=1)),
        PhaseVisit(phase=MigrationPhase.READY, at=T0 + timedelta(minutes=9), message="lag held"),
    ],
    requested_at=T0,
    updated_at=T0 + timedelta(minutes=9),
)
OTHER = READY.model_copy(
    update={"migration_id": uuid7(), "target": "orders-db-b", "phase": MigrationPhase.COPYING}
)


@pytest.fixture
async def planner(nc: Client) -> AsyncIterator[list[MigrationStatusRequest]]:
    """Answers the status query from two migrations of orders-db; records what it was asked."""
    asked: list[MigrationStatusRequest] = []

    async def answer(msg: Msg) -> None:
        question = MigrationStatusRequest.model_validate_json(msg.data)
        asked.append(question)
        found = [
            v
            for v in (READY, OTHER)
            if question.source in (None, v.source)
            and question.migration_id in (None, v.migration_id)
        ]
        await msg.respond(MigrationStatusReply(migrations=found).model_dump_json().encode())

    sub = await nc.subscribe(STATUS_SUBJECT, cb=answer)
    await nc.flush()
    try:
        yield asked
    finally:
        await sub.unsubscribe()


async def test_status_and_the_choice_of_a_migration(
    planner: list[MigrationStatusRequest], nats_server: NatsServer
) -> None:
    async def tidemark(*args: str) -> subprocess.CompletedProcess[str]:
        # In a thread: the responder answering the CLI runs on this test's event loop.
        return await asyncio.to_thread(
            subprocess.run,
            [sys.executable, "-m", "services.cli.main", *args, "--nats-url", nats_server.url],
            capture_output=True,
            text=True,
            timeout=60,
            env={**os.environ, "COLUMNS": "200"},
        )

    table = await tidemark("migrate", "status", "orders-db")
    assert table.returncode == 0, table.stdout + table.stderr
    assert str(OTHER.migration_id) in table.stdout
    assert "ready (paused)" in table.stdout

    one = await tidemark("migrate", "status", "orders-db", "--id", str(READY.migration_id))
    assert one.returncode == 0, one.stdout + one.stderr
    assert "waiting for:         a cutover command" in one.stdout
    assert "estimate 4s, budget 30s: within budget" in one.stdout
    assert "lag held" in one.stdout

    document = json.loads((await tidemark("migrate", "status", "-o", "json")).stdout)
    assert {m["target"] for m in document["migrations"]} == {"orders-db-new", "orders-db-b"}

    missing = await tidemark("migrate", "status", "orders-db", "--id", str(uuid7()))
    assert missing.returncode == 1

    several = await tidemark("migrate", "pause", "orders-db")
    assert several.returncode == 1
    assert "2 unfinished migrations" in " ".join(several.stdout.split())

    already = await tidemark("migrate", "pause", "orders-db", "--id", str(READY.migration_id))
    assert already.returncode == 0, already.stdout + already.stderr
    assert "already paused" in already.stdout

    assert planner[0] == MigrationStatusRequest(source="orders-db", include_finished=True)
    assert MigrationStatusRequest(source="orders-db", include_finished=False) in planner
