"""The Oracle engine through the real services over NATS, on the simulated Oracle (not Oracle).

    planner ── backup.run / restore.run ──▶ executor (OracleEngine) ── rman ──▶ simulated database
       ▲                                        │ pieces + manifests            │ V$ARCHIVED_LOG
       │ windows, restore plans                 ▼                               ▼
    catalog ◀── backup.completed, log.archived ── file store ◀── archiver (Oracle source)

Every service is the real one, in-process, over a real nats-server; the only stand-ins are the
Oracle database and its tools (`tests/oracle_sim`): the executor's engine gets the simulated
views through `OracleEngine(views=...)` and the archiver the simulated session through its
`source_factory`, the two seams made for this. The simulated table's ledger says what the table
held at every SCN, so each restore is checked row for row, and the simulator's run log says
whether RMAN ran at all.

One story, in order (each step builds on the last; splitting it would repeat the backups):

1. ORA-01017 on a backup: fatal, one RMAN run, `backup.failed`. ORA-19511 on the next: retried
   by the engine, the level 0 completes after two runs.
2. Rows on two threads, a level 1, more rows, then a log lost from the destination (a gap).
3. Refused by the planner with the catalog's reason, RMAN never started: a target at the level
   0's M_B, a target inside the gap.
4. Restored through the planner: an SCN from the level 0, a time and an SCN from the level 1
   (the engine stages the level 0 under it), each one exactly the ledger's rows.
5. After the last OPEN RESETLOGS: a level 0 on the new incarnation, rows, and a restore on the
   incarnation the planner now calls current; an SCN before that incarnation began, asked on
   it, is refused.
"""

from __future__ import annotations

import asyncio
import math
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from nats.aio.client import Client
from nats.aio.msg import Msg

from schemas import DatabaseRef, Engine, Envelope, Incarnation, Scn, decode
from schemas.messages import (
    BackupCompleted,
    BackupFailed,
    BackupSpec,
    RequestAccepted,
    RequestBackup,
    RequestRejected,
    RequestRestore,
    RestoreCompleted,
    RestoreFailed,
    RunRestore,
)
from schemas.messages.backups import BackupKind
from schemas.messages.restores import TargetPosition, TargetTime
from services.archiver.oracle import OracleArchiveSource
from services.archiver.service import ArchiverService
from services.archiver.settings import ArchivedDatabase, ArchiverSettings
from services.archiver.sources import LogSource
from services.bus import ensure_topology
from services.catalog.client import CatalogClient
from services.engines.oracle.engine import OracleEngine
from services.engines.registry import EngineRegistry
from services.executor.service import ExecutorService
from services.executor.settings import ExecutorSettings, HostedDatabase, OracleInstance
from services.planner.client import PlannerClient
from services.planner.service import PlannerService
from services.planner.settings import PlannerSettings
from services.settings import NatsSettings, Settings
from tests.integration.bus_helpers import FAST, unique
from tests.integration.test_archiver_oracle_sim import lose_a_log
from tests.integration.test_catalog_ingest import NarrowCatalog, catalog_settings
from tests.oracle_sim.db import SimulatedOracle
from tests.oracle_sim.rman import error_stack
from tests.oracle_sim.session import SimulatedSession
from tests.oracle_sim.tools import install
from tests.oracle_sim.views import SimulatedViews

pytestmark = [pytest.mark.integration, pytest.mark.oracle]

DBID = 2_718_281_828
NODE = "ora-e2e-node"
RETRYABLE = error_stack(
    "RMAN-03009: failure of backup command on ch1 channel at 01/01/2024 00:00:00",
    "ORA-19511: non RMAN, but media manager or vendor specific failure, error text:",
    "   simulated media manager: tape library busy",
)
FATAL = error_stack(
    "RMAN-00554: initialization of internal recovery manager package failed",
    "RMAN-04005: error from target database:",
    "ORA-01017: invalid username/password; logon denied",
)


