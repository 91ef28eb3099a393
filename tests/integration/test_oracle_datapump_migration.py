"""The `datapump` method through `OracleEngine.migration_step`, step by step in the saga's order
(`services/planner/migrations.py`: preflight both sides, prepare, fence, final_sync, parity,
promote; unfence on an abort), on two simulated databases declared on one node and an
in-memory store. The executor calls exactly this; the planner's half is its table row
(`tests/unit/test_migration_datapump.py`)."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from schemas import DatabaseRef, Engine, Scn
from schemas.messages import (
    MigrationMethod,
    MigrationStep,
    MigrationStepResult,
    RunMigrationCopy,
    RunMigrationFence,
    RunMigrationFinalSync,
    RunMigrationParity,
    RunMigrationPreflight,
    RunMigrationPrepare,
    RunMigrationPromote,
    RunMigrationUnfence,
    TargetInstance,
)
from schemas.messages.common import ProgressUnit
from services.blobstore import MemoryStore
from services.engines.base import EngineError, Migrates
from services.engines.oracle.engine import OracleEngine
from services.executor.settings import ExecutorSettings, HostedDatabase, OracleInstance
from tests.oracle_sim.datapump_sql import SimulatedDataPumpSql
from tests.oracle_sim.db import SimulatedOracle, SimulatedOracleError
from tests.oracle_sim.dictionary import SimulatedDictionary
from tests.oracle_sim.sql import Profile
from tests.oracle_sim.tools import install

pytestmark = [pytest.mark.oracle]

NODE = "ora-node-1"


class _Ctx:
    job_id = uuid.uuid4()

    async def progress(
        self,
        phase: str,
        *,
        done: int | None = None,
        total: int | None = None,
        unit: ProgressUnit | None = None,
        message: str = "",
    ) -> None:
        return None


@dataclass
class Node:
    engine: OracleEngine
    source: HostedDatabase
    target: HostedDatabase
    src: SimulatedDictionary
    tgt: SimulatedDictionary
    tgt_db: SimulatedOracle
    store: MemoryStore

    @property
    def tgt_stage(self) -> Path:
        assert self.target.oracle is not None
        return self.target.oracle.staging_dir / "datapump"

    async def step(
        self, kind: type[MigrationStep], migration: uuid.UUID, options: dict[str, str], **extra: Any
    ) -> MigrationStepResult:
        command = kind(
            migration_id=migration,
            job_id=uuid.uuid4(),
            source=self.source.uid,
            target=self.target.uid,
            method=MigrationMethod.DATAPUMP,
            target_instance=TargetInstance(database=self.target.ref, node=NODE),
            options=options,
            **extra,
        )
        # As the executor does (`jobs.py`): a target-side step runs for the target's declaration.
        db = self.target if command.SIDE == "target" else self.source
        return await self.engine.migration_step(
            db, command, store=self.store, prefix="tm", ctx=_Ctx()
        )


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
            dsn=f"{uid}.db.example:1522/{uid.upper()}_SVC",
            user="C##TIDEMARK",
            password_file=tmp_path / "never-read",
        ),
    )


@pytest.fixture
def node(tmp_path: Path) -> Node:
    roots = {"ora-src": tmp_path / "src", "ora-tgt": tmp_path / "tgt"}
    sims = {uid: SimulatedOracle.create(root, threads=1) for uid, root in roots.items()}
    dictionaries = {uid: SimulatedDictionary(sim) for uid, sim in sims.items()}
    hosted = {uid: _hosted(tmp_path, uid, root) for uid, root in roots.items()}
    for uid, db in hosted.items():
        assert db.oracle is not None
        dictionaries[uid].create_directory("TM_MIG", db.oracle.staging_dir / "datapump")
    dictionaries["ora-src"].seed_schema("APP")
    dictionaries["ora-tgt"].create_link("SRC", roots["ora-src"])
    settings = ExecutorSettings(databases=list(hosted.values()))
    engine = OracleEngine(
        settings, datapump_sql=lambda db: SimulatedDataPumpSql(dictionaries[db.uid], [])
    )
    return Node(
        engine,
        hosted["ora-src"],
        hosted["ora-tgt"],
        dictionaries["ora-src"],
        dictionaries["ora-tgt"],
        sims["ora-tgt"],
        MemoryStore(),
    )


async def _through_parity(
    node: Node, migration: uuid.UUID, options: dict[str, str]
) -> tuple[MigrationStepResult, MigrationStepResult]:
    for side in ("source", "target"):
        checked = await node.step(RunMigrationPreflight, migration, options, side=side)
        assert checked.problems == [], checked
    prepared = await node.step(RunMigrationPrepare, migration, options)
    assert int(prepared.facts["estimate_kb"]) > 0
    fence = await node.step(RunMigrationFence, migration, options)
    assert fence.source_position is not None
    synced = await node.step(
        RunMigrationFinalSync, migration, options, source_final=fence.source_position
    )
    assert synced.facts["tables"] == "2"
    return fence, await node.step(RunMigrationParity, migration, options)


async def test_the_engine_declares_the_migration_capability(node: Node) -> None:
    assert isinstance(node.engine, Migrates)


async def test_a_migration_over_a_dump_set_completes_with_validation_clean(node: Node) -> None:
    migration, options = uuid.uuid4(), {"schemas": "app", "parallel": "2"}
    fence, parity = await _through_parity(node, migration, options)
    # Fenced: the owner's account is locked, its application writes nothing more.
    assert node.src.read().locked == ["APP"]
    with pytest.raises(SimulatedOracleError, match="ORA-28000"):
        node.src.insert_rows("APP", "ORDERS", 1)
    assert fence.bytes_copied
    assert fence.facts["files"] == "2"
    assert parity.differences == []
    assert parity.facts["recompiled"] == "APP PROCEDURE REPRICE"
    assert parity.facts["invalid_as_at_source"] == "APP PROCEDURE LEGACY_REPORT"
    assert len(node.tgt.table_rows("APP", "ORDERS")) == 120

    promoted = await node.step(
        RunMigrationPromote, migration, options, source_final=fence.source_position
    )
    assert promoted.endpoint is not None
    assert (promoted.endpoint.host, promoted.endpoint.port, promoted.endpoint.database) == (
        "ora-tgt.db.example",
        1522,
        "ORA-TGT_SVC",
    )
    # A step redelivered after it finished finds its work done: no second export or import.
    again = await node.step(
        RunMigrationFinalSync, migration, options, source_final=fence.source_position
    )
    assert again.facts["resumed"] == "true"


async def test_a_non_benign_import_error_fails_with_its_code_and_the_abort_serves_the_source(
    node: Node,
) -> None:
    migration, options = uuid.uuid4(), {"schemas": "APP"}
    for side in ("source", "target"):
        assert (
            await node.step(RunMigrationPreflight, migration, options, side=side)
        ).problems == []
    await node.step(RunMigrationPrepare, migration, options)
    fence = await node.step(RunMigrationFence, migration, options)
    node.tgt.inject_fault(
        "impdp",
        "TABLE_DATA:APP.ORDERS",
        "error",
        [
            'ORA-31693: Table data object "APP"."ORDERS" failed to load/unload and is being '
            "skipped due to error:",
            "ORA-01653: unable to extend table APP.ORDERS by 128 in tablespace USERS",
        ],
    )
    assert fence.source_position is not None
    with pytest.raises(EngineError) as failed:
        await node.step(
            RunMigrationFinalSync, migration, options, source_final=fence.source_position
        )
    assert (failed.value.failure.code, failed.value.failure.retryable) == ("ORA-31693", False)

    undone = await node.step(RunMigrationUnfence, migration, options)
    assert undone.facts["unlocked"] == "APP"
    assert node.src.read().locked == []
    node.src.insert_rows("APP", "ORDERS", 1)  # the source serves again
    assert len(node.src.table_rows("APP", "ORDERS")) == 121
    # Unfencing twice (a redelivery) changes nothing more.
    await node.step(RunMigrationUnfence, migration, options)
    assert node.src.read().locked == []


async def test_a_migration_over_a_link_validates_against_the_source_at_the_fence(
    node: Node,
) -> None:
    migration, options = uuid.uuid4(), {"schemas": "APP", "network_link": "src"}
    fence, parity = await _through_parity(node, migration, options)
    assert parity.differences == []
    assert isinstance(fence.source_position, Scn)
    # The import over the link reads the source as it was at the fence, not as it is.
    assert f"FLASHBACK_SCN={fence.source_position.value}" in node.tgt_db.runs("impdp")[0]
    assert not [o async for o in node.store.list("tm/ora-src/") if o.key.endswith(".dmp")]
    assert "NETWORK_LINK=SRC" in node.tgt_db.runs("impdp")[0]


async def test_an_account_locked_before_the_fence_stays_locked_after_the_unfence(
    node: Node,
) -> None:
    node.src.seed_schema("HR")
    with node.src.transaction() as d:
        d.locked.append("HR")
    migration, options = uuid.uuid4(), {"schemas": "APP,HR", "network_link": "SRC"}
    await node.step(RunMigrationFence, migration, options)
    assert sorted(node.src.read().locked) == ["APP", "HR"]
    await node.step(RunMigrationUnfence, migration, options)
    assert node.src.read().locked == ["HR"]


async def test_the_preflight_names_what_stops_the_migration(node: Node) -> None:
    node.tgt.seed_schema("APP")
    migration, options = uuid.uuid4(), {"schemas": "APP,NOBODY", "network_link": "NOLINK"}
    source = await node.step(RunMigrationPreflight, migration, options, side="source")
    assert source.problems == ["ora-src: schema NOBODY was not found"]
    target = await node.step(RunMigrationPreflight, migration, options, side="target")
    assert target.problems == [
        "ora-tgt: no database link NOLINK",
        "ora-tgt: user APP already exists: the method imports into a fresh schema only",
    ]
    with pytest.raises(EngineError) as refused:
        await node.step(RunMigrationCopy, migration, options)
    assert refused.value.failure.code == "TM-ORA-060"


async def test_a_target_not_declared_on_the_node_is_a_preflight_problem(node: Node) -> None:
    other = DatabaseRef(uid="ora-elsewhere", engine=Engine.ORACLE, name="X")
    command = RunMigrationPreflight(
        migration_id=uuid.uuid4(),
        job_id=uuid.uuid4(),
        source=node.source.uid,
        target=other.uid,
        method=MigrationMethod.DATAPUMP,
        target_instance=TargetInstance(database=other, node=NODE),
        side="target",
    )
    found = await node.engine.migration_step(
        node.source, command, store=node.store, prefix="tm", ctx=_Ctx()
    )
    assert "not an Oracle database of this node" in found.problems[0]


async def test_the_preflight_refuses_what_the_doctor_finds_on_either_side(node: Node) -> None:
    # Source: encrypted tablespaces with the keystore closed. Target: the directory object
    # names another path, no Data Pump role granted.
    Profile(encrypted_tablespaces=2, wallet_status="CLOSED").save(node.src.db)
    with node.tgt.transaction() as d:
        d.directories["TM_MIG"] = "/elsewhere/dpdump"
        d.roles = []
    migration, options = uuid.uuid4(), {"schemas": "APP"}
    source = await node.step(RunMigrationPreflight, migration, options, side="source")
    assert source.problems == [
        "ora-src: doctor tde_keystore: 2 encrypted tablespaces; FILE CLOSED, expected OPEN when a "
        "tablespace is encrypted (encrypted tablespaces need an OPEN keystore (ORA-28365 "
        "otherwise))"
    ]
    assert source.facts["doctor_checks"] == "release,tde_keystore,datapump_directory,datapump_roles"
    assert source.facts["doctor_version"] == "19.0.0.0.0"
    target = await node.step(RunMigrationPreflight, migration, options, side="target")
    assert target.problems == [
        f"ora-tgt: doctor datapump_directory: TM_MIG = /elsewhere/dpdump, expected the directory "
        f"exists (the node stages dump files at {node.tgt_stage}: the directory object must "
        "name that path)",
        "ora-tgt: doctor datapump_roles: no DATAPUMP_EXP/IMP_FULL_DATABASE or DBA granted "
        "directly, expected DATAPUMP_EXP/IMP_FULL_DATABASE (full and cross-schema jobs need them "
        "(a role granted through another is not seen))",
    ]
    # Over a link the source writes no file, so its directory object is not checked there.
    linked = await node.step(
        RunMigrationPreflight, migration, {**options, "network_link": "SRC"}, side="source"
    )
    assert "datapump_directory" not in linked.facts["doctor_checks"]
    assert node.src.read().locked == []  # nothing changed on either side
    assert node.src.db.runs("expdp") == []
