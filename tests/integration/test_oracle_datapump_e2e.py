"""A `datapump` migration through the real planner and executor over NATS, on two simulated
Oracle databases declared on one node (not Oracle):

    planner ── migration.<step> ──▶ executor (OracleEngine.migration_step) ── expdp/impdp ──▶ sims
       ▲                                │ dump set + manifest
       └── job results ─────────────────▼ file store

The only stand-ins are the databases and their tools (`tests/oracle_sim`): the engine takes the
simulated dictionary's SQL through `OracleEngine(datapump_sql=...)`. One migration over a dump
set completes with validation clean and the target's service as its endpoint; one whose import
meets a non-benign error fails with that code, the source unfenced and serving; one over a
database link completes with no dump set, and the status shows what validation compared.
(`test_oracle_datapump_resume_e2e.py`: the executor killed mid-import, resumed by ATTACH.)
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import timedelta
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
    MigrationCompleted,
    MigrationFailed,
    MigrationMethod,
    MigrationStatusReply,
    MigrationStatusRequest,
    RequestAccepted,
    RequestMigration,
    RequestRejected,
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
from tests.oracle_sim.datapump_sql import SimulatedDataPumpSql
from tests.oracle_sim.db import SimulatedOracle
from tests.oracle_sim.dictionary import SimulatedDictionary
from tests.oracle_sim.sql import Profile
from tests.oracle_sim.tools import install

pytestmark = [pytest.mark.integration, pytest.mark.oracle]

NODE = "ora-dp-node"


@dataclass
class Stack:
    nc: Client
    source: HostedDatabase
    target: HostedDatabase
    src: SimulatedDictionary
    tgt: SimulatedDictionary
    events: list[Envelope[Any]] = field(default_factory=list)
    last: uuid.UUID | None = None

    async def migrate(self, **options: str) -> MigrationCompleted | MigrationFailed:
        answer = await self.ask(**options)
        assert isinstance(answer, RequestAccepted), answer
        assert self.last is not None
        return await self.ended(self.last)

    async def ask(self, **options: str) -> RequestAccepted | RequestRejected:
        self.last = uuid.uuid4()
        now = utcnow()
        request = RequestMigration(
            migration_id=self.last,
            target_instance=TargetInstance(database=self.target.ref, node=NODE),
            method=MigrationMethod.DATAPUMP,
            options=options,
            windows=[CutoverWindow(start=now - timedelta(minutes=1), end=now + timedelta(hours=1))],
            downtime_budget_s=600.0,
            lag=LagBudget(max_seconds=60.0, hold_s=0.0),
            pause_after=None,
            reason="e2e: datapump",
        )
        answer = await PlannerClient(self.nc, timeout=30).request(request, self.source.uid)
        assert isinstance(answer, (RequestAccepted, RequestRejected)), answer
        return answer

    async def history(self, migration_id: uuid.UUID) -> list[str]:
        """The migration's phase history as `tidemark migrate status` reads it."""
        question = MigrationStatusRequest(migration_id=migration_id)
        msg = await self.nc.request(
            "tm.qry.planner.migration", question.model_dump_json().encode(), timeout=10
        )
        [view] = MigrationStatusReply.model_validate_json(msg.data).migrations
        return [visit.message for visit in view.history]

    async def ended(
        self, migration_id: uuid.UUID, timeout: float = 90.0
    ) -> MigrationCompleted | MigrationFailed:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while loop.time() < deadline:
            for event in self.events:
                data = event.data
                if (
                    isinstance(data, (MigrationCompleted, MigrationFailed))
                    and data.migration_id == migration_id
                ):
                    return data
            await asyncio.sleep(0.05)
        raise AssertionError(f"migration {migration_id} did not end within {timeout}s")


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
            datapump_directory="TM_MIG",
            dsn=f"{uid}.db.example:1521/{uid.upper()}",
            user="C##TIDEMARK",
            password_file=tmp_path / "never-read",
        ),
    )


@pytest.fixture
async def stack(nc: Client, nats_url: str, tmp_path: Path) -> AsyncIterator[Stack]:
    await ensure_topology(nc.jetstream(), FAST)
    uids = {"src": unique("ora-dp-src"), "tgt": unique("ora-dp-tgt")}
    dictionaries: dict[str, SimulatedDictionary] = {}
    hosted: dict[str, HostedDatabase] = {}
    for side, uid in uids.items():
        root = tmp_path / side
        dictionaries[uid] = SimulatedDictionary(SimulatedOracle.create(root, threads=1))
        hosted[uid] = _hosted(tmp_path, uid, root)
        assert hosted[uid].oracle is not None
        dictionaries[uid].create_directory("TM_MIG", tmp_path / f"{uid}-stage" / "datapump")
    dictionaries[uids["src"]].seed_schema("APP")

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
        datapump_sql=lambda db: SimulatedDataPumpSql(dictionaries[db.uid], []),
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
    stack = Stack(
        nc,
        hosted[uids["src"]],
        hosted[uids["tgt"]],
        dictionaries[uids["src"]],
        dictionaries[uids["tgt"]],
    )

    async def on_event(msg: Msg) -> None:
        stack.events.append(decode(msg.data, subject=msg.subject))

    sub = await nc.subscribe(f"tm.evt.migration.*.{uids['src']}.*", cb=on_event)
    started: list[Any] = []
    try:
        for service in services:
            await service.start()
            started.append(service)
        client = PlannerClient(nc, timeout=5)
        for _ in range(200):
            try:
                await client.resolve(uids["src"])
                break
            except Exception:
                await asyncio.sleep(0.1)
        yield stack
    finally:
        for service in reversed(started):
            await service.stop()
        await sub.unsubscribe()


