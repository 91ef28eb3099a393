"""The archiver's Oracle source on the simulated Oracle database (not Oracle), through NATS to the
real catalog.

The archiver service runs in-process with its real streamer, journal and filesystem store; its
only stand-in is the session: `SimulatedSession` over a two-thread simulated database, in place
of python-oracledb. The catalog is the real service, narrowed to this test's database.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from nats.aio.client import Client

from schemas import Envelope, decode
from schemas.messages import ArchiveAlarm, LogArchived, LogsIndexed
from services.archiver.oracle import OracleArchiveSource
from services.archiver.service import ArchiverService
from services.archiver.settings import ArchivedDatabase, ArchiverSettings
from services.archiver.sources import LogSource
from services.blobstore import open_store
from services.catalog.settings import CatalogSettings
from services.settings import NatsSettings, Settings
from tests.integration.bus_helpers import FAST, unique, wait_for
from tests.integration.test_catalog_ingest import NarrowCatalog
from tests.oracle_sim.db import SimulatedOracle, switch_logfile
from tests.oracle_sim.session import SimulatedSession

pytestmark = [pytest.mark.integration, pytest.mark.oracle]

DBID = 3_141_592_653


@dataclass
class Stack:
    uid: str
    sim: SimulatedOracle
    session: SimulatedSession
    store_dir: Path
    outbox: list[Envelope[Any]]
    archiver: ArchiverService
    catalog: NarrowCatalog

    def of(self, kind: type[Any]) -> list[Any]:
        return [m.data for m in self.outbox if isinstance(m.data, kind)]

    def indexed(self) -> int:
        """Logs the catalog has announced (`logs.indexed`)."""
        return sum(len(m.logs) for m in self.of(LogsIndexed))


@pytest.fixture
async def stack(nc: Client, nats_url: str, tmp_path: Path) -> AsyncIterator[Stack]:
    uid = unique("ora")
    sim = SimulatedOracle.create(tmp_path / "sim", threads=2, dbid=DBID)
    session = SimulatedSession(sim)
    password = tmp_path / "oracle-password"
    password.write_text("never read: the session is simulated\n")
    database = ArchivedDatabase(
        uid=uid,
        engine="oracle",
        name="TMSIM",
        system_id=DBID,
        archive_dest_id=1,
        oracle={"dsn": "sim:1521/TMSIM", "user": "C##TIDEMARK", "password_file": password},
        gap_grace_s=0,
        full_read_s=0.2,
    )
    store_dir = tmp_path / "store"

    def simulated(configured: ArchivedDatabase) -> LogSource:
        return OracleArchiveSource(configured, session)

    outbox: list[Envelope[Any]] = []

    async def collect(msg: Any) -> None:
        outbox.append(decode(msg.data, subject=msg.subject))

    sub = await nc.subscribe(f"tm.evt.*.*.{uid}", cb=collect)
    archiver = ArchiverService(
        settings=Settings(
            node="ora-node-1",
            state_dir=tmp_path / "archiver",
            nats=NatsSettings(url=nats_url),
            bus=FAST,
            archiver=ArchiverSettings(
                store_url=f"file://{store_dir}",
                rescan_s=0.1,
                retry_base_s=0.05,
                databases=[database],
            ),
        ),
        source_factory=simulated,
    )
    catalog = NarrowCatalog(
        settings=Settings(
            node="catalog-node",
            state_dir=tmp_path / "catalog",
            nats=NatsSettings(url=nats_url),
            bus=FAST,
            catalog=CatalogSettings(http_port=0),
        ),
        only=[uid],
    )
    await catalog.start()
    await archiver.start()
    try:
        yield Stack(uid, sim, session, store_dir, outbox, archiver, catalog)
    finally:
        await archiver.stop()
        await catalog.stop()
        await sub.unsubscribe()
    assert session.closed, "the archiver closes its session when it stops"


def lose_a_log(sim: SimulatedOracle, thread: int) -> int:
    """A log switched out and deleted from the destination before anyone archived it, then the
    next switch: in one transaction, so the archiver cannot see the log while it exists."""
    with sim.transaction() as st:
        lost = switch_logfile(st, sim.arch_dir, thread)
        Path(lost.name).unlink()
        next(x for x in st.controlfile.archived_logs if x.recid == lost.recid).status = "D"
        switch_logfile(st, sim.arch_dir, thread)
    return lost.sequence


async def test_two_threads_are_archived_indexed_and_a_lost_log_is_a_gap(stack: Stack) -> None:
    sim = stack.sim
    for round_ in range(3):
        sim.insert(f"order {round_} on thread 1", thread=1)
        sim.insert(f"order {round_} on thread 2", thread=2)
        sim.archive_log_current()
    expected = {(r["thread#"], r["sequence#"]): r for r in sim.archived_logs(1)}
    assert sorted(expected) == [(1, 1), (1, 2), (1, 3), (2, 1), (2, 2), (2, 3)]

    await wait_for(lambda: stack.indexed() == 6, timeout=30)
    archived: list[LogArchived] = stack.of(LogArchived)
    assert {(a.thread, a.sequence) for a in archived} == set(expected)

    # Each object describes itself: identity and range from V$ARCHIVED_LOG, not the file name.
    rid = sim.database()["resetlogs_id"]
    store = open_store(f"file://{stack.store_dir}")
    try:
        for (thread, sequence), row in expected.items():
            key = f"{stack.uid}/inc-{rid}/logs/{thread}/{sequence:010d}"
            info = await store.head(key)
            assert info is not None, key
            meta = info.metadata
            assert (meta["engine"], meta["kind"], meta["lineage"]) == (
                "oracle",
                "redo",
                f"inc-{rid}",
            )
            assert (meta["thread"], meta["sequence"]) == (str(thread), str(sequence))
            assert (meta["first"], meta["next"]) == (
                str(row["first_change#"]),
                str(row["next_change#"]),
            )
            assert meta["first_time"] == row["first_time"].isoformat()
            assert meta["next_time"] == row["next_time"].isoformat()
            assert meta["system_id"] == str(DBID)
            assert int(meta["size"]) == (row["blocks"] + 1) * row["block_size"]
    finally:
        await store.close()

    # The catalog holds both threads' chains, contiguous in SCN.
    history = stack.catalog.index.database(stack.uid).history
    threads = history.threads(f"inc-{rid}")
    for thread in (1, 2):
        first = expected[(thread, 1)]["first_change#"]
        last = expected[(thread, 3)]["next_change#"]
        assert threads[thread].cover.intervals() == [(first, last)]

    # A log of thread 2 is lost before it reaches the archiver: a gap, named, not skipped.
    lost = lose_a_log(sim, thread=2)
    await wait_for(lambda: len(stack.of(ArchiveAlarm)) == 1, timeout=30)
    alarm: ArchiveAlarm = stack.of(ArchiveAlarm)[0]
    assert f"gap: thread 2 sequence {lost}" in alarm.detail
    assert alarm.object_key == f"{stack.uid}/inc-{rid}/logs/2/{lost:010d}"
    # The log after the gap is archived all the same, and the catalog sees the hole.
    await wait_for(lambda: stack.indexed() == 7, timeout=30)
    assert {(a.thread, a.sequence) for a in stack.of(LogArchived)} == {
        *expected,
        (2, lost + 1),
    }
    assert len(threads[2].cover.intervals()) == 2, "the lost log splits thread 2's chain"


async def test_the_simulated_session_answers_as_the_views_do(tmp_path: Path) -> None:
    sim = SimulatedOracle.create(tmp_path / "sim", threads=2, dbid=DBID)
    session = SimulatedSession(sim)
    sim.insert("one", thread=1)
    sim.archive_log_current()
    lost = lose_a_log(sim, thread=1)

    info = await session.database()
    assert (info.dbid, info.archivelog, info.open_mode) == (DBID, True, "READ WRITE")
    (incarnation,) = await session.incarnations()
    assert (incarnation.status, incarnation.resetlogs_change) == ("CURRENT", info.resetlogs_change)
    assert [(t.thread, t.is_enabled, t.sequence) for t in await session.threads()] == [
        (1, True, lost + 2),
        (2, True, 2),
    ]
    rows = await session.archived_logs(1)
    assert [(r.thread, r.sequence) for r in rows] == [(1, 1), (1, lost + 1), (2, 1)]
    assert all(r.available and r.first_time.tzinfo is not None for r in rows)
    newer = await session.archived_logs(1, after_recid=max(r.recid for r in rows))
    assert newer == [], "RECID past the last row: nothing"
    history = await session.log_history(1, 1)
    assert [h.sequence for h in history] == [1, lost, lost + 1], "the lost log's switch is there"
    assert [h.sequence for h in await session.log_history(1, lost)] == [lost, lost + 1]
    assert await session.backup_pieces("no-such-job") == []
    assert (await session.rman_progress("no-such-job")).statuses == ()
    await session.close()
