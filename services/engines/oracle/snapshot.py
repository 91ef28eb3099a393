"""Storage-snapshot backups of an Oracle database in a Kubernetes pod, and restores from them.

A backup (`take_snapshot_backup`):

1. finds the database's pod on this node through the API (the label selector of the database's
   `[oracle.snapshots]` section, `spec.nodeName` = this node) and the PVCs it mounts;
2. reads the current SCN, then `ALTER DATABASE BEGIN BACKUP`: from here every datafile header
   keeps its checkpoint while blocks go on changing, so a copy of the files taken now is a
   valid base from that checkpoint on, which a crash-consistent copy of several volumes is
   not (El Carro snapshots without it and records no SCN: reference/elcarro.md §4);
3. creates one VolumeSnapshot per PVC (`snapshot.storage.k8s.io/v1`, the configured class) and
   waits until each reports `status.readyToUse`;
4. `ALTER DATABASE END BACKUP` — always, in a `finally`: a database left in backup mode writes
   whole blocks to redo on every first change and cannot be shut down normally;
5. `ALTER SYSTEM ARCHIVE LOG CURRENT`, so the redo holding END BACKUP is archived (and reaches
   the store through the archiver) before the backup is called complete; then reads the SCN;
6. writes the manifest (`tidemark.oracle-snapshot/1`): the `backup.completed` payload under
   "backup" and the snapshots (names, source PVCs, bound contents, sizes) under "snapshot".

`start` (S_B) is the SCN read before BEGIN BACKUP: at or before every datafile's frozen
checkpoint, so redo from there covers them (conservative by the few SCNs between the read and
the statement). `consistent_at` (M_B) is the SCN read after END BACKUP and the switch: a file
copied in backup mode is consistent only once recovery has passed END BACKUP, so a restore
must recover beyond it. With both, a snapshot is a PITR base in the catalog like an RMAN one.

Any failure after BEGIN BACKUP ends backup mode and deletes the snapshots already created:
half a set of volumes is not a backup, and a snapshot nobody records is storage nobody frees.

A restore (`restore_from_snapshots`) creates one PVC per snapshot with the snapshot as its
`dataSource`, stages the plan's logs from the store, and runs `SnapshotRecoverScript`:
`STARTUP FORCE MOUNT`, `CATALOG START WITH` the logs, `SET UNTIL`, `RECOVER DATABASE`, `OPEN
RESETLOGS` — the recover step of an RMAN restore without its `RESTORE`, since the datafiles
are already in place. Putting the new PVCs under the database's pod (its StatefulSet or
operator) is not done here: the engine expects the pod to mount them when RMAN runs.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import re
import shutil
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final, Literal, Protocol, runtime_checkable

from pydantic import Field

from schemas import Incarnation, Scn, StrictModel
from schemas.messages import BackupCompleted, BackupSpec, RestoreResult, RunRestore
from services.blobstore import BlobStore
from services.engines.base import EngineError, JobContext
from services.engines.k8s import SNAPSHOT_GROUP, KubeApi, KubeError
from services.engines.oracle.backup import (
    IncarnationEntry,
    OracleViews,
    backup_prefix,
    make_stage,
    put_manifest,
)
from services.engines.oracle.restore import stage_logs, until_for
from services.engines.oracle.runner import OracleHome, Tool, run_tool
from services.engines.oracle.scripts import SnapshotRecoverScript
from services.engines.settings import OracleSnapshots

__all__ = [
    "ARCHIVE_LOG_CURRENT",
    "BEGIN_BACKUP",
    "END_BACKUP",
    "SNAPSHOT_FORMAT",
    "OracleSnapshotManifest",
    "Statements",
    "is_snapshot_manifest",
    "restore_from_snapshots",
    "take_snapshot_backup",
]

log = logging.getLogger("tidemark.engines.oracle.snapshot")

SNAPSHOT_FORMAT: Final = "tidemark.oracle-snapshot/1"
BEGIN_BACKUP: Final = "ALTER DATABASE BEGIN BACKUP"
END_BACKUP: Final = "ALTER DATABASE END BACKUP"
ARCHIVE_LOG_CURRENT: Final = "ALTER SYSTEM ARCHIVE LOG CURRENT"
MANAGED_BY: Final = {"app.kubernetes.io/managed-by": "tidemark"}


@runtime_checkable
class Statements(Protocol):
    """Runs one of the fixed statements above through the database's session (SessionViews
    over python-oracledb, or the simulator's views); raises `EngineError` when it fails."""

    async def execute(self, sql: str) -> None: ...


