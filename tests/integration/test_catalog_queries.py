"""Catalog queries over NATS request/reply, and the `windows` / `check` commands on top."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from collections.abc import AsyncIterator
from datetime import timedelta

import pytest
from nats.aio.client import Client

from schemas import Lsn
from schemas.catalog import QUERY_PREFIX
from schemas.messages import TargetPosition, TargetTime
from services.catalog.client import CatalogClient, CatalogError
from services.catalog.index import CatalogIndex
from services.catalog.queries import serve_queries
from services.stack.natsserver import NatsServer
from tests.unit.test_catalog_index import PG, SEG, T0, base, wal

pytestmark = pytest.mark.integration


@pytest.fixture
async def catalog(nc: Client) -> AsyncIterator[CatalogClient]:
    index = CatalogIndex()
    for segno in [*range(2, 9), *range(10, 14)]:
        index.apply_log(PG, wal(segno))
    index.apply_backup(PG, base("b1", 2 * SEG + 40, 3 * SEG + 100, 3, wal(2).lineage))
    index.apply_backup(PG, base("b2", 10 * SEG + 40, 10 * SEG + 500, 10, wal(2).lineage))
    service = await serve_queries(nc, index)
    try:
        yield CatalogClient(nc, timeout=5)
    finally:
        await service.stop()


async def test_windows_check_and_plan_over_nats(catalog: CatalogClient) -> None:
    windows = await catalog.windows("orders")
    assert [(str(w.start), str(w.end)) for w in windows.windows] == [
        ("0/3000064", "0/9000000"),
        ("0/A0001F4", "0/E000000"),
    ]
    ok = await catalog.check("orders", TargetPosition(position=Lsn.parse("0/4000000")))
    assert ok.restorable
    assert ok.base == "b1"
    plan = await catalog.restore_plan("orders", TargetTime(at=T0 + timedelta(minutes=12)))
    assert plan.base.backup_id == "b2"
    assert plan.target == TargetTime(at=T0 + timedelta(minutes=12))
    assert plan.lineage == "tl-00000001"
    summaries = await catalog.databases()
    assert [s.database.uid for s in summaries.databases] == ["orders"]


async def test_refusals_say_what_is_wrong(catalog: CatalogClient, nc: Client) -> None:
    with pytest.raises(CatalogError) as unknown:
        await catalog.windows("nosuch")
    assert unknown.value.status == 404
    assert "nosuch" in unknown.value.error
    with pytest.raises(CatalogError) as gap:
        await catalog.restore_plan("orders", TargetPosition(position=Lsn.parse("0/9800000")))
    assert gap.value.status == 409
    assert gap.value.body is not None
    assert gap.value.body.check is not None
    assert str(gap.value.body.check.nearest_before) == "0/9000000"
    reply = await nc.request(f"{QUERY_PREFIX}.check", b'{"database": "orders"}', timeout=5)
    assert reply.headers is not None
    assert reply.headers["Nats-Service-Error-Code"] == "400"
    assert "target" in reply.headers["Nats-Service-Error"]
    bad_json = await nc.request(f"{QUERY_PREFIX}.windows", b"{nope", timeout=5)
    assert bad_json.headers is not None
    assert bad_json.headers["Nats-Service-Error-Code"] == "400"


async def test_cli_windows_and_check(catalog: CatalogClient, nats_server: NatsServer) -> None:
    async def tidemark(*args: str) -> subprocess.CompletedProcess[str]:
        # In a thread: the catalog answering the CLI runs on this test's event loop.
        return await asyncio.to_thread(
            subprocess.run,
            [sys.executable, "-m", "services.cli.main", *args, "--nats-url", nats_server.url],
            capture_output=True,
            text=True,
            timeout=60,
        )

    shown = await tidemark("windows", "orders")
    assert shown.returncode == 0, shown.stdout + shown.stderr
    assert "0/A0001F4" in shown.stdout
    assert "gap at thread 1 sequence 9" in shown.stdout
    good = await tidemark("check", "orders", "--lsn", "0/4000000")
    assert good.returncode == 0
    assert "restorable" in good.stdout
    bad = await tidemark("check", "orders", "--lsn", "0/9800000")
    assert bad.returncode == 1
    assert "nearest before: 0/9000000" in bad.stdout
    wrong = await tidemark("check", "orders", "--lsn", "zz")
    assert wrong.returncode == 2
    assert "not a PostgreSQL LSN" in wrong.stderr + wrong.stdout
    both = await tidemark("check", "orders", "--lsn", "0/1", "--scn", "5")
    assert both.returncode == 2
    assert "exactly one" in both.stderr + both.stdout
