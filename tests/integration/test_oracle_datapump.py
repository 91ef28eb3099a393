"""The `datapump` method's engine steps (`services/engines/oracle/datapump.py`) against two
simulated databases: an export through the store and an import from it, an import over a
database link, a job killed mid-import and resumed by ATTACH, and an import that ends with a
non-benign error failing with its code."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest

from services.blobstore import MemoryStore
from services.engines.base import EngineError
from services.engines.oracle import datapump as dp
from services.engines.oracle.runner import OracleHome
from tests.oracle_sim.datapump_sql import SimulatedDataPumpSql
from tests.oracle_sim.db import SimulatedOracle
from tests.oracle_sim.dictionary import SimulatedDictionary
from tests.oracle_sim.tools import install

pytestmark = [pytest.mark.oracle]

PREFIX = "migrations/m-1/datapump"


@dataclass
class Side:
    db: SimulatedOracle
    dictionary: SimulatedDictionary
    side: dp.DataPumpSide
    stage: Path


def _side(tmp_path: Path, name: str) -> Side:
    root = tmp_path / name
    db = SimulatedOracle.create(root, threads=1)
    install(tmp_path / f"{name}-home", root)
    dictionary = SimulatedDictionary(db)
    stage = tmp_path / f"{name}-stage"
    dictionary.create_directory("TM_MIG", stage)
    side = dp.DataPumpSide(
        name=name,
        home=OracleHome(oracle_home=tmp_path / f"{name}-home", sid="TMSIM", work_dir=tmp_path),
        sql=SimulatedDataPumpSql(dictionary, []),
        directory="TM_MIG",
        directory_path=stage,
    )
    return Side(db, dictionary, side, stage)


@pytest.fixture
def pair(tmp_path: Path) -> tuple[Side, Side]:
    source, target = _side(tmp_path, "src"), _side(tmp_path, "tgt")
    source.dictionary.seed_schema("APP")
    target.dictionary.create_link("SRC", source.db.root)
    return source, target


def _runs(side: Side, tool: str) -> list[str]:
    return side.db.runs(tool)


async def test_a_schema_moves_through_the_store_at_the_fence_scn(pair: tuple[Side, Side]) -> None:
    source, target = pair
    plan = dp.DataPumpPlan(migration_id="m-1", schemas=("APP",), parallel=2)
    store = MemoryStore()
    prepared = await dp.prepare(plan, source.side, target.side)
    assert prepared.owners == ("APP",)
    assert prepared.estimate_kb > 0
    fence = await dp.current_scn(source.side)
    source.dictionary.insert_rows("APP", "ORDERS", 5)  # after the fence SCN: not exported
    manifest = await dp.export_to_store(plan, source.side, store, PREFIX, scn=fence)
    assert manifest.flashback_scn == fence
    assert [f.name for f in manifest.files] == [
        f"tm_{plan.digest}_01.dmp",
        f"tm_{plan.digest}_02.dmp",
    ]
    assert manifest.exported_rows == {"APP.CUSTOMERS": 30, "APP.ORDERS": 120}
    assert not list(source.stage.glob("*.dmp")), "staged dump files are removed once stored"
    # A second call finds the manifest and does not export again.
    assert await dp.export_to_store(plan, source.side, store, PREFIX) == manifest
    assert len(_runs(source, "expdp")) == 2  # the estimate and one export

    outcome = await dp.import_from_store(plan, target.side, store, PREFIX)
    assert outcome.rows == {"APP.CUSTOMERS": 30, "APP.ORDERS": 120}
    assert all("ORA-39082" in w for w in outcome.warnings)
    assert not outcome.resumed
    assert len(target.dictionary.table_rows("APP", "ORDERS")) == 120

    # The source's inventory is the live one plus the 5 rows past the fence: validate against
    # what the manifest took (the fenced source).
    report = await dp.validate(plan, target.side, manifest.inventory.model_copy(
        update={"rows": {**manifest.inventory.rows, "APP.ORDERS": 120}}
    ))  # fmt: skip
    assert report.ok, report
    assert report.recompiled == ("APP PROCEDURE REPRICE",)
    assert report.invalid_as_at_source == ("APP PROCEDURE LEGACY_REPORT",)
    assert "BIN$" not in repr(report)


async def test_a_schema_moves_over_a_network_link(pair: tuple[Side, Side]) -> None:
    source, target = pair
    plan = dp.DataPumpPlan(migration_id="m-2", schemas=("APP",), parallel=4, link="SRC")
    await dp.prepare(plan, source.side, target.side)
    scn = await dp.current_scn(source.side)
    source.dictionary.insert_rows("APP", "CUSTOMERS", 3)
    outcome = await dp.import_over_link(plan, target.side, scn)
    assert outcome.rows == {"APP.CUSTOMERS": 30, "APP.ORDERS": 120}
    assert "NETWORK_LINK=SRC" in _runs(target, "impdp")[0]
    assert not list(target.stage.glob("*.dmp"))
    taken = await dp.inventory(source.side, ["APP"])
    report = await dp.validate(plan, target.side, taken)
    assert report.row_differences == ("APP.CUSTOMERS: source 33, target 30",)


async def test_a_job_killed_mid_import_is_resumed_by_attach(pair: tuple[Side, Side]) -> None:
    source, target = pair
    plan = dp.DataPumpPlan(migration_id="m-3", schemas=("APP",), link="SRC", timeout=3.0)
    target.dictionary.inject_fault("impdp", "TABLE_DATA:APP.ORDERS", "hang")
    scn = await dp.current_scn(source.side)
    with pytest.raises(EngineError) as killed:
        await dp.import_over_link(plan, target.side, scn)
    assert killed.value.failure.retryable  # the runner killed the hung client's group
    [job] = target.dictionary.jobs()
    assert (job["job_name"], job["state"]) == (plan.job_name("IMP"), "NOT RUNNING")
    assert len(target.dictionary.table_rows("APP", "CUSTOMERS")) == 30

    outcome = await dp.import_over_link(
        dp.DataPumpPlan(migration_id="m-3", schemas=("APP",), link="SRC"), target.side, scn
    )
    assert outcome.resumed
    assert _runs(target, "impdp")[-1] == f"ATTACH={plan.job_name('IMP')}\n"
    # No table loaded twice, none skipped: the restarted job went on from where it stopped.
    assert len(target.dictionary.table_rows("APP", "CUSTOMERS")) == 30
    assert len(target.dictionary.table_rows("APP", "ORDERS")) == 120
    assert target.dictionary.jobs() == []


async def test_an_instance_crash_mid_export_is_resumed_by_attach(pair: tuple[Side, Side]) -> None:
    source, _ = pair
    plan = dp.DataPumpPlan(migration_id="m-4", schemas=("APP",))
    store = MemoryStore()
    source.dictionary.inject_fault("expdp", "TABLE_DATA:APP.ORDERS", "die")
    with pytest.raises(EngineError) as died:
        await dp.export_to_store(plan, source.side, store, PREFIX)
    assert (died.value.failure.code, died.value.failure.retryable) == ("ORA-03113", True)
    assert source.dictionary.jobs()[0]["state"] == "NOT RUNNING"
    manifest = await dp.export_to_store(plan, source.side, store, PREFIX)
    assert manifest.exported_rows == {"APP.CUSTOMERS": 30, "APP.ORDERS": 120}


async def test_a_job_that_finished_unwatched_is_judged_by_its_log(pair: tuple[Side, Side]) -> None:
    source, target = pair
    plan = dp.DataPumpPlan(migration_id="m-5", schemas=("APP",), link="SRC")
    scn = await dp.current_scn(source.side)
    await dp.import_over_link(plan, target.side, scn)
    runs = len(_runs(target, "impdp"))
    again = await dp.import_over_link(plan, target.side, scn)
    assert again.resumed
    assert len(_runs(target, "impdp")) == runs, "no second import over the first"


async def test_an_import_into_a_target_that_has_the_table_fails_with_ora_39151(
    pair: tuple[Side, Side],
) -> None:
    source, target = pair
    plan = dp.DataPumpPlan(migration_id="m-6", schemas=("APP",), link="SRC")
    target.dictionary.seed_schema("APP", rows={"ORDERS": 1})
    with pytest.raises(EngineError) as refused:
        await dp.prepare(plan, source.side, target.side)
    assert refused.value.failure.code == "TM-ORA-055"
    # Past the preflight (a table made between prepare and import), the import itself says so.
    with pytest.raises(EngineError) as failed:
        await dp.import_over_link(plan, target.side, await dp.current_scn(source.side))
    assert failed.value.failure.code == "ORA-39151"
    assert not failed.value.failure.retryable


async def test_an_injected_table_load_failure_fails_the_import_with_its_code(
    pair: tuple[Side, Side],
) -> None:
    source, target = pair
    plan = dp.DataPumpPlan(migration_id="m-7", schemas=("APP",), link="SRC")
    target.dictionary.inject_fault(
        "impdp",
        "TABLE_DATA:APP.ORDERS",
        "error",
        [
            'ORA-31693: Table data object "APP"."ORDERS" failed to load/unload and is being '
            "skipped due to error:",
            "ORA-01653: unable to extend table APP.ORDERS by 128 in tablespace USERS",
        ],
    )
    with pytest.raises(EngineError) as failed:
        await dp.import_over_link(plan, target.side, await dp.current_scn(source.side))
    assert failed.value.failure.code == "ORA-31693"


async def test_a_full_import_allows_oracles_own_objects_only(pair: tuple[Side, Side]) -> None:
    source, target = pair
    plan = dp.DataPumpPlan(migration_id="m-8", link="SRC")
    outcome = await dp.import_over_link(plan, target.side, await dp.current_scn(source.side))
    assert any('TABLESPACE:"UNDOTBS1"' in w for w in outcome.warnings)
    assert any('USER:"OUTLN"' in w for w in outcome.warnings)
    assert "FULL=YES" in _runs(target, "impdp")[0]
