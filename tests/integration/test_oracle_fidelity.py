"""Where the simulated Oracle and the engine's scripts must behave as a real Oracle does (the
fidelity audit): times written in the server's zone, sibling incarnations kept apart, the real
autobackup piece line, RUN-scoped settings, the codes Oracle answers with, the state a failed
script leaves the instance in. Each test failed before the fix it pins."""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import pytest

from schemas import Engine, Incarnation, Scn
from schemas.messages import BackupSpec, RunRestore
from schemas.messages.backups import BackupKind
from schemas.messages.common import ProgressUnit
from schemas.messages.restores import RestoreMode, RestorePlan, TargetPosition, TargetTime
from services.blobstore import MemoryStore
from services.engines.oracle.backup import run_backup
from services.engines.oracle.engine import OracleEngine, home_of
from services.executor.settings import ExecutorSettings, HostedDatabase, OracleInstance
from tests.oracle_sim.db import SimulatedOracle
from tests.oracle_sim.tools import install
from tests.oracle_sim.views import SimulatedViews

pytestmark = [pytest.mark.oracle]


class _Ctx:
    def __init__(self) -> None:
        self.job_id = uuid.uuid4()
        self.messages: list[str] = []

    async def progress(
        self,
        phase: str,
        *,
        done: int | None = None,
        total: int | None = None,
        unit: ProgressUnit | None = None,
        message: str = "",
    ) -> None:
        self.messages.append(message)


class _Rig:
    def __init__(self, tmp_path: Path, time_zone: str = "UTC") -> None:
        self.tmp = tmp_path
        self.db = SimulatedOracle.create(tmp_path / "sim", time_zone=time_zone)
        install(tmp_path / "home", tmp_path / "sim")
        self.hosted = HostedDatabase(
            uid="ora1",
            engine=Engine.ORACLE,
            name="TMSIM",
            system_id=1234567890,
            oracle=OracleInstance(
                oracle_home=tmp_path / "home",
                oracle_sid="TMSIM",
                staging_dir=tmp_path / "stage",
                dsn="sim:1521/TMSIM",
                user="C##TIDEMARK",
                password_file=tmp_path / "never-read",
                time_zone=time_zone,
            ),
        )
        self.engine = OracleEngine(ExecutorSettings(), views=lambda _: SimulatedViews(self.db))
        self.store = MemoryStore()

    async def backup(self, backup_id: str = "b1") -> str:
        outcome = await self.engine.backup(
            self.hosted,
            backup_id=backup_id,
            spec=BackupSpec(kind=BackupKind.FULL),
            store=self.store,
            prefix="tm",
            ctx=_Ctx(),
        )
        return outcome.manifest_key

    async def store_logs(self) -> list[str]:
        keys = []
        for row in self.db.archived_logs():
            key = f"tm/ora1/{row['resetlogs_id']}/logs/{row['thread#']}/{row['sequence#']}"
            if await self.store.head(key) is None and Path(row["name"]).exists():
                await self.store.put_file(key, row["name"])
            keys.append(key)
        return keys

    def command(self, target: Any, manifest_key: str, log_keys: list[str]) -> RunRestore:
        rid = int(self.db.database()["resetlogs_id"])
        return RunRestore(
            job_id=uuid.uuid4(),
            restore_id=uuid.uuid4(),
            target=target,
            mode=RestoreMode.IN_PLACE,
            plan=RestorePlan(
                base_backup_id="b1",
                base_manifest_key=manifest_key,
                log_keys=log_keys,
                lineage=Incarnation(resetlogs_id=rid, resetlogs_scn=Scn(value=1)),
            ),
        )

    async def restore(self, command: RunRestore) -> Any:
        return await self.engine.restore(
            self.hosted, command, store=self.store, prefix="tm", ctx=_Ctx()
        )


async def test_a_time_target_lands_on_its_scn_on_a_server_that_is_not_at_utc(
    tmp_path: Path,
) -> None:
    rig = _Rig(tmp_path, time_zone="America/New_York")
    for i in range(4):
        rig.db.insert(f"a{i}", thread=1 + i % 2)
    rig.db.archive_log_current()
    key = await rig.backup()
    for i in range(6):
        rig.db.insert(f"b{i}", thread=1 + i % 2)
    logs = rig.db.archive_log_current()
    until = min(x.next_scn for x in logs) - 2
    expected = rig.db.expected_contents(until)
    at = rig.db.time_of(until)
    command = rig.command(TargetTime(at=at), key, await rig.store_logs())

    await rig.restore(command)

    script = rig.db.runs("rman")[-1]
    local = at.astimezone(__import__("zoneinfo").ZoneInfo("America/New_York"))
    assert local.strftime("%Y-%m-%d %H:%M:%S") in script  # the server's wall clock, not UTC
    assert rig.db.table_contents() == expected


async def test_an_invalid_date_is_ora_01843_not_a_traceback(tmp_path: Path) -> None:
    rig = _Rig(tmp_path)
    result = await _rman(
        rig,
        "RUN {\n  SET UNTIL TIME \"TO_DATE('2026-13-01 00:00:00','YYYY-MM-DD HH24:MI:SS')\";\n"
        "  RESTORE DATABASE PREVIEW;\n}\n",
    )
    assert result.exit_code == 1
    assert any(
        line.startswith("ORA-01843: not a valid month") for line in result.coded_lines + result.tail
    )
    assert not any("Traceback" in line for line in result.coded_lines + result.tail)


async def _rman(rig: _Rig, script: str) -> Any:
    from services.engines.oracle.runner import Tool, run_tool

    assert rig.hosted.oracle is not None
    return await run_tool(home_of(rig.hosted.oracle), Tool.RMAN, script)


async def test_the_autobackup_piece_has_no_tag_line_and_is_uploaded_and_restored_from(
    tmp_path: Path,
) -> None:
    rig = _Rig(tmp_path)
    for i in range(4):
        rig.db.insert(f"a{i}", thread=1 + i % 2)
    assert rig.hosted.oracle is not None
    manifest = await run_backup(
        home_of(rig.hosted.oracle),
        SimulatedViews(rig.db),
        uid="ora1",
        backup_id="b1",
        spec=BackupSpec(kind=BackupKind.FULL),
        level=0,
        channels=1,
        stage_root=tmp_path / "stage",
        store=rig.store,
        prefix="tm",
        ctx=_Ctx(),
        controlfile="autobackup",
    )
    controlfiles = [p for p in manifest.oracle.pieces if p.controlfile]
    assert [p.name[:2] for p in controlfiles] == ["c-"]
    assert controlfiles[0].tag is None

    for i in range(4):
        rig.db.insert(f"b{i}", thread=1 + i % 2)
    logs = rig.db.archive_log_current()
    until = min(x.next_scn for x in logs) - 1
    expected = rig.db.expected_contents(until)
    command = rig.command(
        TargetPosition(position=Scn(value=until)),
        manifest.backup.manifest_key,
        await rig.store_logs(),
    )
    await rig.restore(command)
    assert rig.db.table_contents() == expected
