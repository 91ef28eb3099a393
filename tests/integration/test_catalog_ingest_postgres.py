"""The catalog on PostgreSQL (a replicated catalog's store), against a real server over TCP.

The store contract of tests/unit/test_catalog_store.py runs here unchanged (each test in its own
database), then the service ingests events into a PostgreSQL store and reloads them.
"""

from __future__ import annotations

import concurrent.futures
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from nats.aio.client import Client
from sqlalchemy import select

from schemas import Timeline
from schemas.messages import WindowChanged
from services.catalog.migrations import MIGRATIONS
from services.catalog.store import CatalogStore
from services.catalog.tables import logs
from tests.doubles.catalog_events import ORA, SEG, backup, redo
from tests.fixtures.postgres import PgCluster
from tests.integration.test_catalog_ingest import Rig, open_rig, until
from tests.integration.test_catalog_ingest import logs as wal_logs
from tests.unit import test_catalog_store as contract
from tests.unit.test_catalog_store import INC1, TOP

pytestmark = pytest.mark.integration

# The store contract, collected again here with this module's `store` fixture.
globals().update({n: f for n, f in vars(contract).items() if n.startswith("test_store_")})


@pytest.fixture(scope="module")
def catalog_pg() -> Iterator[PgCluster]:
    cluster = PgCluster()
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.cleanup()


@pytest.fixture
def pg_url(catalog_pg: PgCluster, tmp_path: Path) -> tuple[str, Path]:
    """A fresh database on the module's server: its URL (no password) and the password file."""
    name = f"catalog_{uuid.uuid4().hex[:12]}"
    catalog_pg.execute(f"CREATE DATABASE {name}")
    password = tmp_path / "catalog-password"
    password.write_text(catalog_pg.password + "\n")
    password.chmod(0o600)
    url = f"postgresql://{catalog_pg.superuser}@127.0.0.1:{catalog_pg.port}/{name}"
    return url, password


@pytest.fixture
def store(pg_url: tuple[str, Path]) -> Iterator[CatalogStore]:
    url, password = pg_url
    opened = CatalogStore.open(url, password_file=password)
    try:
        yield opened
    finally:
        opened.close()


def test_positions_are_exact_numerics_on_postgresql(store: CatalogStore) -> None:
    store.record_log(ORA, redo(1, 1, TOP - 1, TOP, INC1))
    with store.engine.begin() as conn:
        raw = conn.exec_driver_sql("SELECT first::text, next::text FROM logs").one()
        assert tuple(raw) == (str(TOP - 1), str(TOP))
        kind = conn.exec_driver_sql(
            "SELECT data_type, numeric_precision FROM information_schema.columns "
            "WHERE table_name = 'logs' AND column_name = 'first'"
        ).one()
        assert tuple(kind) == ("numeric", 20)
        assert conn.execute(select(logs.c.first)).scalar_one() == TOP - 1
    assert store.version() == len(MIGRATIONS)


def test_two_replicas_migrating_at_once_end_at_one_version(pg_url: tuple[str, Path]) -> None:
    url, password = pg_url
    first = CatalogStore.open(url, password_file=password, migrate=False)
    second = CatalogStore.open(url, password_file=password, migrate=False)
    try:
        with concurrent.futures.ThreadPoolExecutor(2) as pool:
            applied = sorted(pool.map(lambda s: s.migrate(), (first, second)))
        # The advisory lock serialises them: one applies everything, the other nothing.
        assert applied == [[], [m.version for m in MIGRATIONS]]
    finally:
        first.close()
        second.close()


def test_a_password_in_the_url_is_refused(catalog_pg: PgCluster) -> None:
    url = f"postgresql://postgres:{catalog_pg.password}@127.0.0.1:{catalog_pg.port}/postgres"
    with pytest.raises(ValueError, match="must not carry a password"):
        CatalogStore.open(url)


@pytest.fixture
async def pg_rig(
    nc: Client, nats_url: str, tmp_path: Path, pg_url: tuple[str, Path]
) -> AsyncIterator[Rig]:
    url, password = pg_url
    async with open_rig(nc, nats_url, tmp_path, url=url, password_file=password) as made:
        yield made


async def test_the_service_ingests_into_postgresql_and_reloads(pg_rig: Rig) -> None:
    rig = pg_rig
    service = await rig.start()
    for log in wal_logs(rig, 1, 2, 3):
        await rig.publish(log)
    await rig.publish(backup("b1", SEG + 0x28, SEG + 0x100, Timeline(id=1), database=rig.db))
    await until(lambda: len(rig.outbox.indexed()) == 3)
    await until(lambda: len(rig.outbox.of(WindowChanged)) == 1)
    before = service.index.snapshot(rig.uid)
    assert before == [("tl-00000001", SEG + 0x100, 4 * SEG)]
    await rig.stop()
    again = await rig.start()
    assert again.index.snapshot(rig.uid) == before
