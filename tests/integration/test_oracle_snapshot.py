"""Storage-snapshot backups of Oracle (`BackupKind.SNAPSHOT`) through the real `kubernetes`
client against a fake Kubernetes API server (tests/doubles/k8s_api.py — not Kubernetes), on the
simulated Oracle toolchain (not Oracle): backup mode around the snapshots, the SCN range in a
catalog-valid manifest, cleanup when a snapshot fails, and a restore that provisions PVCs from
the snapshots and recovers with logs from the store to rows the ledger predicts."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from schemas import Incarnation, Scn
from schemas.messages import BackupSpec, RunRestore
from schemas.messages.backups import BackupKind
from schemas.messages.common import ProgressUnit
from schemas.messages.restores import RestoreMode, RestorePlan, TargetPosition
from services.blobstore import MemoryStore
from services.catalog.index import CatalogIndex
from services.catalog.rebuild import backup_from_manifest
from services.engines.base import EngineError
from services.engines.k8s import KubeApi
from services.engines.oracle.engine import OracleEngine
from services.engines.oracle.snapshot import OracleSnapshotManifest
from services.executor.settings import (
    ExecutorSettings,
    HostedDatabase,
    OracleInstance,
    OracleSnapshots,
)
from tests.doubles.catalog_events import ORA
from tests.doubles.k8s_api import FakeKubernetes, serve
from tests.oracle_sim.db import SimulatedOracle
from tests.oracle_sim.tools import install
from tests.oracle_sim.views import SimulatedViews

pytestmark = [pytest.mark.oracle]

NS = "erp"
DATA, REDO = "data-erp-0", "redo-erp-0"


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


@dataclass
class Rig:
    db: SimulatedOracle
    fake: FakeKubernetes
    engine: OracleEngine
    hosted: HostedDatabase
    store: MemoryStore
    in_backup_mode: list[bool]


@pytest.fixture
def rig(tmp_path: Path) -> Iterator[Rig]:
    db = SimulatedOracle.create(tmp_path / "sim")
    install(tmp_path / "home", tmp_path / "sim")
    seen: list[bool] = []

    def take(ns: str, pvc: str) -> Any:
        # The data volume holds the datafiles and control file; the redo volume is not modelled.
        seen.append(db.read().backup_mode is not None)
        return db.volume_image() if pvc == DATA else None

    def provision(pvc: dict[str, Any], image: Any) -> None:
        if image is not None:
            db.mount_volume_image(image)

    fake = FakeKubernetes(take=take, provision=provision, ready_after=3)
    fake.add_pvc(NS, DATA, "100Gi")
    fake.add_pvc(NS, REDO, "50Gi")
    fake.add_pod(NS, "erp-0", "node-a", {"app": "erp", "tier": "db"}, [DATA, REDO])
    fake.add_pvc(NS, "data-erp-1")
    fake.add_pod(NS, "erp-1", "node-b", {"app": "erp", "tier": "db"}, ["data-erp-1"])
    hosted = HostedDatabase(
        uid="ora1",
        engine="oracle",
        name="TMSIM",
        system_id=1234567890,
        oracle=OracleInstance(
            oracle_home=tmp_path / "home",
            oracle_sid="TMSIM",
            staging_dir=tmp_path / "stage",
            dsn="sim:1521/TMSIM",
            user="C##TIDEMARK",
            password_file=tmp_path / "never-read",
            snapshots=OracleSnapshots(
                namespace=NS,
                pod_selector="app=erp,tier=db",
                snapshot_class="csi-snapclass",
                node_name="node-a",
                poll_s=0.01,
            ),
        ),
    )
    with serve(fake) as api:
        engine = OracleEngine(
            ExecutorSettings(), views=lambda _: SimulatedViews(db), kube=lambda: KubeApi(api)
        )
        yield Rig(db, fake, engine, hosted, MemoryStore(), seen)


async def _backup(rig: Rig, backup_id: str = "snap-1") -> OracleSnapshotManifest:
    outcome = await rig.engine.backup(
        rig.hosted,
        backup_id=backup_id,
        spec=BackupSpec(kind=BackupKind.SNAPSHOT),
        store=rig.store,
        prefix="tm",
        ctx=_Ctx(),
    )
    raw = await rig.store.get_bytes(outcome.manifest_key)
    return OracleSnapshotManifest.model_validate_json(raw)


async def test_snapshot_backup_records_the_scn_range_in_a_catalog_valid_manifest(
    rig: Rig,
) -> None:
    for i in range(4):
        rig.db.insert(f"a{i}", thread=1 + i % 2)
    manifest = await _backup(rig)

    snap = manifest.snapshot
    assert (snap.pod, snap.node, snap.namespace) == ("erp-0", "node-a", NS)
    assert [v.pvc for v in snap.volumes] == [DATA, REDO]
    assert all(v.content and v.content.startswith("snapcontent-") for v in snap.volumes)
    assert [v.restore_size for v in snap.volumes] == ["100Gi", "50Gi"]
    assert rig.in_backup_mode == [True, True], "every snapshot was taken in backup mode"
    state = rig.db.read()
    assert state.backup_mode is None, "END BACKUP ran"
    ((begun, ended),) = state.backup_mode_ends.items()
    # S_B at or before the frozen checkpoint; M_B past END BACKUP and the log switch.
    assert snap.begin_scn <= begun < ended < snap.end_scn
    image = rig.fake.snapshot_data[f"{NS}/{snap.volumes[0].snapshot}"]
    assert set(image["checkpoint_scn"].values()) == {begun}
    assert manifest.backup.start == Scn(value=snap.begin_scn)
    assert manifest.backup.consistent_at == Scn(value=snap.end_scn)
    assert manifest.backup.spec.kind is BackupKind.SNAPSHOT
    assert max(x["next_change#"] for x in rig.db.archived_logs()) > ended, "END BACKUP archived"
    assert rig.db.runs() == [], "no RMAN run: the storage copied the files"
    assert ("GET", f"/api/v1/namespaces/{NS}/pods") in rig.fake.calls

    raw = await rig.store.get_bytes(manifest.backup.manifest_key)
    completed = backup_from_manifest(raw, manifest.backup.manifest_key, "snap-1")
    assert completed == manifest.backup
    assert CatalogIndex().apply_backup(ORA, completed)

    verified = await rig.engine.verify(
        rig.hosted,
        backup_id="snap-1",
        manifest_key=manifest.backup.manifest_key,
        store=rig.store,
        prefix="tm",
        scratch_dir="/nonexistent",
        ctx=_Ctx(),
    )
    assert verified.ok, verified.checks


@pytest.mark.parametrize(
    ("break_it", "code", "retryable"),
    [
        (lambda fake: fake.fail.add(REDO), "TM-ORA-042", True),
        (lambda fake: fake.refuse.__setitem__(REDO, 403), "TM-ORA-044", False),
    ],
    ids=["snapshot-error", "create-refused"],
)
async def test_a_failed_snapshot_ends_backup_mode_and_deletes_what_was_made(
    rig: Rig, break_it: Any, code: str, retryable: bool
) -> None:
    break_it(rig.fake)
    with pytest.raises(EngineError) as caught:
        await _backup(rig)
    assert (caught.value.failure.code, caught.value.failure.retryable) == (code, retryable)
    state = rig.db.read()
    assert state.backup_mode is None, "END BACKUP ran"
    assert len(state.backup_mode_ends) == 1
    assert rig.fake.snapshots == {}, "no snapshot is left behind"
    assert len(rig.fake.deleted) == (2 if code == "TM-ORA-042" else 1)
    assert [key async for key in rig.store.list("tm/")] == [], "no manifest"


async def test_begin_backup_refused_makes_no_snapshot(rig: Rig) -> None:
    rig.db.execute("ALTER DATABASE BEGIN BACKUP")  # someone else's backup mode
    with pytest.raises(EngineError) as caught:
        await _backup(rig)
    assert caught.value.failure.code == "ORA-01146"
    assert rig.fake.snapshots == {}
    assert not any(m == "POST" for m, _ in rig.fake.calls)
    assert rig.db.read().backup_mode is not None, "the other backup mode is not ended by us"


async def test_restore_provisions_pvcs_from_the_snapshots_and_recovers_with_logs(
    rig: Rig,
) -> None:
    for i in range(4):
        rig.db.insert(f"a{i}", thread=1 + i % 2)
    manifest = await _backup(rig)
    for i in range(6):
        rig.db.insert(f"b{i}", thread=1 + i % 2)
    logs = rig.db.archive_log_current()
    for i in range(3):
        rig.db.insert(f"lost{i}")  # after the target: gone after the restore
    log_keys = await _store_logs(rig)
    until = min(x.next_scn for x in logs) - 2
    assert until > manifest.snapshot.end_scn
    rid = int(rig.db.database()["resetlogs_id"])
    expected = rig.db.expected_contents(until, rid)
    assert "b0" in expected.values()
    assert "a0" in expected.values()

    command = RunRestore(
        job_id=uuid.uuid4(),
        restore_id=uuid.uuid4(),
        target=TargetPosition(position=Scn(value=until)),
        mode=RestoreMode.IN_PLACE,
        plan=RestorePlan(
            base_backup_id="snap-1",
            base_manifest_key=manifest.backup.manifest_key,
            log_keys=log_keys,
            lineage=Incarnation(resetlogs_id=rid, resetlogs_scn=Scn(value=1)),
        ),
    )
    result = await rig.engine.restore(rig.hosted, command, store=rig.store, prefix="tm", ctx=_Ctx())

    made = [p for p in rig.fake.pvcs.values() if "dataSource" in p["spec"]]
    assert sorted(p["spec"]["dataSource"]["name"] for p in made) == sorted(
        v.snapshot for v in manifest.snapshot.volumes
    )
    for pvc in made:
        assert pvc["spec"]["dataSource"]["kind"] == "VolumeSnapshot"
        assert pvc["spec"]["dataSource"]["apiGroup"] == "snapshot.storage.k8s.io"
        assert pvc["spec"]["storageClassName"] == "csi-fast"
    assert rig.db.table_contents() == expected
    assert result.reached == Scn(value=until)
    assert isinstance(result.lineage, Incarnation)
    assert result.lineage.prior_resetlogs_id == rid
    (script,) = rig.db.runs()
    assert "STARTUP FORCE MOUNT;" in script
    assert "RESTORE" not in script, "the datafiles came from the snapshot, not from RMAN"
    assert f"SET UNTIL SCN {until};" in script


async def test_recovery_that_stops_before_end_backup_cannot_open(rig: Rig) -> None:
    rig.db.insert("a0")
    manifest = await _backup(rig)
    log_keys = await _store_logs(rig)
    rid = int(rig.db.database()["resetlogs_id"])
    # UNTIL is exclusive: stopping at END BACKUP's SCN leaves the files in backup mode.
    (end_backup,) = rig.db.read().backup_mode_ends.values()
    command = RunRestore(
        job_id=uuid.uuid4(),
        restore_id=uuid.uuid4(),
        target=TargetPosition(position=Scn(value=end_backup)),
        mode=RestoreMode.IN_PLACE,
        plan=RestorePlan(
            base_backup_id="snap-1",
            base_manifest_key=manifest.backup.manifest_key,
            log_keys=log_keys,
            lineage=Incarnation(resetlogs_id=rid, resetlogs_scn=Scn(value=1)),
        ),
    )
    with pytest.raises(EngineError) as caught:
        await rig.engine.restore(rig.hosted, command, store=rig.store, prefix="tm", ctx=_Ctx())
    # ORA-01547 over ORA-01194: the files need more recovery; the database stays mounted.
    assert caught.value.failure.code in ("ORA-01547", "ORA-01194")
    assert rig.db.read().open_mode == "MOUNTED"


async def _store_logs(rig: Rig) -> list[str]:
    """Every archived log, stored as the archiver would have; their keys."""
    keys = []
    for row in rig.db.archived_logs():
        key = f"tm/ora1/{row['resetlogs_id']}/logs/{row['thread#']}/{row['sequence#']}"
        await rig.store.put_file(key, row["name"])
        keys.append(key)
    return keys


def _verb(method: str, path: str) -> tuple[str, str, str]:
    """(apiGroup, resource, verb) of one request the fake API saw."""
    parts = path.strip("/").split("/")
    group = "" if parts[0] == "api" else parts[1]
    rest = parts[parts.index("namespaces") + 2 :]
    named = len(rest) > 1
    verb = {"GET": "get" if named else "list", "POST": "create", "DELETE": "delete"}[method]
    return group, rest[0], verb


async def test_every_call_is_granted_by_the_charts_executor_role(rig: Rig) -> None:
    from tests.integration.test_helm_chart import EXTERNAL, of_kind, render

    rig.db.insert("a0")
    manifest = await _backup(rig)
    rig.fake.fail.add(REDO)
    with pytest.raises(EngineError):
        await _backup(rig, "snap-2")  # the cleanup path: DELETE
    rig.db.archive_log_current()  # the redo past M_B, which the target needs
    log_keys = await _store_logs(rig)
    rid = int(rig.db.database()["resetlogs_id"])
    command = RunRestore(
        job_id=uuid.uuid4(),
        restore_id=uuid.uuid4(),
        target=TargetPosition(position=Scn(value=manifest.snapshot.end_scn + 1)),
        mode=RestoreMode.IN_PLACE,
        plan=RestorePlan(
            base_backup_id="snap-1",
            base_manifest_key=manifest.backup.manifest_key,
            log_keys=log_keys,
            lineage=Incarnation(resetlogs_id=rid, resetlogs_scn=Scn(value=1)),
        ),
    )
    await rig.engine.restore(rig.hosted, command, store=rig.store, prefix="tm", ctx=_Ctx())
    used = {_verb(m, p) for m, p in rig.fake.calls}
    (role,) = of_kind(render(EXTERNAL), "Role")
    granted = {
        (group, resource, verb)
        for rule in role["rules"]
        for group in rule["apiGroups"]
        for resource in rule["resources"]
        for verb in rule["verbs"]
    }
    assert used <= granted, used - granted
    assert ("snapshot.storage.k8s.io", "volumesnapshots", "delete") in used
    assert ("", "persistentvolumeclaims", "create") in used