async def test_a_datapump_migration_completes_and_a_failed_import_leaves_the_source_serving(
    stack: Stack,
) -> None:
    # 1. A non-benign import error: the migration fails with its code, the source unfenced.
    stack.tgt.inject_fault(
        "impdp",
        "TABLE_DATA:APP.ORDERS",
        "error",
        [
            'ORA-31693: Table data object "APP"."ORDERS" failed to load/unload and is being '
            "skipped due to error:",
            "ORA-01653: unable to extend table APP.ORDERS by 128 in tablespace USERS",
        ],
    )
    failed = await stack.migrate(schemas="APP", parallel="2")
    assert isinstance(failed, MigrationFailed), failed
    assert (failed.failure.code, failed.step) == ("ORA-31693", CutoverStep.FINAL_SYNC)
    assert failed.source_serving
    assert not failed.point_of_no_return_passed
    assert stack.src.read().locked == []
    stack.src.insert_rows("APP", "ORDERS", 2)  # the source serves
    assert len(stack.src.table_rows("APP", "ORDERS")) == 122

    # 2. The half-imported schema dropped (what a person does before asking again), then a
    # migration that completes: validated clean, the target's service as its endpoint.
    with stack.tgt.transaction() as d:
        d.users.remove("APP")
        d.objects = [o for o in d.objects if o.owner != "APP"]
    done = await stack.migrate(schemas="APP", parallel="2")
    assert isinstance(done, MigrationCompleted), done
    assert done.method is MigrationMethod.DATAPUMP
    assert (done.endpoint.host, done.endpoint.port) == (f"{stack.target.uid}.db.example", 1521)
    assert len(stack.tgt.table_rows("APP", "ORDERS")) == 122
    assert len(stack.tgt.table_rows("APP", "CUSTOMERS")) == 30
    # The source stays fenced after a completed migration: its owners locked, as at the fence.
    assert stack.src.read().locked == ["APP"]
    # Validation reached the saga's record: the status history says what parity compared.
    assert stack.last is not None
    said = [m for m in await stack.history(stack.last) if m.startswith("parity held")]
    objects = [
        o
        for o in stack.src.read().objects
        if o.owner == "APP" and not o.generated and not o.name.startswith("BIN$")
    ]
    rows = sum(len(stack.src.table_rows("APP", t)) for t in ("ORDERS", "CUSTOMERS"))
    assert said == [
        f"parity held ({len(objects)} objects, 2 tables, {rows} rows compared; recompiled: APP "
        "PROCEDURE REPRICE; INVALID as at the source: APP PROCEDURE LEGACY_REPORT); point of no "
        "return: opening the target"
    ]


async def test_a_datapump_migration_over_a_network_link_completes_with_no_dump_set(
    stack: Stack,
) -> None:
    stack.tgt.create_link("SRC", stack.src.db.root)
    done = await stack.migrate(schemas="APP", parallel="2", network_link="SRC")
    assert isinstance(done, MigrationCompleted), done
    [run] = stack.tgt.db.runs("impdp")
    assert "NETWORK_LINK=SRC" in run
    assert f"FLASHBACK_SCN={done.source_final.value}" in run  # the source as the fence left it
    assert stack.src.db.runs("expdp") == [
        r for r in stack.src.db.runs("expdp") if "ESTIMATE_ONLY=YES" in r
    ]  # the source ran its estimate, never an export
    assert stack.target.oracle is not None
    assert not list((stack.target.oracle.staging_dir / "datapump").glob("*.dmp"))
    for table in ("CUSTOMERS", "ORDERS"):
        assert stack.tgt.table_rows("APP", table) == stack.src.table_rows("APP", table), table
    assert stack.src.read().locked == ["APP"]


async def test_the_validating_phase_refuses_what_the_doctor_finds_before_anything_changes(
    stack: Stack,
) -> None:
    Profile(encrypted_tablespaces=1, wallet_status="CLOSED").save(stack.src.db)
    refused = await stack.ask(schemas="APP")
    assert isinstance(refused, RequestRejected), refused
    assert refused.code == "TM-MIG-PREFLIGHT"
    assert f"source: {stack.source.uid}: doctor tde_keystore: 1 encrypted tablespaces" in (
        refused.reason
    )
    assert stack.src.db.runs("expdp") == []  # no estimate, no export
    assert stack.src.read().locked == []
    assert stack.tgt.db.runs("impdp") == []