@dataclass
class Stack:
    nc: Client
    uid: str
    sim: SimulatedOracle
    services: list[Any]
    events: list[Envelope[Any]] = field(default_factory=list)
    restores_sent: list[RunRestore] = field(default_factory=list)

    @property
    def planner(self) -> PlannerClient:
        return PlannerClient(self.nc, timeout=20)

    @property
    def rid(self) -> int:
        return int(self.sim.database()["resetlogs_id"])

    def rman_runs(self) -> int:
        return len(self.sim.runs("rman"))

    async def ended(self, ref_id: str, kinds: tuple[type[Any], ...], timeout: float) -> Any:
        """The first event of `kinds` about `ref_id` (a backup id or a restore id)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while loop.time() < deadline:
            for event in self.events:
                data = event.data
                ids = {str(getattr(data, "backup_id", "")), str(getattr(data, "restore_id", ""))}
                if isinstance(data, kinds) and ref_id in ids:
                    return data
            await asyncio.sleep(0.05)
        raise AssertionError(f"no {[k.__name__ for k in kinds]} for {ref_id} within {timeout}s")

    async def accepted(self, payload: Any) -> RequestAccepted:
        """Ask the planner; a backup or restore still holding the database's lock (its end is
        being released) is asked again."""
        for _ in range(100):
            answer = await self.planner.request(payload, self.uid)
            if isinstance(answer, RequestAccepted):
                return answer
            if "lock" not in answer.reason and "busy" not in answer.reason:
                raise AssertionError(f"refused: {answer.code}: {answer.reason}")
            await asyncio.sleep(0.1)
        raise AssertionError("the database stayed locked")

    async def backup(self, kind: BackupKind) -> BackupCompleted | BackupFailed:
        answer = await self.accepted(RequestBackup(spec=BackupSpec(kind=kind), reason="e2e"))
        assert answer.ref_id is not None
        ended = await self.ended(answer.ref_id, (BackupCompleted, BackupFailed), timeout=60)
        assert isinstance(ended, (BackupCompleted, BackupFailed))
        return ended

    async def covered(self, scn: int, rid: int, timeout: float = 30.0) -> None:
        """Wait until the catalog's windows on incarnation `rid` reach `scn`."""
        catalog = CatalogClient(self.nc, timeout=5)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while loop.time() < deadline:
            windows = (await catalog.windows(self.uid)).windows
            if any(
                w.lineage == f"inc-{rid}" and isinstance(w.end, Scn) and w.end.value >= scn
                for w in windows
            ):
                return
            await asyncio.sleep(0.1)
        raise AssertionError(f"the catalog never covered SCN {scn} on inc-{rid}")

    async def restore(
        self, target: TargetPosition | TargetTime, rid: int | None
    ) -> tuple[RestoreCompleted, RunRestore]:
        lineage = None if rid is None else Incarnation(resetlogs_id=rid, resetlogs_scn=Scn(value=0))
        answer = await self.accepted(RequestRestore(target=target, lineage=lineage))
        assert answer.ref_id is not None
        ended = await self.ended(answer.ref_id, (RestoreCompleted, RestoreFailed), timeout=60)
        assert isinstance(ended, RestoreCompleted), ended
        [sent] = [r for r in self.restores_sent if str(r.restore_id) == answer.ref_id]
        return ended, sent

    async def refused(self, target: TargetPosition, rid: int | None = None) -> RequestRejected:
        runs, sent = self.rman_runs(), len(self.restores_sent)
        lineage = None if rid is None else Incarnation(resetlogs_id=rid, resetlogs_scn=Scn(value=0))
        request = RequestRestore(target=target, lineage=lineage)
        answer = await self.planner.request(request, self.uid)
        assert isinstance(answer, RequestRejected), answer
        await asyncio.sleep(0.3)
        assert self.rman_runs() == runs, "RMAN ran for a restore the planner refused"
        assert len(self.restores_sent) == sent, "a restore.run went out for a refused target"
        return answer