class SnapshotVolume(StrictModel):
    pvc: str = Field(description="the source PVC")
    snapshot: str = Field(description="the VolumeSnapshot's name")
    content: str | None = Field(description="status.boundVolumeSnapshotContentName")
    restore_size: str | None = Field(description="status.restoreSize")
    storage: str = Field(description="the source PVC's requested storage")
    storage_class: str | None
    access_modes: list[str]
    volume_mode: str | None = None


class OracleSnapshotBackup(StrictModel):
    """What a restore needs beyond the `backup.completed` payload."""

    dbid: int
    namespace: str
    pod: str
    node: str
    snapshot_class: str
    begin_scn: int = Field(description="read before BEGIN BACKUP: S_B")
    end_scn: int = Field(description="read after END BACKUP and the log switch: M_B")
    volumes: list[SnapshotVolume]
    incarnations: list[IncarnationEntry]


class OracleSnapshotManifest(StrictModel):
    format: Literal["tidemark.oracle-snapshot/1"] = SNAPSHOT_FORMAT
    backup: BackupCompleted
    snapshot: OracleSnapshotBackup


def is_snapshot_manifest(raw: bytes) -> bool:
    """Whether a manifest's bytes are a snapshot backup's (else an RMAN backup's)."""
    try:
        doc = json.loads(raw)
    except ValueError:
        return False
    return isinstance(doc, dict) and doc.get("format") == SNAPSHOT_FORMAT


_NOT_NAME = re.compile(r"[^a-z0-9-]+")


def object_name(*parts: str) -> str:
    """A DNS-subdomain object name from free parts (a backup id may hold any character): the
    parts lower-cased and dashed, cut short, and a hash of the untouched parts so two ids that
    read the same after cleaning still give two names."""
    readable = _NOT_NAME.sub("-", "-".join(parts).lower()).strip("-")[:200].rstrip("-")
    digest = hashlib.sha256("\0".join(parts).encode()).hexdigest()[:10]
    return f"{readable}-{digest}" if readable else f"tm-{digest}"


def _kube_failure(exc: KubeError) -> EngineError:
    return EngineError.of(f"Kubernetes API: {exc}", code="TM-ORA-044", retryable=exc.retryable)


async def _kube(call: Awaitable[Any]) -> Any:
    try:
        return await call
    except KubeError as exc:
        raise _kube_failure(exc) from None


async def find_database_pod(
    kube: KubeApi, cfg: OracleSnapshots, node: str
) -> tuple[str, list[str]]:
    """The one pod of the selector on `node`, and the PVCs it mounts (in its spec's order)."""
    pods = await _kube(kube.pods_on_node(cfg.namespace, cfg.pod_selector, node))
    if len(pods) != 1:
        names = ", ".join(p["metadata"]["name"] for p in pods) or "none"
        raise EngineError.of(
            f"{len(pods)} pods match {cfg.pod_selector!r} in {cfg.namespace} on node {node} "
            f"({names}); a snapshot backup needs exactly one",
            code="TM-ORA-040",
        )
    pod = pods[0]
    claims = [
        v["persistentVolumeClaim"]["claimName"]
        for v in pod.get("spec", {}).get("volumes", [])
        if v.get("persistentVolumeClaim")
    ]
    if not claims:
        raise EngineError.of(
            f"pod {pod['metadata']['name']} mounts no PVC: nothing to snapshot",
            code="TM-ORA-041",
        )
    return pod["metadata"]["name"], claims


@dataclass
class SnapshotJob:
    """One backup's inputs (module docstring)."""

    kube: KubeApi
    views: OracleViews
    sql: Statements
    cfg: OracleSnapshots
    node: str
    uid: str
    backup_id: str
    spec: BackupSpec
    store: BlobStore
    prefix: str
    stage_root: Path
    ctx: JobContext
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep


async def take_snapshot_backup(job: SnapshotJob) -> OracleSnapshotManifest:
    started_at = datetime.now(UTC)
    ns = job.cfg.namespace
    pod, claims = await find_database_pod(job.kube, job.cfg, job.node)
    pvcs = [await _kube(job.kube.get_pvc(ns, claim)) for claim in claims]
    begin = await job.views.current_scn()
    await job.ctx.progress("backup-mode", message=BEGIN_BACKUP)
    await job.sql.execute(BEGIN_BACKUP)
    made: list[str] = []
    try:
        try:
            for pvc in pvcs:
                made.append(await _create_snapshot(job, pod, pvc))
            volumes = [
                await _wait_ready(job, name, pvc, n, len(made))
                for n, (name, pvc) in enumerate(zip(made, pvcs, strict=True), 1)
            ]
        finally:
            await job.sql.execute(END_BACKUP)
        await job.sql.execute(ARCHIVE_LOG_CURRENT)
        end = await job.views.current_scn()
        manifest = await _manifest(job, pod, volumes, begin, end, started_at)
        await asyncio.to_thread(job.stage_root.mkdir, parents=True, exist_ok=True)
        await put_manifest(job.store, manifest.backup.manifest_key, manifest, job.stage_root)
    except BaseException:
        await _forget(job.kube, ns, made)
        raise
    return manifest


