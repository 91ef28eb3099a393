"""The `dataguard` method's steps through `OracleEngine.migration_step`, in the saga's order, on
a simulated Data Guard configuration (not Oracle): two simulated databases on one node, the
fake rman/dgmgrl of each, the engine's SQL answered by `SimulatedDataGuardSql`.
"""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import pytest

from schemas import Engine, Scn
from schemas.messages import (
    MigrationMethod,
    RunMigrationCopy,
    RunMigrationFence,
    RunMigrationFinalSync,
    RunMigrationLag,
    RunMigrationPreflight,
    RunMigrationPromote,
    RunMigrationRewind,
    RunMigrationUnfence,
    TargetInstance,
)
from services.blobstore import MemoryStore
from services.engines.base import EngineError
from services.engines.oracle.engine import OracleEngine
from services.engines.settings import EngineSettings, HostedDatabase, OracleInstance
from tests.oracle_sim.dataguard import SimulatedDataGuard
from tests.oracle_sim.dataguard_sql import SimulatedDataGuardSql
from tests.oracle_sim.db import SimulatedOracle
from tests.oracle_sim.sql import Profile
from tests.oracle_sim.tools import install

pytestmark = [pytest.mark.integration, pytest.mark.oracle]

SRC, TGT = "ora-prim", "ora-stby"
PRIM, STBY = "ORA_PRIM", "ORA_STBY"


class _Ctx:
    job_id = uuid.uuid4()

    async def progress(self, phase: str, **_: Any) -> None:
        return None


class Rig:
    def __init__(self, tmp_path: Path) -> None:
        self.dg = SimulatedDataGuard.create(tmp_path / "dg", PRIM)
        self.dg.add_auxiliary(STBY)
        self.dbs = {
            SRC: self._hosted(tmp_path, SRC, self.dg.member_root(PRIM)),
            TGT: self._hosted(tmp_path, TGT, self.dg.member_root(STBY)),
        }
        self.names = {SRC: PRIM, TGT: STBY}
        self.sql: dict[str, SimulatedDataGuardSql] = {}
        self.engine = OracleEngine(
            EngineSettings(databases=list(self.dbs.values())), datapump_sql=self._sql
        )
        self.store = MemoryStore()
        self.migration_id = uuid.uuid4()

    def _sql(self, db: HostedDatabase) -> SimulatedDataGuardSql:
        found = self.sql.get(db.uid)
        if found is None:
            found = self.sql[db.uid] = SimulatedDataGuardSql(self.dg, self.names[db.uid])
        return found

    @staticmethod
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

    async def step(self, kind: type[Any], on: str = TGT, **fields: Any) -> Any:
        command = kind(
            migration_id=self.migration_id,
            target=TGT,
            job_id=uuid.uuid4(),
            source=SRC,
            method=MigrationMethod.DATAGUARD,
            target_instance=TargetInstance(database=self.dbs[TGT].ref, node="n1"),
            options={"verify_wait_s": "2"},
            **fields,
        )
        return await self.engine.migration_step(
            self.dbs[on], command, store=self.store, prefix="tm", ctx=_Ctx()
        )


@pytest.fixture
def rig(tmp_path: Path) -> Rig:
    return Rig(tmp_path)


async def test_a_standby_is_built_gated_by_its_lag_switched_over_and_switched_back(
    rig: Rig,
) -> None:
    acked = [rig.dg.commit(f"v{n}") for n in range(20)]
    source = await rig.step(RunMigrationPreflight, on=SRC, side="source")
    target = await rig.step(RunMigrationPreflight, side="target")
    assert (source.problems, target.problems) == ([], [])
    assert source.facts["system_identifier"] == str(rig.dg.member(PRIM).dbid)

    copied = await rig.step(RunMigrationCopy)
    assert copied.facts == {"duplicated": "true", "apply": "running"}
    assert rig.dg.member(STBY).role == "PHYSICAL STANDBY"
    assert len(rig.dg.runs("rman")) == 1
    # A rerun finds the standby and duplicates nothing again.
    assert (await rig.step(RunMigrationCopy)).facts["duplicated"] == "false"

    # Load faster than apply: the lag grows; apply catches up once the load stops.
    rig.dg.set_apply_rate(5.0)
    for n in range(40):
        acked.append(rig.dg.commit(f"w{n}"))
        rig.dg.advance(0.1)
    behind = await rig.step(RunMigrationLag)
    assert behind.lag_seconds is not None
    assert behind.lag_seconds >= 2
    rig.dg.set_apply_rate(500.0)
    rig.dg.advance(2.0)
    caught = await rig.step(RunMigrationLag)
    assert caught.lag_seconds is not None
    assert caught.lag_seconds <= 1

    # Transport stops: the numbers freeze, DATUM_TIME ages, the gate is closed (lag unknown).
    rig.dg.stop_transport()
    rig.dg.advance(30.0)
    stale = await rig.step(RunMigrationLag)
    assert stale.lag_seconds is None
    assert "stale" in stale.facts["unknown"]
    rig.dg.start_transport()
    rig.dg.advance(1.0)

    fence = await rig.step(RunMigrationFence, on=SRC)
    assert rig.dg.member(PRIM).role == "PHYSICAL STANDBY"
    final = await rig.step(RunMigrationFinalSync, source_final=fence.source_position)
    assert final.target_position.value > fence.source_position.value
    promoted = await rig.step(RunMigrationPromote, source_final=fence.source_position)
    assert promoted.facts["target_role"] == "PRIMARY"
    assert promoted.facts["source_role"] == "PHYSICAL STANDBY"
    assert promoted.facts["source_apply"] == "running"
    assert rig.dg.lost(STBY, acked) == []
    acked.append(rig.dg.commit("on the new primary"))
    rig.dg.advance(1.0)

    back = await rig.step(RunMigrationRewind, on=SRC)
    assert back.facts["target_following"] == "true"
    assert rig.dg.member(PRIM).role == "PRIMARY"
    assert rig.dg.member(PRIM).open_mode == "READ WRITE"
    assert rig.dg.member(STBY).role == "PHYSICAL STANDBY"
    assert rig.dg.lost(PRIM, acked) == []


