"""Restoring an Oracle database in place from the store: stage, catalog, recover, open.

1. Read the base's manifest and find its chain (`restore_chain`); stage every piece of the
   chain and every log the plan names into a fresh 0700 directory, each download checked
   against the crc32c the manifest (or the store) recorded.
2. Run one RMAN script: restore the control file from the base's own control file piece (never
   "the newest on disk", El Carro's mistake), `CATALOG START WITH` the staging directory,
   `RESET DATABASE TO INCARNATION n` when the target lies on another incarnation than the
   restored control file's current one, `SET UNTIL` the target (exclusive), restore, recover,
   `OPEN RESETLOGS`.
3. Report where the database opened: the new incarnation and its RESETLOGS SCN, read back from
   V$DATABASE_INCARNATION rather than assumed.

**Incremental chains.** The plan names one base: the backup whose consistent point is the
latest before the target, which may be a level 1. A level 1 is only a change set, so the
restore also needs the level 0 under it and, for a differential level 1, every level 1 taken
between the two. The chain is read from the manifests in the store, beside the base's, the way
RMAN picks from its own catalog: the newest level 0 of the same database and incarnation whose
start (S_B) is before the base's, then every level 1 between that level 0 and the base. The
catalog keeps no more than the base's key, so the store is the one place the chain is read
from; a chain broken by retention (its level 0 deleted) is refused here, before RMAN runs.
"""

from __future__ import annotations

import asyncio
import shutil
from collections.abc import Callable
from pathlib import Path
from zoneinfo import ZoneInfo

from pydantic import ValidationError

from schemas import Incarnation, Position, Scn
from schemas.messages import RestoreResult, RunRestore
from schemas.messages.restores import TargetImmediate, TargetPosition, TargetSequence, TargetTime
from services.blobstore import BlobStore
from services.engines.base import EngineError, JobContext
from services.engines.oracle.backup import (
    OracleManifest,
    OracleViews,
    make_stage,
    recovery_points,
)
from services.engines.oracle.runner import OracleHome, Tool, run_tool
from services.engines.oracle.scripts import (
    RestoreScript,
    Until,
    UntilScn,
    UntilSequence,
    UntilTime,
)


def until_of(command: RunRestore, manifest: OracleManifest, time_zone: str = "UTC") -> Until:
    """The `SET UNTIL` for a restore target; refuses targets RMAN cannot express."""
    return until_for(
        command, lambda: recovery_points(manifest.oracle.datafiles)[1], time_zone=time_zone
    )


def until_for(
    command: RunRestore, consistent_at: Callable[[], int], *, time_zone: str = "UTC"
) -> Until:
    """`until_of` for any base: `consistent_at` is its M_B, which an immediate target passes.

    RMAN reads `SET UNTIL TIME` as the database server's local time (its TO_DATE has no zone),
    so a UTC target is written in `time_zone`, the server's zone the session checks on
    connecting: written in UTC on a server at UTC-5, a restore would land five hours late."""
    target = command.target
    if isinstance(target, TargetPosition):
        if not isinstance(target.position, Scn):
            raise EngineError.of("an Oracle restore target is an SCN", code="TM-ORA-020")
        return UntilScn(scn=target.position.value)
    if isinstance(target, TargetTime):
        local = target.at.astimezone(ZoneInfo(time_zone))
        return UntilTime(at=local.replace(tzinfo=None))
    if isinstance(target, TargetSequence):
        return UntilSequence(sequence=target.sequence, thread=target.thread)
    if isinstance(target, TargetImmediate):
        return UntilScn(scn=consistent_at() + 1)
    raise EngineError.of(f"Oracle cannot restore to a {target.kind} target", code="TM-ORA-021")


def incarnation_to_reset(manifest: OracleManifest, lineage: Incarnation) -> int | None:
    """`RESET DATABASE TO INCARNATION n` when `lineage` is not the control file's current one."""
    incs = manifest.oracle.incarnations
    current = next(i for i in incs if i.status == "CURRENT")
    if current.resetlogs_id == lineage.resetlogs_id:
        return None
    for inc in incs:
        if inc.resetlogs_id == lineage.resetlogs_id:
            return inc.number
    raise EngineError.of(
        f"the base's control file does not know incarnation {lineage.resetlogs_id}: "
        "a base taken on the target's incarnation path is needed",
        code="TM-ORA-022",
    )


def _scn(position: Position) -> int:
    if not isinstance(position, Scn):
        raise EngineError.of("an Oracle manifest records SCNs", code="TM-ORA-026")
    return position.value


def _resetlogs_id(manifest: OracleManifest) -> int:
    lineage = manifest.backup.lineage
    if not isinstance(lineage, Incarnation):
        raise EngineError.of("an Oracle manifest records an incarnation", code="TM-ORA-026")
    return lineage.resetlogs_id