async def _create_snapshot(job: SnapshotJob, pod: str, pvc: dict[str, Any]) -> str:
    claim = pvc["metadata"]["name"]
    name = object_name("tm", job.backup_id, claim)
    body = {
        "apiVersion": f"{SNAPSHOT_GROUP}/v1",
        "kind": "VolumeSnapshot",
        "metadata": {
            "name": name,
            "namespace": job.cfg.namespace,
            "labels": dict(MANAGED_BY),
            "annotations": {
                "tidemark.io/database": job.uid,
                "tidemark.io/backup": job.backup_id,
                "tidemark.io/pod": pod,
            },
        },
        "spec": {
            "volumeSnapshotClassName": job.cfg.snapshot_class,
            "source": {"persistentVolumeClaimName": claim},
        },
    }
    await _kube(job.kube.create_snapshot(job.cfg.namespace, body))
    await job.ctx.progress("snapshot", message=f"VolumeSnapshot {name} of {claim}")
    return name


async def _wait_ready(
    job: SnapshotJob, name: str, pvc: dict[str, Any], n: int, total: int
) -> SnapshotVolume:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + job.cfg.ready_timeout_s
    while True:
        found = await _kube(job.kube.get_snapshot(job.cfg.namespace, name))
        status = found.get("status") or {}
        if status.get("readyToUse") is True:
            break
        error = status.get("error") or {}
        if error:
            # The snapshot controller may retry on its own, but backup mode cannot wait on it.
            raise EngineError.of(
                f"VolumeSnapshot {name}: {error.get('message') or 'failed'}",
                code="TM-ORA-042",
                retryable=True,
            )
        if loop.time() >= deadline:
            raise EngineError.of(
                f"VolumeSnapshot {name} not readyToUse after {job.cfg.ready_timeout_s:.0f}s",
                code="TM-ORA-043",
                retryable=True,
            )
        await job.ctx.progress("snapshot", done=n - 1, total=total, message=f"waiting for {name}")
        await job.sleep(job.cfg.poll_s)
    spec = pvc.get("spec") or {}
    return SnapshotVolume(
        pvc=pvc["metadata"]["name"],
        snapshot=name,
        content=status.get("boundVolumeSnapshotContentName"),
        restore_size=None if status.get("restoreSize") is None else str(status["restoreSize"]),
        storage=str(spec["resources"]["requests"]["storage"]),
        storage_class=spec.get("storageClassName"),
        access_modes=list(spec.get("accessModes") or ["ReadWriteOnce"]),
        volume_mode=spec.get("volumeMode"),
    )


async def _manifest(
    job: SnapshotJob,
    pod: str,
    volumes: list[SnapshotVolume],
    begin: int,
    end: int,
    started_at: datetime,
) -> OracleSnapshotManifest:
    incarnations = await job.views.incarnations()
    current = next(i for i in incarnations if i.status == "CURRENT")
    lineage = Incarnation(
        resetlogs_id=current.resetlogs_id,
        resetlogs_scn=Scn(value=current.resetlogs_scn),
        number=current.incarnation,
        prior_resetlogs_id=next(
            (i.resetlogs_id for i in incarnations if i.incarnation == current.prior), None
        ),
    )
    key_prefix = backup_prefix(job.prefix, job.uid, job.backup_id)
    completed = BackupCompleted(
        backup_id=job.backup_id,
        job_id=job.ctx.job_id,
        spec=job.spec,
        lineage=lineage,
        start=Scn(value=begin),
        consistent_at=Scn(value=end),
        started_at=started_at,
        completed_at=max(datetime.now(UTC), started_at),
        size_bytes=0,  # the storage system's, not ours: nothing was written to the store
        piece_count=len(volumes),
        manifest_key=key_prefix + "manifest.json",
    )
    return OracleSnapshotManifest(
        backup=completed,
        snapshot=OracleSnapshotBackup(
            dbid=await job.views.dbid(),
            namespace=job.cfg.namespace,
            pod=pod,
            node=job.node,
            snapshot_class=job.cfg.snapshot_class,
            begin_scn=begin,
            end_scn=end,
            volumes=volumes,
            incarnations=[
                IncarnationEntry(
                    number=i.incarnation,
                    resetlogs_scn=i.resetlogs_scn,
                    resetlogs_id=i.resetlogs_id,
                    prior=i.prior,
                    status=i.status,
                )
                for i in incarnations
            ],
        ),
    )