async def test_each_switchover_failure_is_settled_by_the_documented_matrix(rig: Rig) -> None:
    acked = [rig.dg.commit(f"v{n}") for n in range(5)]
    await rig.step(RunMigrationCopy)
    rig.dg.advance(1.0)
    # The old primary failed to convert: it is open again and the fence fails.
    rig.dg.inject_switchover_fault("convert_primary", ["ORA-16xxx: simulated conversion failure"])
    with pytest.raises(EngineError) as failed:
        await rig.step(RunMigrationFence, on=SRC)
    assert failed.value.failure.code == "TM-ORA-071"
    assert rig.dg.member(PRIM).role == "PRIMARY"
    acked.append(rig.dg.commit("still serving"))
    assert (await rig.step(RunMigrationUnfence, on=SRC)).facts["switched"] == "false"
    rig.dg.advance(1.0)
    # Both standby (ORA-16471, the target's apply stopped): FORCE after ORA-16473, apply first.
    rig.dg.inject_switchover_fault("convert_target", [])
    fence = await rig.step(RunMigrationFence, on=SRC)
    assert fence.facts["recovered"] == "FORCE on the target"
    assert fence.facts["switchover_error"].startswith("ORA-16471")
    assert rig.dg.member(STBY).role == "PRIMARY"
    assert rig.dg.lost(STBY, acked) == []


async def test_the_switchover_lost_its_answer_but_the_roles_say_it_happened(rig: Rig) -> None:
    await rig.step(RunMigrationCopy)
    rig.dg.advance(1.0)
    rig.dg.inject_switchover_fault("report", ["ORA-03113: end-of-file on communication channel"])
    fence = await rig.step(RunMigrationFence, on=SRC)
    assert fence.facts["switchover_error"].startswith("ORA-03113")
    assert "recovered" not in fence.facts
    assert rig.dg.member(STBY).role == "PRIMARY"


async def test_verify_starts_apply_on_ora_16470_and_waits_out_ora_16467(rig: Rig) -> None:
    await rig.step(RunMigrationCopy)
    sql = rig._sql(rig.dbs[TGT])
    await sql.call("stop", "ALTER DATABASE RECOVER MANAGED STANDBY DATABASE CANCEL")
    rig.dg.advance(1.0)
    fence = await rig.step(RunMigrationFence, on=SRC)
    assert rig.dg.member(STBY).role == "PRIMARY"
    assert fence.source_position.value > 0


async def test_each_preflight_finding_is_its_own(rig: Rig) -> None:
    profile = Profile(
        log_mode="NOARCHIVELOG",
        parameters={**Profile().parameters, "standby_file_management": "MANUAL"},
    )
    profile.save(SimulatedOracle(rig.dg.member_root(PRIM)))
    profile.save(SimulatedOracle(rig.dg.member_root(STBY)))
    source = await rig.step(RunMigrationPreflight, on=SRC, side="source")
    assert any("doctor archivelog: NOARCHIVELOG" in p for p in source.problems)
    assert any("doctor standby_file_management: MANUAL" in p for p in source.problems)
    target = await rig.step(RunMigrationPreflight, side="target")
    assert any("STANDBY_FILE_MANAGEMENT=MANUAL" in p for p in target.problems)
    await rig.step(RunMigrationCopy)
    await rig.step(RunMigrationCopy)
    Profile(version="18.0.0.0.0").save(SimulatedOracle(rig.dg.member_root(STBY)))
    again = await rig.step(RunMigrationPreflight, side="target")
    assert any("release" in p for p in again.problems)


async def test_a_lag_without_a_standby_is_unknown_not_zero(rig: Rig) -> None:
    with pytest.raises(EngineError) as down:
        await rig.step(RunMigrationLag)
    assert down.value.failure.code == "ORA-01507"
    await rig.step(RunMigrationCopy)
    sample = await rig.step(RunMigrationLag)
    assert sample.lag_seconds is not None
    assert Scn(value=rig.dg.member(STBY).scn) == sample.target_position
