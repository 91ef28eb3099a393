"""An `rman` migration through the real planner, executor, archiver and catalog over NATS, on
simulated Oracle databases (not Oracle): a 12.2 source, new 12.1 and 19c instances as targets.

    planner ── migration.<step> ──▶ executor (OracleEngine: rman_migration) ── rman ──▶ targets
       │ backup.run                    ▲ chain + archived logs                 (simulated)
       ▼                               │
    executor ── rman ──▶ source ── V$ARCHIVED_LOG ──▶ archiver ──▶ file store ──▶ catalog

Only the databases and their tools are stand-ins (`tests/oracle_sim`): the engine reads the
simulated views and the method's SQL through `OracleEngine(views=..., datapump_sql=...)`, the
archiver the simulated session through its `source_factory`. One story, in order:

1. A level 0 and a level 1 of the source through the planner, the archiver streaming its logs.
2. A 12.1 home refused at preflight (older than the source): RMAN never ran on it.
3. A migration whose last roll-forward fails after the fence (an injected RMAN-06054): it fails
   at final_sync, before anything is opened, with the source unfenced and taking commits.
4. A migration under change (commits on two threads, log switches) onto a 19c instance: the
   copy rolls forward round after round, waits for its window, is cut over in it, and opens
   (OPEN RESETLOGS UPGRADE, flagged) exactly at the source's final SCN with the same rows.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from nats.aio.client import Client
from nats.aio.msg import Msg

from schemas import DatabaseRef, Engine, Envelope, Scn, decode, utcnow
from schemas.messages import (
    BackupCompleted,
    BackupFailed,
    BackupSpec,
    CutoverStep,
    CutoverWindow,
    LagBudget,
    MigrationCompleted,
    MigrationFailed,
    MigrationMethod,
    MigrationPhase,
    MigrationPhaseChanged,
    RequestAccepted,
    RequestBackup,
    RequestMigration,
    RequestRejected,
    ResumeMigration,
    TargetInstance,
)
from schemas.messages.backups import BackupKind
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
from tests.integration.test_catalog_ingest import NarrowCatalog, catalog_settings
from tests.oracle_sim.db import SimulatedOracle, SimulatedOracleError
from tests.oracle_sim.rman import error_stack
from tests.oracle_sim.rman_sql import SimulatedRmanSql
from tests.oracle_sim.session import SimulatedSession
from tests.oracle_sim.sql import Profile
from tests.oracle_sim.tools import install
from tests.oracle_sim.views import SimulatedViews

pytestmark = [pytest.mark.integration, pytest.mark.oracle]

DBID = 3_141_592_653
NODE = "ora-rman-node"


@dataclass
class Workload:
    """Commits on both threads with a log switch every few commits, until stopped; what the
    source refused (ORA-01035 once fenced) is counted, never committed."""

    sim: SimulatedOracle
    committed: dict[int, str] = field(default_factory=dict)
    refused: int = 0
    stop: asyncio.Event = field(default_factory=asyncio.Event)

    async def run(self) -> None:
        n = 0
        while not self.stop.is_set():
            n += 1
            try:
                change = await asyncio.to_thread(self.sim.insert, f"w{n}", thread=1 + n % 2)
            except SimulatedOracleError as exc:
                if not str(exc).startswith("ORA-01035"):
                    raise
                self.refused += 1
            else:
                self.committed[change.id] = change.value
                if n % 4 == 0:
                    await asyncio.to_thread(self.sim.archive_log_current)
            await asyncio.sleep(0.03)


@dataclass
class Stack:
    nc: Client
    source: HostedDatabase
    sims: dict[str, SimulatedOracle]
    targets: dict[str, HostedDatabase]
    events: list[Envelope[Any]] = field(default_factory=list)

    @property
    def src(self) -> SimulatedOracle:
        return self.sims[self.source.uid]

    @property
    def planner(self) -> PlannerClient:
        return PlannerClient(self.nc, timeout=20)

    async def first(self, match: Any, timeout: float, what: str) -> Any:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while loop.time() < deadline:
            for event in self.events:
                if match(event.data):
                    return event.data
            await asyncio.sleep(0.05)
        raise AssertionError(f"no {what} within {timeout}s")

    async def backup(self, kind: BackupKind) -> BackupCompleted:
        answer = await self.planner.request(
            RequestBackup(spec=BackupSpec(kind=kind), reason="e2e"), self.source.uid
        )
        assert isinstance(answer, RequestAccepted), answer
        done = await self.first(
            lambda d: (
                isinstance(d, (BackupCompleted, BackupFailed)) and str(d.backup_id) == answer.ref_id
            ),
            60,
            "backup end",
        )
        assert isinstance(done, BackupCompleted), done
        return done

    async def migrate(
        self,
        target: str,
        *,
        window_in_s: float = -60.0,
        pause_after: MigrationPhase | None = None,
        hold_s: float = 0.0,
    ) -> tuple[RequestMigration, RequestAccepted | RequestRejected]:
        now = utcnow()
        request = RequestMigration(
            migration_id=uuid.uuid4(),
            target_instance=TargetInstance(database=self.targets[target].ref, node=NODE),
            method=MigrationMethod.RMAN,
            windows=[
                CutoverWindow(
                    start=now + timedelta(seconds=window_in_s), end=now + timedelta(hours=1)
                )
            ],
            downtime_budget_s=600.0,
            lag=LagBudget(max_seconds=600.0, hold_s=hold_s),
            pause_after=pause_after,
            reason="e2e: rman",
        )
        answer = await self.planner.request(request, self.source.uid)
        assert isinstance(answer, (RequestAccepted, RequestRejected)), answer
        return request, answer

    async def ended(
        self, request: RequestMigration, timeout: float = 60.0
    ) -> MigrationCompleted | MigrationFailed:
        ended = await self.first(
            lambda d: (
                isinstance(d, (MigrationCompleted, MigrationFailed))
                and d.migration_id == request.migration_id
            ),
            timeout,
            f"end of migration {request.migration_id}",
        )
        assert isinstance(ended, (MigrationCompleted, MigrationFailed))
        return ended

    async def catalog_reaches(self, scn: int, rid: int, timeout: float = 20.0) -> None:
        catalog = CatalogClient(self.nc, timeout=5)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while loop.time() < deadline:
            windows = (await catalog.windows(self.source.uid)).windows
            if any(
                w.lineage == f"inc-{rid}" and isinstance(w.end, Scn) and w.end.value >= scn
                for w in windows
            ):
                return
            await asyncio.sleep(0.1)
        raise AssertionError(f"the catalog never reached SCN {scn} on inc-{rid}")


def _hosted(tmp_path: Path, uid: str, root: Path, password: Path, **extra: Any) -> HostedDatabase:
    home = tmp_path / f"{uid}-home"
    install(home, root)
    return HostedDatabase(
        uid=uid,
        engine=Engine.ORACLE,
        name="TMSIM",
        oracle=OracleInstance(
            oracle_home=home,
            oracle_sid="TMSIM",
            staging_dir=tmp_path / f"{uid}-stage",
            dsn=f"{uid}.db.example:1521/{uid.upper()}",
            user="C##TIDEMARK",
            password_file=password,
        ),
        **extra,
    )


@pytest.fixture
async def stack(nc: Client, nats_url: str, tmp_path: Path) -> AsyncIterator[Stack]:
    await ensure_topology(nc.jetstream(), FAST)
    password = tmp_path / "oracle-password"
    password.write_text("never read: the sessions are simulated\n")
    src_uid = unique("ora-rman-src")
    sims = {src_uid: SimulatedOracle.create(tmp_path / "src", threads=2, dbid=DBID)}
    Profile(version="12.2.0.1.0").save(sims[src_uid])
    source = _hosted(tmp_path, src_uid, tmp_path / "src", password, system_id=DBID)
    targets: dict[str, HostedDatabase] = {}
    for name, release in (("old", "12.1.0.2.0"), ("one", "19.0.0.0.0"), ("two", "19.0.0.0.0")):
        uid = unique(f"ora-rman-{name}")
        root = tmp_path / name
        sims[uid] = SimulatedOracle.create_instance(root)
        Profile(version=release).save(sims[uid])
        targets[name] = _hosted(tmp_path, uid, root, password)
    store_url = f"file://{tmp_path / 'store'}"
    archived = ArchivedDatabase(
        uid=src_uid,
        engine=Engine.ORACLE,
        name="TMSIM",
        system_id=DBID,
        oracle={"dsn": "sim:1521/TMSIM", "user": "C##TIDEMARK", "password_file": password},
        gap_grace_s=0,
        full_read_s=0.2,
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
        return OracleArchiveSource(configured, SimulatedSession(sims[configured.uid]))

    archiver_settings = settings(NODE)
    archiver_settings.archiver.databases.append(archived)
    executor_settings = settings(
        NODE, executor=ExecutorSettings(databases=[source, *targets.values()])
    )
    engine = OracleEngine(
        executor_settings.executor,
        views=lambda db: SimulatedViews(sims[db.uid]),
        datapump_sql=lambda db: SimulatedRmanSql(sims[db.uid]),
    )
    services: list[Any] = [
        NarrowCatalog(settings=catalog_settings(nats_url, tmp_path / "catalog"), only=[src_uid]),
        ArchiverService(settings=archiver_settings, source_factory=simulated_source),
        ExecutorService(
            settings=executor_settings,
            engines=EngineRegistry(
                executor_settings.executor, drivers={Engine.ORACLE: engine}, loadable={}
            ),
        ),
        PlannerService(
            settings=settings(
                "planner",
                planner=PlannerSettings(
                    tick_s=0.1, migration_lag_interval_s=0.3, migration_ready_interval_s=0.3
                ),
            ),
            run_retention=False,
        ),
    ]
    stack = Stack(nc, source, sims, targets)

    async def on_event(msg: Msg) -> None:
        stack.events.append(decode(msg.data, subject=msg.subject))

    subs = [
        await nc.subscribe(f"tm.evt.*.*.{src_uid}", cb=on_event),
        await nc.subscribe(f"tm.evt.migration.*.{src_uid}.*", cb=on_event),
    ]
    started: list[Any] = []
    try:
        for service in services:
            await service.start()
            started.append(service)
        client = PlannerClient(nc, timeout=5)
        ref = DatabaseRef(uid=src_uid, engine=Engine.ORACLE, name="TMSIM")
        for _ in range(200):
            with contextlib.suppress(Exception):
                await client.resolve(ref.uid)
                break
            await asyncio.sleep(0.1)
        yield stack
    finally:
        for service in reversed(started):
            await service.stop()
        for sub in subs:
            await sub.unsubscribe()


async def test_an_rman_roll_forward_migration_ends_exactly_at_the_sources_final_scn(
    stack: Stack,
) -> None:
    src = stack.src
    # 1. The chain Tidemark keeps: a level 0, commits on both threads, a level 1.
    for n in range(6):
        src.insert(f"before-l0-{n}", thread=1 + n % 2)
    await stack.backup(BackupKind.FULL)
    for n in range(6):
        src.insert(f"before-l1-{n}", thread=1 + n % 2)
    await stack.backup(BackupKind.INCREMENTAL)

    # 2. A home older than the source's is refused before anything changes.
    _, refused = await stack.migrate("old")
    assert isinstance(refused, RequestRejected), refused
    assert refused.code == "TM-MIG-PREFLIGHT"
    assert "older than the source's 12.2.0.1.0" in refused.reason, refused.reason
    assert stack.sims[stack.targets["old"].uid].runs("rman") == []

    # 3. Cut over, and the last roll-forward fails after the fence: nothing is opened, the
    # source is unfenced and takes commits again.
    one_sim = stack.sims[stack.targets["one"].uid]
    first, accepted = await stack.migrate("one", pause_after=MigrationPhase.CATCHING_UP)
    assert isinstance(accepted, RequestAccepted), accepted
    await stack.first(
        lambda d: (
            isinstance(d, MigrationPhaseChanged)
            and d.migration_id == first.migration_id
            and d.paused
        ),
        40,
        "the pause after catching_up",
    )
    one_sim.inject_failure(
        "rman",
        error_stack(
            "RMAN-03002: failure of recover command",
            "RMAN-06054: media recovery requesting unknown archived log for thread 1 with "
            "sequence 99 and starting SCN of 1",
        ),
    )
    resume = ResumeMigration(migration_id=first.migration_id, target=first.target)
    assert isinstance(await stack.planner.request(resume, stack.source.uid), RequestAccepted)
    failed = await stack.ended(first)
    assert isinstance(failed, MigrationFailed), failed
    assert (failed.failure.code, failed.step) == ("RMAN-06054", CutoverStep.FINAL_SYNC)
    assert failed.source_serving
    assert not failed.point_of_no_return_passed
    assert not src.read().restricted
    assert one_sim.read().open_mode == "MOUNTED"  # the copy was never opened
    src.insert("after the failed cutover", thread=1)

    # 4. Under change, onto a new 19c instance: rounds, the window, the cutover, the open.
    two = stack.targets["two"]
    two_sim = stack.sims[two.uid]
    work = Workload(src)
    running = asyncio.create_task(work.run())
    try:
        second, accepted = await stack.migrate("two", window_in_s=10.0, hold_s=1.0)
        assert isinstance(accepted, RequestAccepted), accepted
        done = await stack.ended(second, timeout=60)
    finally:
        work.stop.set()
        await running
    assert isinstance(done, MigrationCompleted), done
    assert done.fenced_at >= second.windows[0].start  # cut over only in its window

    st = src.read()
    rid = st.controlfile.incarnation().resetlogs_id
    finals: dict[int, int] = {}
    for log in st.controlfile.archived_logs:
        if log.resetlogs_id == rid:
            finals[log.thread] = max(finals.get(log.thread, 0), log.next_scn)
    final = min(finals.values())
    assert st.restricted  # the source stays fenced: no commit after its final SCN
    assert done.source_final == Scn(value=final - 1)
    assert done.target_final == Scn(value=final)
    opened = two_sim.read()
    assert opened.controlfile.incarnation().resetlogs_scn == final
    assert opened.upgrade_pending  # 12.2 into a 19c home: the upgrade is the next step
    assert opened.table == st.table == src.expected_contents(final)
    assert work.committed
    assert all(opened.table[k] == v for k, v in work.committed.items())
    assert work.refused > 0  # the workload ran into the fence, and nothing it lost committed

    scripts = two_sim.runs("rman")
    assert "RESTORE DATABASE;" in scripts[0]
    rounds = [s for s in scripts if "RECOVER DATABASE UNTIL SCN" in s]
    assert len(rounds) >= 3, scripts  # catching up, waiting for the window, the final one
    assert f"RECOVER DATABASE UNTIL SCN {final};" in rounds[-1]
    assert scripts[-1].strip() == "ALTER DATABASE OPEN RESETLOGS UPGRADE;"
    # The catalog indexed the final logs the copy recovered through.
    await stack.catalog_reaches(final, rid)
