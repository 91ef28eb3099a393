"""`OracleEngine`: the executor's Oracle driver (the `Engine` Protocol of `engines/base.py`).

Tools run through `runner.py` with scripts from `scripts.py`; what the engine reads from the
database (DBID, incarnations, V$BACKUP_DATAFILE) comes through an `OracleViews`.

Where each database's Oracle lives (home, SID, staging directory) and how its session connects
is the database's `[executor.databases.oracle]` section (`OracleInstance`). The views are the
python-oracledb session's (`SessionViews` over `OracleDbSession`), one per database, connected
on first use. `views=` is the seam for tests: the simulated Oracle toolchain's views are handed
in there, exactly as the archiver takes a `source_factory`; nothing is patched. `datapump_sql=`
is the same seam for the SQL of migration steps (`migration_steps.py`, the `datapump` method).

**Retries.** A backup whose RMAN run fails with a retryable stack (ORA-19511 media manager,
ORA-03113, ...; `errors.py` decides) is run again inside the same job, up to `backup_attempts`
runs, waiting `retry_base_s`, then twice that, ... between them; the pieces a failed run had
already uploaded are deleted first. A fatal stack (ORA-01017, a syntax error, an unknown code)
fails the job at once. This is the only place a backup is retried: the planner does not re-send
failed backups, and a job that ran out of attempts fails with `retryable=true` for whoever
decides next (a person, the next scheduled backup). Restores are not retried here: a restore
stopped halfway has changed the database, and repeating it is the planner's decision.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
from collections.abc import Callable
from typing import Literal

from schemas import Incarnation, Scn
from schemas.messages import (
    BackupCompleted,
    BackupSpec,
    MigrationMethod,
    MigrationStep,
    MigrationStepResult,
    RestoreResult,
    RunRestore,
    VerifyResult,
)
from schemas.messages.backups import BackupKind
from services.blobstore import BlobStore
from services.engines.base import BackupOutcome, Description, EngineError, JobContext
from services.engines.k8s import KubeApi, KubeError
from services.engines.oracle import migration_steps, rman_migration
from services.engines.oracle.backup import (
    OracleManifest,
    OracleViews,
    backup_prefix,
    run_backup,
)
from services.engines.oracle.datapump import DataPumpSql
from services.engines.oracle.restore import run_restore
from services.engines.oracle.runner import OracleHome
from services.engines.oracle.session import OracleDbSession
from services.engines.oracle.snapshot import (
    OracleSnapshotManifest,
    SnapshotJob,
    Statements,
    is_snapshot_manifest,
    restore_from_snapshots,
    take_snapshot_backup,
)
from services.engines.oracle.views import SessionViews
from services.engines.settings import EngineSettings, HostedDatabase, OracleInstance

log = logging.getLogger("tidemark.engines.oracle")

ViewsFactory = Callable[[HostedDatabase], OracleViews]
"""Builds the views of one database (called once per database)."""

KubeFactory = Callable[[], KubeApi]
"""Builds the Kubernetes API client of storage-snapshot backups (called once, when needed)."""

RETRY_MAX_S = 600.0
"""The longest wait between two runs of a backup."""


def session_views(db: HostedDatabase) -> OracleViews:
    """The real views: python-oracledb, as the database's oracle section says."""
    return SessionViews(OracleDbSession(instance_of(db)))


def session_sql(db: HostedDatabase) -> DataPumpSql:
    """The real SQL of migration steps: python-oracledb, as the database's oracle section says."""
    return OracleDbSession(instance_of(db))


def instance_of(db: HostedDatabase) -> OracleInstance:
    if db.oracle is None:  # the settings refuse this; a hand-built HostedDatabase may not
        raise EngineError.of(f"{db.uid} has no [oracle] section", code="TM-ORA-030")
    return db.oracle


def home_of(instance: OracleInstance) -> OracleHome:
    return OracleHome(
        oracle_home=instance.oracle_home, sid=instance.oracle_sid, time_zone=instance.time_zone
    )