@pytest.fixture
async def stack(nc: Client, nats_url: str, tmp_path: Path) -> AsyncIterator[Stack]:
    await ensure_topology(nc.jetstream(), FAST)
    uid = unique("ora-e2e")
    sim = SimulatedOracle.create(tmp_path / "sim", threads=2, dbid=DBID)
    install(tmp_path / "home", tmp_path / "sim")
    password = tmp_path / "oracle-password"
    password.write_text("never read: the session is simulated\n")
    session = {"dsn": "sim:1521/TMSIM", "user": "C##TIDEMARK", "password_file": password}
    store_url = f"file://{tmp_path / 'store'}"
    archived = ArchivedDatabase(
        uid=uid,
        engine=Engine.ORACLE,
        name="TMSIM",
        system_id=DBID,
        oracle=session,
        gap_grace_s=0,
        full_read_s=0.2,
    )
    hosted = HostedDatabase(
        uid=uid,
        engine=Engine.ORACLE,
        name="TMSIM",
        system_id=DBID,
        oracle=OracleInstance(
            oracle_home=tmp_path / "home",
            oracle_sid="TMSIM",
            staging_dir=tmp_path / "stage",
            backup_attempts=3,
            retry_base_s=0.1,
            **session,
        ),
    )

    def settings(node: str, **sections: Any) -> Settings:
        return Settings(
            node=node,
            state_dir=tmp_path / node,
            nats=NatsSettings(url=nats_url),
            bus=FAST,
            archiver=ArchiverSettings(
                store_url=store_url, rescan_s=0.1, retry_base_s=0.05, databases=[]
            ),
            **sections,
        )

    def simulated_source(configured: ArchivedDatabase) -> LogSource:
        return OracleArchiveSource(configured, SimulatedSession(sim))

    archiver_settings = settings(NODE)
    archiver_settings.archiver.databases.append(archived)
    executor_settings = settings(NODE, executor=ExecutorSettings(databases=[hosted]))
    engine = OracleEngine(executor_settings.executor, views=lambda _: SimulatedViews(sim))
    services: list[Any] = [
        NarrowCatalog(settings=catalog_settings(nats_url, tmp_path / "catalog"), only=[uid]),
        ArchiverService(settings=archiver_settings, source_factory=simulated_source),
        ExecutorService(
            settings=executor_settings,
            engines=EngineRegistry(
                executor_settings.executor, drivers={Engine.ORACLE: engine}, loadable={}
            ),
        ),
        PlannerService(
            settings=settings("planner", planner=PlannerSettings(tick_s=0.1)),
            run_retention=False,
        ),
    ]
    stack = Stack(nc, uid, sim, services)

    async def on_event(msg: Msg) -> None:
        stack.events.append(decode(msg.data, subject=msg.subject))

    async def on_restore(msg: Msg) -> None:
        command = decode(msg.data, subject=msg.subject)
        if isinstance(command.data, RunRestore):
            stack.restores_sent.append(command.data)

    subs = [
        await nc.subscribe(f"tm.evt.*.*.{uid}", cb=on_event),
        await nc.subscribe("tm.cmd.executor.*.restore", cb=on_restore),
    ]
    started: list[Any] = []
    try:
        for service in services:
            await service.start()
            started.append(service)
        await _hosted(nc, DatabaseRef(uid=uid, engine=Engine.ORACLE, name="TMSIM"))
        yield stack
    finally:
        for service in reversed(started):
            await service.stop()
        for sub in subs:
            await sub.unsubscribe()


async def _hosted(nc: Client, ref: DatabaseRef, timeout: float = 20.0) -> None:
    client = PlannerClient(nc, timeout=5)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        try:
            await client.resolve(ref.uid)
            return
        except Exception:
            if loop.time() > deadline:
                raise
            await asyncio.sleep(0.1)


def catch_up(sim: SimulatedOracle) -> None:
    """Move the simulated clock (one SCN per second from a fixed epoch) up to the host's. A
    backup's times are the host's, as on a real node where the two agree; log times before
    the base completed would put every time target before the first restorable moment."""
    db = sim.database()
    behind = datetime.now(UTC) - sim.time_of(int(db["current_scn"]), int(db["resetlogs_id"]))
    if behind.total_seconds() > 0:
        sim.advance(math.ceil(behind.total_seconds()) + 1)


def rows(sim: SimulatedOracle, tag: str, count: int) -> list[int]:
    """`count` committed rows alternating between the two threads; their SCNs."""
    return [sim.insert(f"{tag} {n}", thread=1 + n % 2).scn for n in range(count)]


