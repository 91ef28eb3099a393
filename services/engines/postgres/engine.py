"""The PostgreSQL engine: what the executor asks of a PostgreSQL cluster on its node.

    describe         what the running server is: system id, version, timeline, LSN, recovery
    setup_archiving  archive_command = walpush into the database's spool      (archiving.py)
    backup           pg_basebackup streamed into the store in parts, manifest last (basebackup.py)
    restore, verify  delegated to restore.py and verify.py
    migration_step   one step of a migration method, delegated to migration/steps.py

Construct it the way the executor's registry does, with the executor's settings, plus the
node's walpush setup for ``setup_archiving``::

    archiving = WalPushArchiving.from_databases(settings.archiver.databases, tool_dir)
    PostgresEngine(settings.executor, archiving=archiving)

Error codes raised here and by the modules above (``Failure.code``):

    TM-PG-CONFIG       not a PostgreSQL database, an unsupported backup spec, or the configured
                       system id is not the running cluster's
    TM-PG-OS           the database OS user or the binaries cannot be used
    TM-PG-SQL          a query failed (retryable when the server was starting, stopping or full)
    TM-PG-FOREIGN      the archive prefix belongs to another database
    TM-PG-SPOOL        the spool or walpush cannot be set up
    TM-PG-NOARCHIVE    WAL is not archived: a backup now could never be restored
    TM-PG-BASEBACKUP   pg_basebackup failed (its last lines say why)
    TM-PG-STREAM       its stream is not a complete base backup, or the store holds other bytes
    TM-PG-EXISTS       the backup id already names a base backup of another cluster
"""

from __future__ import annotations

import asyncio
import logging
from datetime import UTC, datetime

from pydantic import ValidationError

from schemas import Lsn, Timeline
from schemas.messages import (
    BackupCompleted,
    BackupKind,
    BackupSpec,
    Compression,
    MigrationStep,
    MigrationStepResult,
    RestoreResult,
    RunRestore,
    VerifyResult,
)
from services.blobstore import BlobStore
from services.engines.base import BackupOutcome, Description, EngineError, JobContext
from services.engines.postgres.archiving import (
    ArchivingSetup,
    WalPushArchiving,
    check_archiving_active,
    claim_archive,
    configure_server,
    prepare_walpush,
    spool_dir,
)
from services.engines.postgres.basebackup import CODE_STREAM, StreamedBase, stream_base_backup
from services.engines.postgres.basebackup import Compression as CompressionName
from services.engines.postgres.manifest import (
    BaseManifest,
    PostgresBase,
    backup_prefix,
    manifest_key,
)
from services.engines.postgres.migration.steps import run_step
from services.engines.postgres.sql import CODE_NOT_POSTGRES, PgTarget, query_row
from services.engines.settings import EngineSettings, HostedDatabase

__all__ = ["CODE_EXISTS", "PostgresEngine", "WalPushArchiving"]

_log = logging.getLogger("tidemark.executor")

CODE_EXISTS = "TM-PG-EXISTS"

CLEANUP_TIMEOUT_S = 60.0
"""How long removing a failed backup's parts may take before it is left to a later attempt
(which removes leftovers of its id before it starts)."""

_DESCRIBE = """
SELECT s.system_identifier,
       current_setting('server_version_num'),
       current_setting('server_version'),
       pg_is_in_recovery(),
       CASE WHEN pg_is_in_recovery() THEN pg_last_wal_replay_lsn()::text
            ELSE pg_current_wal_lsn()::text END,
       CASE WHEN pg_is_in_recovery() THEN ''
            ELSE pg_walfile_name(pg_current_wal_lsn()) END,
       c.timeline_id,
       current_setting('wal_level'),
       current_setting('archive_mode')
  FROM pg_control_system() s, pg_control_checkpoint() c
"""