async def _forget(kube: KubeApi, namespace: str, names: list[str]) -> None:
    """Delete the snapshots of a failed backup; each failure is logged, none stops the rest
    (the backup's own error is the one the job reports)."""
    for name in names:
        try:
            await kube.delete_snapshot(namespace, name)
        except KubeError as exc:
            log.error("VolumeSnapshot %s/%s of a failed backup is left: %s", namespace, name, exc)


async def delete_snapshots(kube: KubeApi, manifest: OracleSnapshotManifest) -> None:
    for volume in manifest.snapshot.volumes:
        await _kube(kube.delete_snapshot(manifest.snapshot.namespace, volume.snapshot))


def restored_pvc(
    manifest: OracleSnapshotManifest, volume: SnapshotVolume, restore_id: str
) -> dict[str, Any]:
    """A new PVC holding `volume`'s snapshot, shaped like its source."""
    spec: dict[str, Any] = {
        "accessModes": volume.access_modes,
        "resources": {"requests": {"storage": volume.restore_size or volume.storage}},
        "dataSource": {
            "apiGroup": SNAPSHOT_GROUP,
            "kind": "VolumeSnapshot",
            "name": volume.snapshot,
        },
    }
    if volume.storage_class is not None:
        spec["storageClassName"] = volume.storage_class
    if volume.volume_mode is not None:
        spec["volumeMode"] = volume.volume_mode
    return {
        "apiVersion": "v1",
        "kind": "PersistentVolumeClaim",
        "metadata": {
            "name": object_name(volume.pvc, "r", restore_id[:8]),
            "namespace": manifest.snapshot.namespace,
            "labels": dict(MANAGED_BY),
            "annotations": {
                "tidemark.io/restore": restore_id,
                "tidemark.io/backup": manifest.backup.backup_id,
                "tidemark.io/source-pvc": volume.pvc,
            },
        },
        "spec": spec,
    }


async def restore_from_snapshots(
    home: OracleHome,
    kube: KubeApi,
    views: OracleViews,
    command: RunRestore,
    manifest: OracleSnapshotManifest,
    *,
    store: BlobStore,
    stage_root: Path,
    ctx: JobContext,
    time_zone: str = "UTC",
) -> RestoreResult:
    lineage = command.plan.lineage
    if not isinstance(lineage, Incarnation):
        raise EngineError.of("an Oracle restore plan must name an incarnation", code="TM-ORA-023")
    base = manifest.backup.lineage
    if not isinstance(base, Incarnation) or base.resetlogs_id != lineage.resetlogs_id:
        # The snapshot's control file is a current one: it recovers along its own incarnation.
        raise EngineError.of(
            "a snapshot base recovers only on the incarnation it was taken on "
            f"({getattr(base, 'resetlogs_id', '?')}), not {lineage.resetlogs_id}",
            code="TM-ORA-022",
        )
    until = until_for(command, lambda: manifest.snapshot.end_scn, time_zone=time_zone)
    restore_id = str(command.restore_id)
    for n, volume in enumerate(manifest.snapshot.volumes, 1):
        body = restored_pvc(manifest, volume, restore_id)
        await _kube(kube.create_pvc(manifest.snapshot.namespace, body))
        await ctx.progress(
            "provision",
            done=n,
            total=len(manifest.snapshot.volumes),
            message=f"PVC {body['metadata']['name']} from {volume.snapshot}",
        )
    stage = await asyncio.to_thread(make_stage, stage_root, "snaprestore-")
    try:
        await stage_logs(store, command.plan.log_keys, stage, ctx)
        script = SnapshotRecoverScript(
            command_id=str(ctx.job_id), stage_dir=str(stage), until=until
        )
        await ctx.progress("recover", message=f"RMAN {until.clause()}")
        result = await run_tool(home, Tool.RMAN, script.render())
        result.raise_for_failure("RMAN recover")
    finally:
        await asyncio.to_thread(shutil.rmtree, stage, True)
    incs = await views.incarnations()
    new = next(i for i in incs if i.status == "CURRENT")
    prior = next((i.resetlogs_id for i in incs if i.incarnation == new.prior), None)
    return RestoreResult(
        reached=Scn(value=new.resetlogs_scn),
        lineage=Incarnation(
            resetlogs_id=new.resetlogs_id,
            resetlogs_scn=Scn(value=new.resetlogs_scn),
            number=new.incarnation,
            prior_resetlogs_id=prior,
        ),
    )