async def test_oracle_backups_and_restores_through_the_services(stack: Stack) -> None:
    sim = stack.sim
    rows(sim, "before any backup", 4)
    sim.archive_log_current()

    # 1. A bad credential is not worth a second run; a media manager hiccup is.
    runs = stack.rman_runs()
    sim.inject_failure("rman", FATAL)
    failed = await stack.backup(BackupKind.FULL)
    assert isinstance(failed, BackupFailed), failed
    assert failed.failure.code == "ORA-01017"
    assert not failed.failure.retryable
    assert stack.rman_runs() == runs + 1

    runs = stack.rman_runs()
    sim.inject_failure("rman", RETRYABLE)
    level0 = await stack.backup(BackupKind.FULL)
    assert isinstance(level0, BackupCompleted), level0
    assert stack.rman_runs() == runs + 2, "one failed run with ORA-19511, one that succeeded"
    assert isinstance(level0.consistent_at, Scn)
    rid = stack.rid

    # 2. Rows, a level 1, more rows, a lost log on thread 2.
    after_level0 = rows(sim, "after the level 0", 6)
    sim.archive_log_current()
    level1 = await stack.backup(BackupKind.INCREMENTAL)
    assert isinstance(level1, BackupCompleted), level1
    assert level1.parent_backup_id == level0.backup_id
    assert isinstance(level1.consistent_at, Scn)
    catch_up(sim)
    after_level1 = rows(sim, "after the level 1", 8)
    sim.archive_log_current()
    rows(sim, "into the lost log", 2)
    sim.archive_log_current()
    lost = lose_a_log(sim, thread=2)
    rows(sim, "after the gap", 2)
    sim.archive_log_current()
    await stack.covered(after_level1[-1] + 1, rid)

    # 3. Refused before RMAN: at the level 0's M_B (recovery must go beyond it), and in the gap.
    at_mb = await stack.refused(TargetPosition(position=level0.consistent_at), rid)
    assert "before the first restorable point" in at_mb.reason, at_mb.reason
    in_gap = sim.read().controlfile
    lost_log = next(
        x for x in in_gap.archived_logs if (x.thread, x.sequence, x.resetlogs_id) == (2, lost, rid)
    )
    gap = await stack.refused(TargetPosition(position=Scn(value=lost_log.next_scn)), rid)
    assert "gap" in gap.reason or f"sequence {lost}" in gap.reason, gap.reason

    # 4. In the window: exactly the ledger's rows at each target.
    scn = after_level0[3]
    assert scn > level0.consistent_at.value
    expected = sim.expected_contents(scn, rid)
    done, sent = await stack.restore(TargetPosition(position=Scn(value=scn)), rid)
    assert sent.plan.base_backup_id == level0.backup_id
    assert sim.table_contents() == expected
    assert done.reached == Scn(value=scn)

    at: datetime = sim.time_of(after_level1[2], rid)
    assert after_level1[2] > level1.consistent_at.value
    expected = sim.expected_contents(sim.scn_at(at, rid), rid)
    _, sent = await stack.restore(TargetTime(at=at), rid)
    assert sent.plan.base_backup_id == level1.backup_id, "the level 1 is the nearest base"
    assert sim.table_contents() == expected

    scn = after_level1[6]
    expected = sim.expected_contents(scn, rid)
    _, sent = await stack.restore(TargetPosition(position=Scn(value=scn)), rid)
    assert sent.plan.base_backup_id == level1.backup_id
    assert sim.table_contents() == expected
    assert "after the level 1 5" in expected.values()
    assert "after the level 1 6" not in expected.values()

    # 5. The database now runs on the incarnation that restore opened.
    new_rid = stack.rid
    assert new_rid != rid
    level0_new = await stack.backup(BackupKind.FULL)
    assert isinstance(level0_new, BackupCompleted), level0_new
    assert isinstance(level0_new.lineage, Incarnation)
    assert level0_new.lineage.resetlogs_id == new_rid
    on_new = rows(sim, "on the new incarnation", 6)
    sim.archive_log_current()
    await stack.covered(on_new[-1] + 1, new_rid)
    expected = sim.expected_contents(on_new[4], new_rid)
    done, sent = await stack.restore(TargetPosition(position=Scn(value=on_new[4])), None)
    assert sent.plan.base_backup_id == level0_new.backup_id
    assert isinstance(sent.plan.lineage, Incarnation)
    assert sent.plan.lineage.resetlogs_id == new_rid, "the current incarnation is followed"
    assert sim.table_contents() == expected
    assert "on the new incarnation 3" in expected.values()
    assert "after the level 1 6" not in expected.values(), "the abandoned branch is gone"

    # An SCN of the parent incarnation, asked on the new one, is not the new one's to restore.
    other = await stack.refused(TargetPosition(position=Scn(value=after_level0[2])), new_rid)
    assert "starts at" in other.reason, other.reason
    assert uuid.UUID(str(done.restore_id))