class PostgresEngine:
    """The PostgreSQL driver. One instance serves every PostgreSQL database of a node; it keeps
    no per-database state, so concurrent jobs on different databases do not interfere."""

    def __init__(
        self,
        settings: EngineSettings | None = None,
        *,
        archiving: WalPushArchiving | None = None,
        part_size: int | None = None,
    ) -> None:
        """``part_size`` (bytes) overrides ``settings.backup_part_mib``, for tests that want
        several parts from a small cluster."""
        self.settings = settings if settings is not None else EngineSettings()
        self.archiving = archiving
        self.part_size = part_size or self.settings.backup_part_mib << 20

    # -- describe -----------------------------------------------------------------------------

    async def describe(self, db: HostedDatabase) -> Description:
        """The running server as it is now.

        The timeline of a primary is read from the name of the WAL file it writes (the timeline
        it inserts on); ``pg_control_checkpoint()`` would lag behind a promotion until the next
        checkpoint. A server in recovery reports its replay LSN and its last checkpoint's
        timeline."""
        target = PgTarget.of(db)
        row = await query_row(target, _DESCRIBE)
        system_id, version_num, version, recovery, lsn, walfile, checkpoint_tl = row[:7]
        in_recovery = recovery == "t"
        timeline = int(walfile[:8], 16) if walfile else int(checkpoint_tl)
        return Description(
            system_id=int(system_id),
            version=version_num,
            lineage=Timeline(id=timeline),
            position=Lsn.parse(lsn) if lsn else None,
            in_recovery=in_recovery,
            details={
                "server_version": version,
                "wal_level": row[7],
                "archive_mode": row[8],
                "checkpoint_timeline": checkpoint_tl,
            },
        )

    async def _identified(self, db: HostedDatabase) -> tuple[PgTarget, Description]:
        """The target and its description, refusing a cluster that is not the configured one
        (a config pointing at the wrong socket must not back up, or archive, someone else)."""
        target = PgTarget.of(db)
        found = await self.describe(db)
        if db.system_id is not None and found.system_id != db.system_id:
            raise EngineError.of(
                f"database {db.uid} is configured as system id {db.system_id}, but the cluster "
                f"on port {target.port} is {found.system_id}",
                code=CODE_NOT_POSTGRES,
            )
        return target, found

    # -- archiving ----------------------------------------------------------------------------

    async def setup_archiving(self, db: HostedDatabase, store: BlobStore, prefix: str) -> None:
        """See :mod:`.archiving`. A setting that needs a restart is logged as a warning; use
        :meth:`configure_archiving` to get it as a value."""
        done = await self.configure_archiving(db, store, prefix)
        if done.restart_needed:
            _log.warning(
                "database %s: %s changed; archiving starts only after the cluster is restarted",
                db.uid,
                ", ".join(done.restart_needed),
            )

    async def configure_archiving(
        self, db: HostedDatabase, store: BlobStore, prefix: str
    ) -> ArchivingSetup:
        """:meth:`setup_archiving`, returning what was changed and what awaits a restart."""
        target, found = await self._identified(db)
        spool_dir(target, self.archiving)  # configured at all? Before the prefix is claimed.
        await claim_archive(store, prefix, db.ref.model_copy(update={"system_id": found.system_id}))
        command = await prepare_walpush(target, self.archiving)
        return await configure_server(target, command)

    # -- backup -------------------------------------------------------------------------------

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
        """Take a base backup into ``<prefix>/<uid>/backups/<backup_id>/``, manifest last.

        Idempotent: a backup id whose manifest is already stored (a redelivered command after
        a crash) returns that backup; parts without a manifest (an attempt that died) are
        removed first. On any failure or cancellation, everything this attempt stored is
        removed (best effort): a backup without its manifest is never a restore base anyway."""
        compression = _compression_of(spec)
        target, found = await self._identified(db)
        assert found.system_id is not None
        if not found.in_recovery:
            await check_archiving_active(target)
        done = await self._completed(store, prefix, db, backup_id, found.system_id)
        if done is not None:
            return done
        await _remove_backup(store, prefix, db, backup_id)

        written: list[str] = []
        mkey = manifest_key(prefix, db.uid, backup_id)
        metadata = {
            "engine": "postgres",
            "database": db.uid,
            "system_id": str(found.system_id),
            "kind": "base-part",
            "backup_id": backup_id,
            "compression": compression,
        }
        try:
            await ctx.progress("copy", message=f"pg_basebackup of {db.uid} starting")
            streamed = await stream_base_backup(
                target,
                backup_id=backup_id,
                store=store,
                prefix=prefix,
                compression=compression,
                part_size=self.part_size,
                metadata=metadata,
                ctx=ctx,
                written=written,
            )
            manifest = _manifest(streamed, spec, ctx, found, backup_id, compression, mkey)
            await ctx.progress("manifest", message=f"{len(streamed.parts)} parts stored")
            # The manifest goes last and alone makes the parts a backup; it is listed for
            # removal before it is written, since a cancellation can land after the store
            # wrote it but before we hear so.
            written.insert(0, mkey)
            await store.put_stream(
                mkey,
                manifest.model_dump_json(indent=2).encode(),
                {**metadata, "kind": "base-manifest"},
            )
        except BaseException:
            await _discard(store, written, prefix, db, backup_id)
            raise
        return _outcome(manifest.backup)

    async def _completed(
        self, store: BlobStore, prefix: str, db: HostedDatabase, backup_id: str, system_id: int
    ) -> BackupOutcome | None:
        key = manifest_key(prefix, db.uid, backup_id)
        if await store.head(key) is None:
            return None
        try:
            stored = BaseManifest.model_validate_json(await store.get_bytes(key))
        except ValidationError as exc:
            raise EngineError.of(
                f"{key} exists but is not a base backup manifest: {exc}", code=CODE_EXISTS
            ) from None
        if stored.postgres.system_id != system_id or stored.backup.backup_id != backup_id:
            raise EngineError.of(
                f"{key} is backup {stored.backup.backup_id} of system id "
                f"{stored.postgres.system_id}, not of this cluster ({system_id})",
                code=CODE_EXISTS,
            )
        return _outcome(stored.backup)

    # -- restore and verify (restore.py, verify.py) -------------------------------------------

    async def restore(
        self,
        db: HostedDatabase,
        command: RunRestore,
        *,
        store: BlobStore,
        prefix: str,
        ctx: JobContext,
    ) -> RestoreResult:
        from services.engines.postgres.restore import restore

        return await restore(
            db, command, store=store, prefix=prefix, ctx=ctx, settings=self.settings
        )

    async def migration_step(
        self,
        db: HostedDatabase,
        command: MigrationStep,
        *,
        store: BlobStore,
        prefix: str,
        ctx: JobContext,
    ) -> MigrationStepResult:
        """One step of a PostgreSQL migration method (`migration/steps.py`)."""
        return await run_step(self.settings, db, command, store=store, prefix=prefix, ctx=ctx)

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
        from services.engines.postgres.verify import verify

        result: VerifyResult = await verify(
            db,
            backup_id=backup_id,
            manifest_key=manifest_key,
            store=store,
            prefix=prefix,
            scratch_dir=scratch_dir,
            ctx=ctx,
            settings=self.settings,
        )
        return result


