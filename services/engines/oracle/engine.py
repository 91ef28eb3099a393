"""`OracleEngine`: the executor's Oracle driver (the `Engine` Protocol of `engines/base.py`).

Tools run through `runner.py` with scripts from `scripts.py`; what the engine reads from the
database (DBID, incarnations, V$BACKUP_DATAFILE) comes through an `OracleViews`, which a real
node gets from the python-oracledb session and a test from the simulated Oracle toolchain.

Where each database's Oracle lives (home, SID, staging directory) is `OracleTarget`. Until the
executor's settings carry an `[oracle]` section per database, targets are handed in, or taken
from ORACLE_HOME / ORACLE_SID / TIDEMARK_ORACLE_STAGE for a node serving one database.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from schemas import Incarnation, Scn
from schemas.messages import BackupSpec, RestoreResult, RunRestore, VerifyResult
from schemas.messages.backups import BackupKind
from services.blobstore import BlobStore
from services.engines.base import BackupOutcome, Description, EngineError, JobContext
from services.engines.oracle.backup import OracleManifest, OracleViews, run_backup
from services.engines.oracle.restore import run_restore
from services.engines.oracle.runner import OracleHome
from services.executor.settings import ExecutorSettings, HostedDatabase


@dataclass(frozen=True)
class OracleTarget:
    """One Oracle database on this node."""

    home: OracleHome
    stage_dir: Path
    channels: int = 2


ViewsFactory = Callable[[HostedDatabase], OracleViews]


class OracleEngine:
    """The Oracle engine driver (module docstring)."""

    def __init__(
        self,
        settings: ExecutorSettings,
        *,
        targets: Mapping[str, OracleTarget] | None = None,
        views: ViewsFactory | None = None,
    ) -> None:
        self.settings = settings
        self._targets = dict(targets or {})
        self._views = views

    def _target(self, db: HostedDatabase) -> OracleTarget:
        found = self._targets.get(db.uid)
        if found is not None:
            return found
        home, sid = os.environ.get("ORACLE_HOME"), os.environ.get("ORACLE_SID")
        if not home or not sid:
            raise EngineError.of(
                f"no Oracle home configured for {db.uid} (and no ORACLE_HOME/ORACLE_SID)",
                code="TM-ORA-030",
            )
        stage = Path(os.environ.get("TIDEMARK_ORACLE_STAGE", "/var/lib/tidemark/oracle-stage"))
        return OracleTarget(home=OracleHome(oracle_home=Path(home), sid=sid), stage_dir=stage)

    def _session(self, db: HostedDatabase) -> OracleViews:
        if self._views is None:
            raise EngineError.of(
                "no Oracle session for this engine: the python-oracledb session is not wired",
                code="TM-ORA-031",
            )
        return self._views(db)

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
        target = self._target(db)
        level: Literal[0, 1]
        if spec.kind is BackupKind.FULL:
            level = 0
        elif spec.kind is BackupKind.INCREMENTAL:
            level = 1
        else:
            raise EngineError.of("Oracle snapshot backups are not supported", code="TM-ORA-033")
        manifest = await run_backup(
            target.home,
            self._session(db),
            uid=db.uid,
            backup_id=backup_id,
            spec=spec,
            level=level,
            channels=target.channels,
            stage_root=target.stage_dir,
            store=store,
            prefix=prefix,
            ctx=ctx,
        )
        done = manifest.backup
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

    async def restore(
        self,
        db: HostedDatabase,
        command: RunRestore,
        *,
        store: BlobStore,
        prefix: str,
        ctx: JobContext,
    ) -> RestoreResult:
        target = self._target(db)
        return await run_restore(
            target.home,
            self._session(db),
            command,
            store=store,
            stage_root=target.stage_dir,
            ctx=ctx,
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
        manifest = OracleManifest.model_validate_json(await store.get_bytes(manifest_key))
        checks: list[str] = []
        ok = True
        for piece in manifest.oracle.pieces:
            info = await store.head(piece.key)
            if info is None or (info.size, info.crc32c) != (piece.size, piece.crc32c):
                ok = False
                checks.append(f"piece {piece.name}: missing or changed")
        checks.append(f"{len(manifest.oracle.pieces)} pieces checked against the manifest")
        return VerifyResult(backup_id=backup_id, ok=ok, checks=checks[:50])