async def restore_chain(store: BlobStore, base: OracleManifest) -> list[OracleManifest]:
    """The backups a restore from `base` stages, oldest first, `base` last (module docstring)."""
    if base.oracle.level != 1:
        return [base]
    # <...>/backups/<backup-id>/manifest.json: the database's backups are the siblings.
    backups = base.backup.manifest_key.rsplit("/", 2)[0] + "/"
    start, rid = _scn(base.backup.start), _resetlogs_id(base)
    earlier: list[OracleManifest] = []
    async for info in store.list(backups):
        if not info.key.endswith("/manifest.json") or info.key == base.backup.manifest_key:
            continue
        try:
            other = OracleManifest.model_validate_json(await store.get_bytes(info.key))
        except ValidationError:
            continue  # not an RMAN manifest (another format or engine): not part of a chain
        if (
            other.oracle.dbid == base.oracle.dbid
            and other.oracle.level is not None
            and _resetlogs_id(other) == rid
            and _scn(other.backup.start) < start
        ):
            earlier.append(other)
    level0 = max(
        (m for m in earlier if m.oracle.level == 0),
        key=lambda m: _scn(m.backup.start),
        default=None,
    )
    if level0 is None:
        raise EngineError.of(
            f"backup {base.backup.backup_id} is a level 1 and the store holds no level 0 of "
            "its incarnation before it: the chain is broken, restore from another base",
            code="TM-ORA-027",
        )
    floor = _scn(level0.backup.start)
    between = (
        []
        if base.backup.spec.cumulative
        else [m for m in earlier if m.oracle.level == 1 and _scn(m.backup.start) > floor]
    )
    return [level0, *sorted(between, key=lambda m: _scn(m.backup.start)), base]


async def run_restore(
    home: OracleHome,
    views: OracleViews,
    command: RunRestore,
    *,
    store: BlobStore,
    stage_root: Path,
    ctx: JobContext,
    time_zone: str = "UTC",
) -> RestoreResult:
    manifest = OracleManifest.model_validate_json(
        await store.get_bytes(command.plan.base_manifest_key)
    )
    lineage = command.plan.lineage
    if not isinstance(lineage, Incarnation):
        raise EngineError.of("an Oracle restore plan must name an incarnation", code="TM-ORA-023")
    until = until_of(command, manifest, time_zone)
    reset_to = incarnation_to_reset(manifest, lineage)
    chain = await restore_chain(store, manifest)
    stage = await asyncio.to_thread(make_stage, stage_root, "restore-")
    try:
        controlfile = await _stage(store, chain, command.plan.log_keys, stage, ctx)
        script = RestoreScript(
            command_id=str(ctx.job_id),
            dbid=manifest.oracle.dbid,
            controlfile_piece=str(controlfile),
            stage_dir=str(stage),
            until=until,
            incarnation=reset_to,
        )
        await ctx.progress("recover", message=f"RMAN {until.clause()}")
        result = await run_tool(home, Tool.RMAN, script.render())
        result.raise_for_failure("RMAN restore")
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


async def _stage(
    store: BlobStore,
    chain: list[OracleManifest],
    log_keys: list[str],
    stage: Path,
    ctx: JobContext,
) -> Path:
    """Download the chain's pieces and the logs; returns the local path of the base's (the
    chain's last) control file piece: the newest control file, which knows every set before it."""
    pieces = [(m is chain[-1], p) for m in chain for p in m.oracle.pieces]
    total = len(pieces) + len(log_keys)
    controlfile: Path | None = None
    for n, (in_base, piece) in enumerate(pieces, 1):
        path = stage / piece.name
        info = await store.get_to_file(piece.key, path)
        if (info.size, info.crc32c) != (piece.size, piece.crc32c):
            raise EngineError.of(
                f"{piece.key}: the store holds {info.size} bytes crc32c {info.crc32c}, the "
                f"manifest recorded {piece.size} bytes crc32c {piece.crc32c}",
                code="TM-ORA-024",
            )
        if piece.controlfile and in_base:
            controlfile = path
        await ctx.progress("stage", done=n, total=total, unit="files")
    if controlfile is None:
        raise EngineError.of("the base has no control file piece", code="TM-ORA-025")
    await stage_logs(store, log_keys, stage, ctx, done=len(pieces), total=total)
    return controlfile


async def stage_logs(
    store: BlobStore,
    log_keys: list[str],
    stage: Path,
    ctx: JobContext,
    *,
    done: int = 0,
    total: int | None = None,
) -> None:
    """Download the plan's logs into `stage`, for `CATALOG START WITH`."""
    for n, key in enumerate(log_keys, done + 1):
        # Keys are <...>/logs/<thread>/<sequence> per lineage: the whole key names the file.
        await store.get_to_file(key, stage / ("log_" + key.replace("/", "_")))
        await ctx.progress("stage", done=n, total=total or len(log_keys), unit="files")