def _compression_of(spec: BackupSpec) -> CompressionName:
    if spec.kind is not BackupKind.FULL:
        raise EngineError.of(
            f"PostgreSQL takes full base backups only, not {spec.kind.value}",
            code=CODE_NOT_POSTGRES,
        )
    if spec.compression not in (Compression.NONE, Compression.ZSTD):
        raise EngineError.of(
            f"PostgreSQL base backups are stored uncompressed or with zstd, "
            f"not {spec.compression.value}",
            code=CODE_NOT_POSTGRES,
        )
    return "zstd" if spec.compression is Compression.ZSTD else "none"


def _manifest(
    streamed: StreamedBase,
    spec: BackupSpec,
    ctx: JobContext,
    found: Description,
    backup_id: str,
    compression: CompressionName,
    key: str,
) -> BaseManifest:
    """The manifest of a finished stream. The start is the label's; the end and the lineage are
    the last WAL range's: that is the timeline a restore replays on to reach consistency (a
    standby promoted during the backup has two ranges)."""
    first, last = streamed.wal_ranges[0], streamed.wal_ranges[-1]
    label = streamed.label
    if (first.start, first.timeline) != (label.start_lsn, label.timeline):
        raise EngineError.of(
            f"backup_label starts at {Lsn(value=label.start_lsn)} on timeline {label.timeline}, "
            f"backup_manifest at {Lsn(value=first.start)} on timeline {first.timeline}",
            code=CODE_STREAM,
        )
    started_at = label.start_time or streamed.started_at
    completed_at = max(datetime.now(UTC), started_at)
    assert found.system_id is not None
    backup = BackupCompleted(
        backup_id=backup_id,
        job_id=ctx.job_id,
        spec=spec,
        lineage=Timeline(id=last.timeline),
        start=Lsn(value=first.start),
        consistent_at=Lsn(value=last.end),
        started_at=started_at,
        completed_at=completed_at,
        size_bytes=sum(part.size for part in streamed.parts),
        piece_count=len(streamed.parts),
        manifest_key=key,
    )
    return BaseManifest(
        backup=backup,
        postgres=PostgresBase(
            pg_version=int(found.version),
            system_id=found.system_id,
            timeline=last.timeline,
            compression=compression,
            tar_bytes=streamed.tar_bytes,
            parts=streamed.parts,
            label=label.label,
        ),
    )


def _outcome(backup: BackupCompleted) -> BackupOutcome:
    return BackupOutcome(
        backup_id=backup.backup_id,
        lineage=backup.lineage,
        start=backup.start,
        consistent_at=backup.consistent_at,
        started_at=backup.started_at,
        completed_at=backup.completed_at,
        size_bytes=backup.size_bytes,
        piece_count=backup.piece_count,
        manifest_key=backup.manifest_key,
    )


async def _remove_backup(store: BlobStore, prefix: str, db: HostedDatabase, backup_id: str) -> None:
    """Remove every object under the backup's prefix (one that has no manifest: its parts are
    not a base, and create-only writes would refuse a new attempt's different bytes)."""
    async for info in store.list(backup_prefix(prefix, db.uid, backup_id)):
        await store.delete(info.key)


async def _discard(
    store: BlobStore, keys: list[str], prefix: str, db: HostedDatabase, backup_id: str
) -> None:
    """Remove what a failed attempt stored, manifest first, then a sweep of the prefix (a part
    whose write was cancelled may still have been published). Shielded, so a second
    cancellation does not leave the job half cleaned; bounded, so a dead store does not hold
    the job forever (the next attempt with this id removes the rest)."""

    async def remove() -> None:
        for key in keys:
            await store.delete(key)
        await _remove_backup(store, prefix, db, backup_id)

    task = asyncio.create_task(remove())
    try:
        await asyncio.wait_for(asyncio.shield(task), CLEANUP_TIMEOUT_S)
    except asyncio.CancelledError:
        raise
    except Exception as exc:  # a timeout or a store error: the original error matters more
        _log.warning("backup %s of %s: parts not all removed: %r", backup_id, db.uid, exc)