class OracleEngine:
    """The Oracle engine driver (module docstring)."""

    def __init__(
        self,
        settings: EngineSettings,
        *,
        views: ViewsFactory | None = None,
        kube: KubeFactory | None = None,
        node: str | None = None,
        datapump_sql: migration_steps.SqlFactory | None = None,
    ) -> None:
        self.settings = settings
        self._make_views = views or session_views
        self._views: dict[str, OracleViews] = {}
        self._make_sql = datapump_sql or session_sql
        self._sql: dict[str, DataPumpSql] = {}
        self._make_kube = kube or KubeApi.in_cluster
        self._kube: KubeApi | None = None
        self._node = node

    def _kube_api(self) -> KubeApi:
        if self._kube is None:
            self._kube = self._make_kube()
        return self._kube

    def _node_name(self, db: HostedDatabase) -> str:
        cfg = instance_of(db).snapshots
        if cfg is not None and cfg.node_name:
            return cfg.node_name
        return self._node or os.environ.get("TIDEMARK_NODE") or socket.gethostname()

    def _session(self, db: HostedDatabase) -> OracleViews:
        found = self._views.get(db.uid)
        if found is None:
            found = self._views[db.uid] = self._make_views(db)
        return found

    def _migration_sql(self, db: HostedDatabase) -> DataPumpSql:
        found = self._sql.get(db.uid)
        if found is None:
            found = self._sql[db.uid] = self._make_sql(db)
        return found

    async def migration_step(
        self,
        db: HostedDatabase,
        command: MigrationStep,
        *,
        store: BlobStore,
        prefix: str,
        ctx: JobContext,
    ) -> MigrationStepResult:
        """One step of an Oracle migration method (`migration_steps.py`: `datapump`,
        `dataguard`; `rman_migration.py`: `rman`)."""
        if command.method is MigrationMethod.RMAN:
            return await rman_migration.run_step(
                self.settings,
                db,
                command,
                store=store,
                prefix=prefix,
                sql_of=self._migration_sql,
                ctx=ctx,
            )
        return await migration_steps.run_step(
            self.settings, db, command, store=store, prefix=prefix, sql_of=self._migration_sql
        )

    async def describe(self, db: HostedDatabase) -> Description:
        views = self._session(db)
        incs = await views.incarnations()
        current = next(i for i in incs if i.status == "CURRENT")
        return Description(
            system_id=await views.dbid(),
            version="19c",
            lineage=Incarnation(
                resetlogs_id=current.resetlogs_id,
                resetlogs_scn=Scn(value=current.resetlogs_scn),
                number=current.incarnation,
            ),
            position=Scn(value=await views.current_scn()),
        )

    async def setup_archiving(self, db: HostedDatabase, store: BlobStore, prefix: str) -> None:
        # ARCn archives on its own; the archiver reads V$ARCHIVED_LOG. Only the DBID check
        # belongs here: the configured system id must be the database the session reaches.
        dbid = await self._session(db).dbid()
        if db.system_id is not None and db.system_id != dbid:
            raise EngineError.of(
                f"{db.uid} is configured with DBID {db.system_id}, its session reaches {dbid}",
                code="TM-ORA-032",
            )

    async def backup(
        self,
        db: HostedDatabase,
        *,
        backup_id: str,
        spec: BackupSpec,
        store: BlobStore,
        prefix: str,
        ctx: JobContext,
    ) -> BackupOutcome:
        instance = instance_of(db)
        level: Literal[0, 1]
        if spec.kind is BackupKind.FULL:
            level = 0
        elif spec.kind is BackupKind.INCREMENTAL:
            level = 1
        else:
            return await self._snapshot_backup(db, backup_id, spec, store, prefix, ctx)
        attempt = 1
        while True:
            try:
                manifest = await run_backup(
                    home_of(instance),
                    self._session(db),
                    uid=db.uid,
                    backup_id=backup_id,
                    spec=spec,
                    level=level,
                    channels=instance.channels,
                    stage_root=instance.staging_dir,
                    store=store,
                    prefix=prefix,
                    ctx=ctx,
                )
                break
            except EngineError as exc:
                if not exc.failure.retryable or attempt >= instance.backup_attempts:
                    raise
                delay = min(instance.retry_base_s * 2 ** (attempt - 1), RETRY_MAX_S)
                log.warning(
                    "backup %s of %s: run %d of %d failed (%s); again in %.1fs",
                    backup_id,
                    db.uid,
                    attempt,
                    instance.backup_attempts,
                    exc.failure.code,
                    delay,
                )
                await ctx.progress(
                    "retry", message=f"run {attempt} failed ({exc.failure.code}); retrying"
                )
                await _forget_run(store, backup_prefix(prefix, db.uid, backup_id))
                await asyncio.sleep(delay)
                attempt += 1
        return _outcome(backup_id, manifest.backup)

    async def _snapshot_backup(
        self,
        db: HostedDatabase,
        backup_id: str,
        spec: BackupSpec,
        store: BlobStore,
        prefix: str,
        ctx: JobContext,
    ) -> BackupOutcome:
        instance = instance_of(db)
        if instance.snapshots is None:
            raise EngineError.of(
                f"{db.uid} has no [oracle.snapshots] section: snapshot backups need one",
                code="TM-ORA-033",
            )
        views = self._session(db)
        if not isinstance(views, Statements):
            raise EngineError.of(
                f"{db.uid}: the session cannot run ALTER DATABASE BEGIN/END BACKUP",
                code="TM-ORA-046",
            )
        manifest = await take_snapshot_backup(
            SnapshotJob(
                kube=self._kube_api(),
                views=views,
                sql=views,
                cfg=instance.snapshots,
                node=self._node_name(db),
                uid=db.uid,
                backup_id=backup_id,
                spec=spec,
                store=store,
                prefix=prefix,
                stage_root=instance.staging_dir,
                ctx=ctx,
            )
        )
        return _outcome(backup_id, manifest.backup)

    async def restore(
        self,
        db: HostedDatabase,
        command: RunRestore,
        *,
        store: BlobStore,
        prefix: str,
        ctx: JobContext,
    ) -> RestoreResult:
        instance = instance_of(db)
        raw = await store.get_bytes(command.plan.base_manifest_key)
        if is_snapshot_manifest(raw):
            return await restore_from_snapshots(
                home_of(instance),
                self._kube_api(),
                self._session(db),
                command,
                OracleSnapshotManifest.model_validate_json(raw),
                store=store,
                stage_root=instance.staging_dir,
                ctx=ctx,
                time_zone=instance.time_zone,
            )
        return await run_restore(
            home_of(instance),
            self._session(db),
            command,
            store=store,
            stage_root=instance.staging_dir,
            ctx=ctx,
            time_zone=instance.time_zone,
        )

    async def verify(
        self,
        db: HostedDatabase,
        *,
        backup_id: str,
        manifest_key: str,
        store: BlobStore,
        prefix: str,
        scratch_dir: str,
        ctx: JobContext,
    ) -> VerifyResult:
        """Every piece is in the store with the size and crc32c the manifest recorded (reading
        them through RMAN's `RESTORE DATABASE VALIDATE` is the next step, not done here)."""
        raw = await store.get_bytes(manifest_key)
        if is_snapshot_manifest(raw):
            return await self._verify_snapshots(
                backup_id, OracleSnapshotManifest.model_validate_json(raw)
            )
        manifest = OracleManifest.model_validate_json(raw)
        checks: list[str] = []
        ok = True
        for piece in manifest.oracle.pieces:
            info = await store.head(piece.key)
            if info is None or (info.size, info.crc32c) != (piece.size, piece.crc32c):
                ok = False
                checks.append(f"piece {piece.name}: missing or changed")
        checks.append(f"{len(manifest.oracle.pieces)} pieces checked against the manifest")
        return VerifyResult(backup_id=backup_id, ok=ok, checks=checks[:50])

    async def _verify_snapshots(
        self, backup_id: str, manifest: OracleSnapshotManifest
    ) -> VerifyResult:
        """Every VolumeSnapshot of the backup still exists and is readyToUse (restoring one to
        read its files is the next step, not done here)."""
        kube = self._kube_api()
        checks: list[str] = []
        ok = True
        for volume in manifest.snapshot.volumes:
            try:
                found = await kube.get_snapshot(manifest.snapshot.namespace, volume.snapshot)
            except KubeError as exc:
                ok = False
                checks.append(f"snapshot {volume.snapshot}: {exc}")
                continue
            if (found.get("status") or {}).get("readyToUse") is not True:
                ok = False
                checks.append(f"snapshot {volume.snapshot}: not readyToUse")
        checks.append(f"{len(manifest.snapshot.volumes)} VolumeSnapshots checked")
        return VerifyResult(backup_id=backup_id, ok=ok, checks=checks[:50])


def _outcome(backup_id: str, done: BackupCompleted) -> BackupOutcome:
    return BackupOutcome(
        backup_id=backup_id,
        lineage=done.lineage,
        start=done.start,
        consistent_at=done.consistent_at,
        started_at=done.started_at,
        completed_at=done.completed_at,
        size_bytes=done.size_bytes,
        piece_count=done.piece_count,
        manifest_key=done.manifest_key,
    )


async def _forget_run(store: BlobStore, key_prefix: str) -> None:
    """Delete what a failed run uploaded (its pieces; no manifest, which is written last), so
    the store holds only the pieces of the run that succeeds."""
    keys = [info.key async for info in store.list(key_prefix)]
    for key in keys:
        await store.delete(key)
