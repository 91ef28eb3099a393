"""A `dataguard` migration through the real planner and executor over NATS, on a simulated
Data Guard configuration of two simulated databases declared on one node (not Oracle):

    planner ── migration.<step> ──▶ executor (OracleEngine.migration_step)
       ▲                               │ SQL (SimulatedDataGuardSql), rman / dgmgrl (fake)
       └── job results ────────────────▼ the simulated primary and its standby

A writer commits on whichever database is the open primary all along, and the configuration's
ledger says afterwards whether any acknowledged commit is missing. First a switchover whose
old primary fails to convert: the documented matrix finds it still primary, opens it again,
and the migration fails with the source serving. Then a migration whose standby receives no
redo (its statistics frozen at zero, DATUM_TIME ageing: lag unknown, the gate closed), then
applies slower than the writer commits: it waits at the lag gate, and once the lag is under
budget, for its window; its switchover leaves both databases standby, and FORCE (after
starting Redo Apply on ORA-16473) finishes it; it pauses after verifying with the roles
swapped and nothing lost; a rollback switches back, the target following the old primary
again, still nothing lost.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from nats.aio.client import Client
from nats.aio.msg import Msg

from schemas import Engine, Envelope, decode, utcnow
from schemas.messages import (
    CutoverStep,
    CutoverWindow,
    LagBudget,
    MigrationFailed,
    MigrationMethod,
    MigrationPhase,
    MigrationPhaseChanged,
    MigrationRolledBack,
    RequestAccepted,
    RequestMigration,
    RollbackMigration,
    TargetInstance,
)
from services.bus import ensure_topology
from services.engines.oracle.engine import OracleEngine
from services.engines.registry import EngineRegistry
from services.executor.service import ExecutorService
from services.executor.settings import ExecutorSettings, HostedDatabase, OracleInstance
from services.planner.client import PlannerClient
from services.planner.service import PlannerService
from services.planner.settings import PlannerSettings
from services.settings import NatsSettings, Settings
from tests.integration.bus_helpers import FAST, unique
from tests.oracle_sim.dataguard import DataGuardError, SimulatedDataGuard, Txn
from tests.oracle_sim.dataguard_sql import SimulatedDataGuardSql
from tests.oracle_sim.tools import install

pytestmark = [pytest.mark.integration, pytest.mark.oracle]

NODE = "ora-dg-node"
LOAD_TPS = 50.0


def _unique_name(uid: str) -> str:
    return uid.upper().replace("-", "_")[:30]


class Writer:
    """Commits on the open primary, wherever it is, and keeps what was acknowledged."""

    def __init__(self, dg: SimulatedDataGuard) -> None:
        self.dg = dg
        self.acked: list[Txn] = []
        self.refused = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        n = 0
        while not self._stop.is_set():
            try:
                self.acked.append(self.dg.commit(f"w{n}"))
            except DataGuardError:
                self.refused += 1  # no open primary this instant (the switchover)
            n += 1
            time.sleep(1.0 / LOAD_TPS)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)


@dataclass
class Stack:
    nc: Client
    source: HostedDatabase
    target: HostedDatabase
    dg: SimulatedDataGuard
    prim: str
    stby: str
    events: list[tuple[datetime, Envelope[Any]]] = field(default_factory=list)

    async def request(
        self, *, window_in_s: float, pause_after: MigrationPhase | None, lag_stale_s: str = "10"
    ) -> RequestMigration:
        now = utcnow()
        request = RequestMigration(
            migration_id=uuid.uuid4(),
            target_instance=TargetInstance(database=self.target.ref, node=NODE),
            method=MigrationMethod.DATAGUARD,
            options={"verify_wait_s": "10", "lag_stale_s": lag_stale_s},
            windows=[
                CutoverWindow(
                    start=now + timedelta(seconds=window_in_s), end=now + timedelta(minutes=10)
                )
            ],
            downtime_budget_s=60.0,
            lag=LagBudget(max_seconds=1.0, hold_s=0.5),
            pause_after=pause_after,
            reason="e2e: dataguard",
        )
        answer = await PlannerClient(self.nc, timeout=30).request(request, self.source.uid)
        assert isinstance(answer, RequestAccepted), answer
        return request

    def of(self, migration_id: uuid.UUID) -> list[tuple[datetime, Any]]:
        return [
            (at, e.data)
            for at, e in self.events
            if getattr(e.data, "migration_id", None) == migration_id
        ]

    async def until(self, migration_id: uuid.UUID, match: Any, timeout: float = 40.0) -> Any:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while loop.time() < deadline:
            for _, data in self.of(migration_id):
                if match(data):
                    return data
                if isinstance(data, MigrationFailed) and not match(data):
                    raise AssertionError(f"migration failed: {data.failure}")
            await asyncio.sleep(0.05)
        raise AssertionError(f"migration {migration_id}: no such event within {timeout}s")


def _hosted(tmp_path: Path, uid: str, root: Path) -> HostedDatabase:
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
            password_file=tmp_path / "never-read",
        ),
    )


@pytest.fixture
async def stack(nc: Client, nats_url: str, tmp_path: Path) -> AsyncIterator[Stack]:
    await ensure_topology(nc.jetstream(), FAST)
    src, tgt = unique("ora-dg-src"), unique("ora-dg-tgt")
    prim, stby = _unique_name(src), _unique_name(tgt)
    dg = SimulatedDataGuard.create(
        tmp_path / "dg", prim, clock="real", transport_delay_s=0.2, apply_tps=1000.0
    )
    dg.add_auxiliary(stby)
    hosted = {
        src: _hosted(tmp_path, src, dg.member_root(prim)),
        tgt: _hosted(tmp_path, tgt, dg.member_root(stby)),
    }
    names = {src: prim, tgt: stby}

    def settings(node: str, **sections: Any) -> Settings:
        return Settings(
            node=node,
            state_dir=tmp_path / node,
            nats=NatsSettings(url=nats_url),
            bus=FAST,
            **sections,
        )

    executor_settings = settings(NODE, executor=ExecutorSettings(databases=list(hosted.values())))
    engine = OracleEngine(
        executor_settings.executor,
        datapump_sql=lambda db: SimulatedDataGuardSql(dg, names[db.uid]),
    )
    services: list[Any] = [
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
                    tick_s=0.1, migration_lag_interval_s=0.2, migration_ready_interval_s=0.2
                ),
            ),
            run_retention=False,
        ),
    ]
    stack = Stack(nc, hosted[src], hosted[tgt], dg, prim, stby)

    async def on_event(msg: Msg) -> None:
        stack.events.append((utcnow(), decode(msg.data, subject=msg.subject)))

    sub = await nc.subscribe(f"tm.evt.migration.*.{src}.*", cb=on_event)
    started: list[Any] = []
    try:
        for service in services:
            await service.start()
            started.append(service)
        client = PlannerClient(nc, timeout=5)
        for _ in range(200):
            with contextlib.suppress(Exception):
                await client.resolve(src)
                break
            await asyncio.sleep(0.1)
        yield stack
    finally:
        for service in reversed(started):
            await service.stop()
        await sub.unsubscribe()


def _phase(phase: MigrationPhase, *, paused: bool | None = None) -> Any:
    def match(data: Any) -> bool:
        return (
            isinstance(data, MigrationPhaseChanged)
            and data.phase is phase
            and (paused is None or data.paused is paused)
        )

    return match


async def test_a_dataguard_migration_waits_for_its_lag_and_window_and_loses_nothing(
    stack: Stack,
) -> None:
    dg, prim, stby = stack.dg, stack.prim, stack.stby
    writer = Writer(dg)
    writer.start()
    try:
        # 1. The old primary fails to convert: still primary, opened again, the source serves.
        dg.inject_switchover_fault("convert_primary", ["ORA-00600: simulated internal error"])
        first = await stack.request(window_in_s=0, pause_after=None)
        failed = await stack.until(first.migration_id, lambda d: isinstance(d, MigrationFailed))
        assert (failed.failure.code, failed.step) == ("TM-ORA-071", CutoverStep.FENCE_SOURCE)
        assert failed.source_serving
        assert not failed.point_of_no_return_passed
        assert (dg.member(prim).role, dg.member(prim).open_mode) == ("PRIMARY", "READ WRITE")
        assert dg.member(stby).role == "PHYSICAL STANDBY"

        # 2. Transport stopped: the standby's numbers freeze at the zero they last were, and
        # DATUM_TIME ages: the lag is unknown, and the gate stays closed.
        dg.stop_transport()
        await asyncio.sleep(2.5)  # older than lag_stale_s before the first sample
        dg.inject_switchover_fault("convert_target", [])
        second = await stack.request(
            window_in_s=8.0, pause_after=MigrationPhase.VERIFYING, lag_stale_s="2"
        )
        window_start = second.windows[0].start
        await stack.until(
            second.migration_id,
            lambda d: (
                _phase(MigrationPhase.CATCHING_UP)(d)
                and d.progress.lag_seconds is None
                and d.message == "lag measured"
            ),
        )
        await asyncio.sleep(2.0)
        assert not any(
            isinstance(d, MigrationPhaseChanged) and d.phase is MigrationPhase.READY
            for _, d in stack.of(second.migration_id)
        ), "the gate opened on stale statistics"
        # Transport again, apply slower than the load: the lag grows and the gate holds.
        dg.set_apply_rate(LOAD_TPS / 5)
        dg.start_transport()
        await stack.until(
            second.migration_id,
            lambda d: _phase(MigrationPhase.CATCHING_UP)(d) and (d.progress.lag_seconds or 0) > 1.0,
        )
        await asyncio.sleep(1.0)
        assert not any(
            isinstance(d, MigrationPhaseChanged) and d.phase is MigrationPhase.READY
            for _, d in stack.of(second.migration_id)
        ), "the gate opened over budget"
        dg.set_apply_rate(1000.0)  # apply catches up: the gate opens, then the window
        await stack.until(second.migration_id, _phase(MigrationPhase.VERIFYING, paused=True))
        cut = [
            at
            for at, d in stack.of(second.migration_id)
            if isinstance(d, MigrationPhaseChanged) and d.phase is MigrationPhase.CUTTING_OVER
        ]
        assert min(cut) >= window_start, "cut over before its window"

        # Roles swapped (FORCE settled the both-standby switchover), nothing lost.
        force = f"{stby}: ALTER DATABASE SWITCHOVER TO {stby} FORCE"
        ran = dg.runs("sql")
        assert ran.count(force) == 2, ran  # refused (ORA-16473), apply started, again
        assert ran[ran.index(force) + 1].endswith(
            "RECOVER MANAGED STANDBY DATABASE DISCONNECT FROM SESSION"
        )
        assert (dg.member(stby).role, dg.member(stby).open_mode) == ("PRIMARY", "READ WRITE")
        assert dg.member(prim).role == "PHYSICAL STANDBY"
        assert dg.member(prim).mrp
        await asyncio.sleep(0.5)
        assert dg.lost(stby, list(writer.acked)) == []
        on_new = [t for t in writer.acked if t.on == stby]
        assert on_new, "the writer never committed on the new primary"

        # 3. Rollback: switched back, the target following the old primary, nothing lost.
        await PlannerClient(stack.nc, timeout=30).request(
            RollbackMigration(migration_id=second.migration_id, target=stack.target.uid),
            stack.source.uid,
        )
        back = await stack.until(second.migration_id, lambda d: isinstance(d, MigrationRolledBack))
        assert back.target_following
        assert (dg.member(prim).role, dg.member(prim).open_mode) == ("PRIMARY", "READ WRITE")
        assert dg.member(stby).role == "PHYSICAL STANDBY"
        await asyncio.sleep(0.5)
    finally:
        writer.stop()
    assert dg.lost(prim, writer.acked) == []
    assert [t for t in writer.acked if t.on == prim and t.at > back_time(stack, second)]


def back_time(stack: Stack, request: RequestMigration) -> datetime:
    return max(at for at, d in stack.of(request.migration_id) if isinstance(d, MigrationRolledBack))
