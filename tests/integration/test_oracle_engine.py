"""`OracleEngine` end to end on the simulated Oracle toolchain and an in-memory store: a level 0
backup streamed piece by piece with its manifest, then an in-place restore from the store alone
to an SCN, landing on exactly the rows the ledger says."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest

from schemas import Engine, Incarnation, Scn
from schemas.messages import BackupSpec, RunRestore
from schemas.messages.backups import BackupKind
from schemas.messages.common import ProgressUnit
from schemas.messages.restores import RestoreMode, RestorePlan, TargetPosition
from services.blobstore import MemoryStore
from services.engines.oracle.backup import OracleManifest
from services.engines.oracle.engine import OracleEngine
from services.executor.settings import ExecutorSettings, HostedDatabase, OracleInstance
from tests.oracle_sim.db import SimulatedOracle
from tests.oracle_sim.tools import install
from tests.oracle_sim.views import SimulatedViews

pytestmark = [pytest.mark.oracle]


class _Ctx:
    def __init__(self) -> None:
        self.job_id = uuid.uuid4()
        self.phases: list[str] = []

    async def progress(
        self,
        phase: str,
        *,
        done: int | None = None,
        total: int | None = None,
        unit: ProgressUnit | None = None,
        message: str = "",
    ) -> None:
        self.phases.append(phase)


async def test_backup_to_store_and_restore_from_it(tmp_path: Path) -> None:
    db = SimulatedOracle.create(tmp_path / "sim")
    install(tmp_path / "home", tmp_path / "sim")
    hosted = HostedDatabase(
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
        ),
    )
    engine = OracleEngine(ExecutorSettings(), views=lambda _: SimulatedViews(db))
    store = MemoryStore()
    for i in range(6):
        db.insert(f"a{i}", thread=1 + i % 2)
    db.archive_log_current()

    outcome = await engine.backup(
        hosted,
        backup_id="b1",
        spec=BackupSpec(kind=BackupKind.FULL),
        store=store,
        prefix="tm",
        ctx=_Ctx(),
    )
    manifest = OracleManifest.model_validate_json(await store.get_bytes(outcome.manifest_key))
    assert manifest.backup.start < manifest.backup.consistent_at  # the USERS copy was fuzzy
    assert sum(p.controlfile for p in manifest.oracle.pieces) == 1
    assert not list((tmp_path / "stage").iterdir()), "no piece is left staged"

    for i in range(6):
        db.insert(f"b{i}", thread=1 + i % 2)
    logs = db.archive_log_current()
    log_keys = []
    for row in db.archived_logs():  # what the archiver would have stored
        key = f"tm/ora1/{row['resetlogs_id']}/logs/{row['thread#']}/{row['sequence#']}"
        await store.put_file(key, row["name"])
        log_keys.append(key)
    until = min(x.next_scn for x in logs) - 2
    rid = int(db.database()["resetlogs_id"])
    expected = db.expected_contents(until, rid)

    lineage = Incarnation(resetlogs_id=rid, resetlogs_scn=Scn(value=1))
    command = RunRestore(
        job_id=uuid.uuid4(),
        restore_id=uuid.uuid4(),
        target=TargetPosition(position=Scn(value=until)),
        mode=RestoreMode.IN_PLACE,
        plan=RestorePlan(
            base_backup_id="b1",
            base_manifest_key=outcome.manifest_key,
            log_keys=log_keys,
            lineage=lineage,
        ),
    )
    result = await engine.restore(hosted, command, store=store, prefix="tm", ctx=_Ctx())
    assert db.table_contents() == expected
    assert result.reached == Scn(value=until)
    assert isinstance(result.lineage, Incarnation)
    assert result.lineage.prior_resetlogs_id == rid

    verified = await engine.verify(
        hosted,
        backup_id="b1",
        manifest_key=outcome.manifest_key,
        store=store,
        prefix="tm",
        scratch_dir=str(tmp_path),
        ctx=_Ctx(),
    )
    assert verified.ok
