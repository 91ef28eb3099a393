"""The `rman` migration method: the target, a new instance, restored from Tidemark's newest
level 0 + level 1 chain in the bucket and rolled forward from the archived logs the archiver
streams there, until a cutover opens it exactly where the fenced source stopped. Source and
target share nothing but the bucket (PostgreSQL's `physical-archive` is its twin).

    preflight    source: the bucket holds a level 0 + level 1 chain of it and archived logs
                 past the chain's consistent point (`rman_archive.py`, the catalog's rule);
                 its DBID, release, platform and byte order. Target: declared on this node, an
                 instance that holds no database yet (V$DATABASE answers ORA-01507), a home of
                 the source's release or newer, on the source's platform and byte order (any
                 other pair is xtts's). Problems are reported, nothing changes
    copy         the chain's pieces and the logs from its start staged, `RestoreCopyScript`:
                 control file, CATALOG, RESTORE and RECOVER UNTIL SCN the archive's end; the
                 copy stays MOUNTED. Rerun on a copy already restored: a round instead
    lag          one roll-forward round (below), then how far the copy is behind: the logs
                 archived past it (bytes) and the source's clock against the applied SCN's
    fence        the source restricted (`ALTER SYSTEM ENABLE RESTRICTED SESSION`, every user
                 session but Tidemark's own killed: no one can commit), then its final log
                 switch (`ALTER SYSTEM ARCHIVE LOG CURRENT`), then a wait until the bucket
                 holds each thread's final log. The source's final SCN F is the lowest
                 NEXT_CHANGE# of those logs: no commit of the source is at or after it
    final_sync   rounds up to F: the copy recovered UNTIL SCN F, exactly, or the step fails
    promote      `OpenScript`: OPEN RESETLOGS (OPEN RESETLOGS UPGRADE when the target's home
                 is newer: the upgrade is flagged as the next step, not run), then the opened
                 database's RESETLOGS_CHANGE# checked against F; the target's endpoint
    unfence      the restriction lifted, unless the source was restricted before the fence

**Rounds.** A round reads the copy's position (the lowest datafile header checkpoint), lists
the source's logs in the bucket, and recovers UNTIL SCN the archive's end from that position
(the lowest thread end of the contiguous logs): only what the bucket holds, so a log the
archiver has not shipped yet waits for the next round. A round with nothing new runs no RMAN.

**Positions.** Oracle recovers `UNTIL SCN n` exclusively: the copy then holds every change
below n. The fence reports F - 1, the last SCN the source's redo can hold; the copy reports F,
the SCN it recovered to, and after the open the new incarnation's RESETLOGS_CHANGE#, which must
be F itself. The saga's "the target passed the source's final position" is that check.

**The way back** before the open is the source unfenced: it was never changed (its datafiles,
its incarnation), and the copy stays mounted, unopened, for a person to drop. After the open
the target has its own incarnation and the source is as the fence left it: going back to it
loses what the target accepted since (`ROLLBACK_AFTER_CUTOVER` does not list the method).

Records in the bucket, beside the source's backups (`<source>/migrations/<id>/`), written
create-only so a rerun keeps the first run's answer: `rman-fence.json` (was the source
restricted before the fence, its release) before the restriction, and `rman-final.json` (F and
each thread's final sequence) once the switch is done, so a rerun of the fence switches no
second time.
"""

from __future__ import annotations

import asyncio
import platform
import shutil
import sys
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

from pydantic import BaseModel, ConfigDict

from schemas import Incarnation, Scn, utcnow
from schemas.messages import (
    MigrationMethod,
    MigrationStep,
    MigrationStepResult,
    RunMigrationCopy,
    RunMigrationFence,
    RunMigrationFinalSync,
    RunMigrationLag,
    RunMigrationPreflight,
    RunMigrationPromote,
    RunMigrationUnfence,
)
from services.blobstore import BlobStore, BlobStoreError, ObjectConflict, validate_key
from services.blobstore.layout import database_prefix, sequence_key
from services.engines.base import EngineError, JobContext
from services.engines.oracle.backup import OracleManifest, make_stage
from services.engines.oracle.datapump import DataPumpSql
from services.engines.oracle.migration_steps import _endpoint
from services.engines.oracle.rman_archive import (
    CODE_ARCHIVE,
    Archive,
    newest_chain,
    read_archive,
    resetlogs_id_of,
    scn_of,
    stage_logs,
)
from services.engines.oracle.rman_migration_scripts import (
    OpenScript,
    RestoreCopyScript,
    RollForwardScript,
)
from services.engines.oracle.runner import OracleHome, Tool, run_tool
from services.engines.oracle.session import OracleSessionError
from services.engines.settings import EngineSettings, HostedDatabase

__all__ = [
    "FINAL_LOGS_SQL",
    "INSTANCE_SQL",
    "KILL_SESSIONS_SQL",
    "RESTRICT_SQL",
    "SOURCE_SQL",
    "SWITCH_SQL",
    "TARGET_SQL",
    "UNRESTRICT_SQL",
    "release_key",
    "run_step",
]

CODE_UNSUPPORTED = "TM-ORA-080"
"""A step this node cannot run for the method: a side not declared here, a step it has not."""
CODE_NOT_NEW = "TM-ORA-083"
"""The target instance already holds a database that is not this migration's copy."""
CODE_POSITION = "TM-ORA-084"
"""The copy is not exactly at the source's final SCN: nothing is opened (or, after the open,
the incarnation began elsewhere)."""
CODE_STORE = "TM-ORA-085"
"""The migration's records in the bucket could not be read or written (retryable)."""

ARCHIVE_WAIT_S = 300.0
"""How long the fence waits for the bucket to hold the final logs, and final_sync for them."""
POLL_S = 0.2

INSTANCE_SQL = "SELECT version, logins, status FROM v$instance"
"""Answers in NOMOUNT too: a new instance's release is its home's."""
SOURCE_SQL = """\
SELECT d.dbid, d.current_scn, d.open_mode, d.platform_name, p.endian_format,
       SYS_EXTRACT_UTC(SYSTIMESTAMP) AS now_utc
  FROM v$database d
  JOIN v$transportable_platform p ON p.platform_id = d.platform_id"""
TARGET_SQL = """\
SELECT d.dbid, d.open_mode, d.resetlogs_change#,
       (SELECT MIN(h.checkpoint_change#) FROM v$datafile_header h) AS checkpoint_change#
  FROM v$database d"""
"""ORA-01507 on an instance with no database mounted: a new target."""
FINAL_LOGS_SQL = """\
SELECT a.thread#, a.resetlogs_id, MAX(a.sequence#) AS sequence#, MAX(a.next_change#) AS next_change#
  FROM v$archived_log a
  JOIN v$thread t ON t.thread# = a.thread#
 WHERE a.dest_id = 1 AND t.enabled <> 'DISABLED'
   AND a.resetlogs_id = (SELECT resetlogs_id FROM v$database_incarnation WHERE status = 'CURRENT')
 GROUP BY a.thread#, a.resetlogs_id
 ORDER BY a.thread#"""
RESTRICT_SQL = "ALTER SYSTEM ENABLE RESTRICTED SESSION"
UNRESTRICT_SQL = "ALTER SYSTEM DISABLE RESTRICTED SESSION"
SWITCH_SQL = "ALTER SYSTEM ARCHIVE LOG CURRENT"
KILL_SESSIONS_SQL = """\
BEGIN
  FOR s IN (SELECT sid, serial# AS serial FROM v$session
             WHERE type = 'USER' AND username <> SYS_CONTEXT('USERENV', 'SESSION_USER')) LOOP
    EXECUTE IMMEDIATE 'ALTER SYSTEM KILL SESSION ''' || s.sid || ',' || s.serial
      || ''' IMMEDIATE';
  END LOOP;
END;"""
"""Every user session but Tidemark's own (the archiver's among them: they commit nothing) ends;
RESTRICTED SESSION keeps the others from logging on again."""


def release_key(release: str) -> tuple[int, ...]:
    """`19.0.0.0.0` → (19, 0, 0, 0, 0), for comparing releases."""
    return tuple(int(x) for x in release.split(".") if x.isdigit())


# -- the sides ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Side:
    name: str
    db: HostedDatabase
    home: OracleHome
    sql: DataPumpSql
    staging_dir: Path

    async def rows(self, what: str, sql: str, **binds: object) -> list[dict[str, Any]]:
        try:
            return await self.sql.rows(what, sql, **binds)
        except OracleSessionError as exc:
            raise EngineError.of(
                f"{self.name}: {what}: {exc.reason}", code=exc.code, retryable=exc.retryable
            ) from None

    async def call(self, what: str, sql: str) -> None:
        try:
            await self.sql.call(what, sql)
        except OracleSessionError as exc:
            raise EngineError.of(
                f"{self.name}: {what}: {exc.reason}", code=exc.code, retryable=exc.retryable
            ) from None

    async def release(self) -> str:
        return str((await self.rows("reading V$INSTANCE", INSTANCE_SQL))[0]["version"])


class _Sides:
    def __init__(
        self, settings: EngineSettings, db: HostedDatabase, command: MigrationStep, sql_of: Any
    ) -> None:
        self.command = command

        def declared(uid: str) -> _Side | None:
            found = db if db.uid == uid else settings.database(uid)
            if found is None or found.oracle is None:
                return None
            instance = found.oracle
            return _Side(
                name=found.uid,
                db=found,
                home=OracleHome(
                    oracle_home=instance.oracle_home,
                    sid=instance.oracle_sid,
                    time_zone=instance.time_zone,
                    work_dir=instance.staging_dir,
                ),
                sql=sql_of(found),
                staging_dir=instance.staging_dir,
            )

        self.source = declared(command.source)
        self.target = declared(command.target)

    def need_source(self) -> _Side:
        if self.source is None:
            raise EngineError.of(
                f"the source {self.command.source} is not an Oracle database of this node",
                code=CODE_UNSUPPORTED,
            )
        return self.source

    def need_target(self) -> _Side:
        if self.target is None:
            raise EngineError.of(
                f"the target {self.command.target} is not an Oracle instance of this node: the "
                "rman method restores into an instance declared in [[databases]]",
                code=CODE_UNSUPPORTED,
            )
        return self.target


# -- the records in the bucket --------------------------------------------------------------------


class _Stored(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class FenceRecord(_Stored):
    """Written before the restriction: what the unfence gives back, and the source's release."""

    restricted_before: bool
    release: str


class FinalRecord(_Stored):
    """Written once the final switch is done: the source's final SCN and final logs."""

    final_scn: int
    resetlogs_id: int
    sequences: dict[int, int]
    fenced_at: datetime


M = TypeVar("M", bound=_Stored)


def _keys(prefix: str, command: MigrationStep) -> tuple[str, str]:
    base = f"{database_prefix(prefix, command.source)}/migrations/{command.migration_id}"
    return f"{base}/rman-fence.json", f"{base}/rman-final.json"


async def _read(store: BlobStore, key: str, model: type[M]) -> M | None:
    try:
        if await store.head(key) is None:
            return None
        return model.model_validate_json(await store.get_bytes(key))
    except BlobStoreError as exc:
        raise EngineError.of(f"{key}: {exc}", code=CODE_STORE, retryable=True) from exc


async def _create(store: BlobStore, key: str, value: M) -> M:
    try:
        await store.put_stream(validate_key(key), value.model_dump_json().encode())
    except ObjectConflict:
        found = await _read(store, key, type(value))
        if found is None:
            raise
        return found
    except BlobStoreError as exc:
        raise EngineError.of(f"writing {key}: {exc}", code=CODE_STORE, retryable=True) from exc
    return value


# -- the copy and its rounds ----------------------------------------------------------------------


@dataclass(frozen=True)
class _Copy:
    """What the target instance holds: None for a new instance (no database mounted)."""

    dbid: int
    open_mode: str
    resetlogs_scn: int
    checkpoint: int | None


async def _copy_state(target: _Side) -> _Copy | None:
    try:
        rows = await target.sql.rows("reading V$DATABASE", TARGET_SQL)
    except OracleSessionError as exc:
        if exc.code == "ORA-01507":
            return None
        raise EngineError.of(
            f"{target.name}: reading V$DATABASE: {exc.reason}",
            code=exc.code,
            retryable=exc.retryable,
        ) from None
    row = rows[0]
    checkpoint = row.get("checkpoint_change#")
    return _Copy(
        dbid=int(row["dbid"]),
        open_mode=str(row["open_mode"]),
        resetlogs_scn=int(row["resetlogs_change#"] or 0),
        checkpoint=None if checkpoint is None else int(checkpoint),
    )


@dataclass(frozen=True)
class _Round:
    applied: int
    archive: Archive
    ran: bool
    bytes_staged: int


async def _rman(target: _Side, script: str, what: str) -> None:
    result = await run_tool(target.home, Tool.RMAN, script)
    result.raise_for_failure(what)


async def _round(
    target: _Side,
    copy: _Copy,
    command: MigrationStep,
    *,
    store: BlobStore,
    prefix: str,
    resetlogs_id: int,
    ctx: JobContext,
    until: int | None = None,
) -> _Round:
    """One roll-forward round (module docstring)."""
    if copy.checkpoint is None:
        raise EngineError.of(
            f"{target.name}: the copy has no restored datafiles", code=CODE_NOT_NEW
        )
    applied = copy.checkpoint
    archive = await read_archive(store, prefix, command.source, resetlogs_id)
    end = archive.end(applied)
    goal = end if until is None else min(end, until)
    if goal <= applied:
        return _Round(applied=applied, archive=archive, ran=False, bytes_staged=0)
    stage = await asyncio.to_thread(make_stage, target.staging_dir, "rman-round-")
    try:
        staged = await stage_logs(store, archive.needed(applied, goal), stage, ctx)
        await ctx.progress("recover", message=f"RECOVER DATABASE UNTIL SCN {goal}")
        script = RollForwardScript(command_id=str(ctx.job_id), stage_dir=str(stage), until_scn=goal)
        await _rman(target, script.render(), "RMAN roll forward")
    finally:
        await asyncio.to_thread(shutil.rmtree, stage, True)
    after = await _copy_state(target)
    reached = after.checkpoint if after is not None and after.checkpoint is not None else applied
    return _Round(applied=reached, archive=archive, ran=True, bytes_staged=staged)


async def _restore(
    target: _Side,
    chain: list[OracleManifest],
    *,
    store: BlobStore,
    prefix: str,
    source: str,
    ctx: JobContext,
) -> tuple[int, int]:
    """Restore the chain into the new instance and recover it as far as the archive goes.
    Returns (the SCN recovered to, the bytes staged)."""
    base = chain[-1]
    rid = resetlogs_id_of(base)
    start, consistent = scn_of(base.backup.start), scn_of(base.backup.consistent_at)
    archive = await read_archive(store, prefix, source, rid)
    end = archive.end(start)
    if end <= consistent:
        raise EngineError.of(
            f"the archive holds {source}'s redo from SCN {start} only to SCN {end}; the chain "
            f"{base.backup.backup_id} is consistent only past SCN {consistent}: wait for the "
            "archiver (or switch a log on the source)",
            code=CODE_ARCHIVE,
            retryable=True,
        )
    stage = await asyncio.to_thread(make_stage, target.staging_dir, "rman-copy-")
    try:
        size, controlfile = 0, None
        pieces = [(m is base, p) for m in chain for p in m.oracle.pieces]
        for n, (in_base, piece) in enumerate(pieces, 1):
            path = stage / piece.name
            try:
                info = await store.get_to_file(piece.key, path)
            except BlobStoreError as exc:
                raise EngineError.of(
                    f"{piece.key}: {exc}", code="TM-ORA-024", retryable=True
                ) from exc
            if (info.size, info.crc32c) != (piece.size, piece.crc32c):
                raise EngineError.of(
                    f"{piece.key}: the store holds {info.size} bytes crc32c {info.crc32c}, the "
                    f"manifest recorded {piece.size} bytes crc32c {piece.crc32c}",
                    code="TM-ORA-024",
                )
            size += info.size
            if piece.controlfile and in_base:
                controlfile = path
            await ctx.progress("stage", done=n, total=len(pieces), unit="files")
        if controlfile is None:
            raise EngineError.of("the chain's level 1 has no control file piece", code="TM-ORA-025")
        size += await stage_logs(store, archive.needed(start, end), stage, ctx)
        script = RestoreCopyScript(
            command_id=str(ctx.job_id),
            dbid=base.oracle.dbid,
            controlfile_piece=str(controlfile),
            stage_dir=str(stage),
            until_scn=end,
        )
        await ctx.progress("restore", message=f"RESTORE and RECOVER UNTIL SCN {end}")
        await _rman(target, script.render(), "RMAN restore of the copy")
    finally:
        await asyncio.to_thread(shutil.rmtree, stage, True)
    return end, size


async def _mounted_copy(target: _Side, dbid: int) -> _Copy:
    copy = await _copy_state(target)
    if copy is None or copy.dbid != dbid or copy.checkpoint is None:
        raise EngineError.of(
            f"{target.name} holds no mounted copy of DBID {dbid}: the copy step has not run",
            code=CODE_NOT_NEW,
        )
    return copy


# -- the steps ------------------------------------------------------------------------------------


def _node_platform() -> tuple[str, str]:
    """(OS family, byte order) of this node, where the target instance runs."""
    return platform.system(), sys.byteorder.capitalize()


async def _source_facts(source: _Side) -> dict[str, str]:
    row = (await source.rows("reading V$DATABASE", SOURCE_SQL))[0]
    return {
        "system_identifier": str(row["dbid"]),
        "release": await source.release(),
        "platform": str(row["platform_name"]),
        "endian": str(row["endian_format"]),
        "scn": str(row["current_scn"]),
    }


def _platform_problems(source: dict[str, str], target_release: str | None) -> list[str]:
    problems = []
    system, endian = _node_platform()
    if source["endian"].lower() != endian.lower():
        problems.append(
            f"the source is {source['platform']} ({source['endian']}-endian), the target's "
            f"node {system} ({endian}-endian): RMAN cannot restore across byte orders; use xtts"
        )
    elif system.lower() not in source["platform"].lower():
        problems.append(
            f"the source runs on {source['platform']}, the target's node on {system}: RMAN "
            "restores onto the same platform only; use xtts"
        )
    if target_release is not None and release_key(target_release) < release_key(source["release"]):
        problems.append(
            f"the target's home is {target_release}, older than the source's {source['release']}: "
            "a database opens only in a home of its release or newer"
        )
    return problems


async def _preflight(
    sides: _Sides, command: RunMigrationPreflight, store: BlobStore, prefix: str
) -> MigrationStepResult:
    problems: list[str] = []
    facts: dict[str, str] = {}
    if command.side == "source":
        if sides.source is None:
            return MigrationStepResult(
                step="preflight",
                problems=[f"the source {command.source} is not an Oracle database of this node"],
            )
        try:
            facts = await _source_facts(sides.source)
            chain = await newest_chain(
                store, prefix, command.source, int(facts["system_identifier"])
            )
            base = chain[-1]
            start, consistent = scn_of(base.backup.start), scn_of(base.backup.consistent_at)
            archive = await read_archive(store, prefix, command.source, resetlogs_id_of(base))
            end = archive.end(start)
            facts |= {
                "chain": ",".join(m.backup.backup_id for m in chain)[:500],
                "size_bytes": str(sum(p.size for m in chain for p in m.oracle.pieces)),
                "consistent_scn": str(consistent),
                "archived_scn": str(end),
                "threads": ",".join(str(t) for t in archive.threads),
            }
            if end <= consistent:
                problems.append(
                    f"the bucket's archived logs reach SCN {end}, not past the chain's consistent "
                    f"point {consistent}: is the archiver streaming {command.source}?"
                )
        except EngineError as exc:
            problems.append(f"{exc.failure.reason} ({exc.failure.code})")
        return MigrationStepResult(step="preflight", facts=facts, problems=problems)
    if sides.target is None:
        return MigrationStepResult(
            step="preflight",
            problems=[
                f"the target {command.target} is not an Oracle instance of this node: the rman "
                "method restores into an instance declared in [[databases]]"
            ],
        )
    target = sides.target
    try:
        release = await target.release()
        system, endian = _node_platform()
        facts = {"release": release, "platform": system, "endian": endian}
        copy = await _copy_state(target)
        if copy is not None:
            problems.append(
                f"{target.name} already holds database DBID {copy.dbid} ({copy.open_mode}): the "
                "rman method restores into a new instance only (started NOMOUNT, no database)"
            )
        if sides.source is not None:
            source = await _source_facts(sides.source)
            problems += _platform_problems(source, release)
            if release_key(release) > release_key(source["release"]):
                facts["upgrade"] = f"{source['release']} -> {release}"
    except EngineError as exc:
        problems.append(f"{exc.failure.reason} ({exc.failure.code})")
    return MigrationStepResult(step="preflight", facts=facts, problems=problems)


async def _copy(
    sides: _Sides, command: RunMigrationCopy, store: BlobStore, prefix: str, ctx: JobContext
) -> MigrationStepResult:
    target = sides.need_target()
    chain = await newest_chain(store, prefix, command.source, None)
    base = chain[-1]
    copy = await _copy_state(target)
    if copy is not None and (copy.dbid != base.oracle.dbid or copy.open_mode != "MOUNTED"):
        raise EngineError.of(
            f"{target.name} holds database DBID {copy.dbid} ({copy.open_mode}), not a mounted "
            f"copy of {command.source} (DBID {base.oracle.dbid}): refusing to restore over it",
            code=CODE_NOT_NEW,
        )
    if copy is not None and copy.checkpoint is not None:  # a rerun: the copy exists
        done = await _round(
            target,
            copy,
            command,
            store=store,
            prefix=prefix,
            resetlogs_id=resetlogs_id_of(base),
            ctx=ctx,
        )
        return MigrationStepResult(
            step="copy",
            bytes_copied=done.bytes_staged,
            target_position=Scn(value=done.applied),
            facts={"applied_scn": str(done.applied), "restored": "earlier"},
        )
    applied, size = await _restore(
        target, chain, store=store, prefix=prefix, source=command.source, ctx=ctx
    )
    return MigrationStepResult(
        step="copy",
        bytes_copied=size,
        target_position=Scn(value=applied),
        facts={
            "applied_scn": str(applied),
            "chain": ",".join(m.backup.backup_id for m in chain)[:500],
        },
    )


async def _lag(
    sides: _Sides, command: RunMigrationLag, store: BlobStore, prefix: str, ctx: JobContext
) -> MigrationStepResult:
    target = sides.need_target()
    chain = await newest_chain(store, prefix, command.source, None)
    copy = await _mounted_copy(target, chain[-1].oracle.dbid)
    done = await _round(
        target,
        copy,
        command,
        store=store,
        prefix=prefix,
        resetlogs_id=resetlogs_id_of(chain[-1]),
        ctx=ctx,
    )
    # The copy first, then the archive, then the source: each can only have moved on since,
    # so the lag read is never less than the truth (a gate may wait longer, never open early).
    source_scn: int | None = None
    now: datetime | None = None
    if sides.source is not None:
        try:
            row = (await sides.source.rows("reading V$DATABASE", SOURCE_SQL))[0]
            source_scn, now = int(row["current_scn"]), _utc(row["now_utc"])
        except EngineError:
            pass  # fenced, down, unreachable: the archive's newest log stands in
    now = now or done.archive.newest_time()
    applied_at = done.archive.time_of(done.applied)
    seconds = (now - applied_at).total_seconds() if now and applied_at else 24 * 3600.0
    return MigrationStepResult(
        step="lag",
        lag_bytes=done.archive.bytes_after(done.applied),
        lag_seconds=max(0.0, seconds),
        source_position=Scn(value=source_scn) if source_scn is not None else None,
        target_position=Scn(value=done.applied),
        facts={
            "applied_scn": str(done.applied),
            "archived_scn": str(done.archive.end(done.applied)),
            "source_scn": "" if source_scn is None else str(source_scn),
            "rolled_forward": str(done.ran).lower(),
        },
    )


def _utc(value: object) -> datetime:
    if isinstance(value, datetime):
        return value if value.tzinfo else value.replace(tzinfo=UTC)
    return datetime.fromisoformat(str(value)).replace(tzinfo=UTC)


async def _fence(
    sides: _Sides, command: RunMigrationFence, store: BlobStore, prefix: str, ctx: JobContext
) -> MigrationStepResult:
    source = sides.need_source()
    fence_key, final_key = _keys(prefix, command)
    final = await _read(store, final_key, FinalRecord)
    if final is None:
        fence = await _read(store, fence_key, FenceRecord)
        if fence is None:
            row = (await source.rows("reading V$INSTANCE", INSTANCE_SQL))[0]
            fence = await _create(
                store,
                fence_key,
                FenceRecord(
                    restricted_before=str(row["logins"]) == "RESTRICTED",
                    release=str(row["version"]),
                ),
            )
        fenced_at = utcnow()
        await source.call("restricting the source", RESTRICT_SQL)
        await source.call("ending the sessions", KILL_SESSIONS_SQL)
        before = int((await source.rows("reading V$DATABASE", SOURCE_SQL))[0]["current_scn"])
        await source.call("switching the final log", SWITCH_SQL)
        rows = await source.rows("reading V$ARCHIVED_LOG", FINAL_LOGS_SQL)
        if not rows:
            raise EngineError.of(
                f"{source.name}: no archived log after the switch", code=CODE_ARCHIVE
            )
        final_scn = min(int(r["next_change#"]) for r in rows)
        if final_scn < before:
            raise EngineError.of(
                f"{source.name}: the final logs end at SCN {final_scn}, before the fenced "
                f"source's SCN {before}",
                code=CODE_POSITION,
            )
        final = await _create(
            store,
            final_key,
            FinalRecord(
                final_scn=final_scn,
                resetlogs_id=int(rows[0]["resetlogs_id"]),
                sequences={int(r["thread#"]): int(r["sequence#"]) for r in rows},
                fenced_at=fenced_at,
            ),
        )
    await _wait_archived(store, prefix, command.source, final, ctx)
    return MigrationStepResult(
        step="fence",
        source_position=Scn(value=final.final_scn - 1),
        at=final.fenced_at,
        facts={
            "final_scn": str(final.final_scn),
            "final_sequences": ",".join(f"{t}:{s}" for t, s in sorted(final.sequences.items())),
        },
    )


async def _wait_archived(
    store: BlobStore, prefix: str, uid: str, final: FinalRecord, ctx: JobContext
) -> None:
    """Until the bucket holds every thread's final log (the archiver streams them)."""
    lineage = Incarnation(resetlogs_id=final.resetlogs_id, resetlogs_scn=Scn(value=0))
    keys = [sequence_key(prefix, uid, lineage, t, s) for t, s in sorted(final.sequences.items())]
    deadline = time.monotonic() + ARCHIVE_WAIT_S
    while True:
        try:
            missing = [k for k in keys if await store.head(k) is None]
        except BlobStoreError as exc:
            raise EngineError.of(f"{exc}", code=CODE_STORE, retryable=True) from exc
        if not missing:
            return
        if time.monotonic() > deadline:
            raise EngineError.of(
                f"the bucket does not hold {', '.join(missing)} after {ARCHIVE_WAIT_S:g} s: is "
                f"the archiver streaming {uid}?",
                code=CODE_ARCHIVE,
                retryable=True,
            )
        await ctx.progress("archive", message=f"waiting for {len(missing)} final log(s)")
        await asyncio.sleep(POLL_S)


async def _unfence(
    sides: _Sides, command: RunMigrationUnfence, store: BlobStore, prefix: str
) -> MigrationStepResult:
    fence_key, _ = _keys(prefix, command)
    fence = await _read(store, fence_key, FenceRecord)
    if fence is None:  # never fenced: nothing was restricted
        return MigrationStepResult(step="unfence")
    if fence.restricted_before:
        return MigrationStepResult(step="unfence", facts={"restricted": "before the fence"})
    await sides.need_source().call("lifting the restriction", UNRESTRICT_SQL)
    return MigrationStepResult(step="unfence", facts={"restricted": "lifted"})


async def _final_sync(
    sides: _Sides, command: RunMigrationFinalSync, store: BlobStore, prefix: str, ctx: JobContext
) -> MigrationStepResult:
    target = sides.need_target()
    final = scn_of(command.source_final) + 1
    chain = await newest_chain(store, prefix, command.source, None)
    dbid, rid = chain[-1].oracle.dbid, resetlogs_id_of(chain[-1])
    deadline = time.monotonic() + ARCHIVE_WAIT_S
    while True:
        copy = await _mounted_copy(target, dbid)
        done = await _round(
            target,
            copy,
            command,
            store=store,
            prefix=prefix,
            resetlogs_id=rid,
            ctx=ctx,
            until=final,
        )
        if done.applied >= final or time.monotonic() > deadline:
            break
        await asyncio.sleep(POLL_S)
    if done.applied != final:
        raise EngineError.of(
            f"{target.name} recovered to SCN {done.applied}, not the source's final SCN {final}",
            code=CODE_POSITION if done.applied > final else CODE_ARCHIVE,
            retryable=done.applied < final,
        )
    return MigrationStepResult(
        step="final_sync",
        source_position=command.source_final,
        target_position=Scn(value=done.applied),
        facts={"final_scn": str(final), "applied_scn": str(done.applied)},
    )


async def _promote(
    sides: _Sides, command: RunMigrationPromote, store: BlobStore, prefix: str
) -> MigrationStepResult:
    target = sides.need_target()
    final = scn_of(command.source_final) + 1
    fence_key, _ = _keys(prefix, command)
    fence = await _read(store, fence_key, FenceRecord)
    release = await target.release()
    upgrade = fence is not None and release_key(release) > release_key(fence.release)
    copy = await _copy_state(target)
    if copy is None:
        raise EngineError.of(f"{target.name} holds no copy to open", code=CODE_NOT_NEW)
    if copy.open_mode == "MOUNTED":
        if copy.checkpoint != final:
            raise EngineError.of(
                f"{target.name} stands at SCN {copy.checkpoint}, not the source's final SCN "
                f"{final}: not opened",
                code=CODE_POSITION,
            )
        await _rman(target, OpenScript(upgrade=upgrade).render(), "RMAN open of the copy")
        copy = await _copy_state(target)
        assert copy is not None
    if copy.resetlogs_scn != final:
        raise EngineError.of(
            f"{target.name} opened at RESETLOGS_CHANGE# {copy.resetlogs_scn}, not the source's "
            f"final SCN {final}",
            code=CODE_POSITION,
        )
    facts = {"system_identifier": str(copy.dbid), "final_scn": str(final), "release": release}
    if upgrade:
        assert fence is not None
        facts["upgrade"] = (
            f"pending: opened OPEN RESETLOGS UPGRADE ({fence.release} -> {release}); what "
            "remains is the upgrade itself (AutoUpgrade or dbupgrade in the new home), then a "
            "restart: until then only the upgrade may use the database"
        )
    return MigrationStepResult(
        step="promote",
        source_position=command.source_final,
        target_position=Scn(value=copy.resetlogs_scn),
        at=utcnow(),
        endpoint=_endpoint(target.db, command.target_instance.node),
        facts=facts,
    )


async def run_step(
    settings: EngineSettings,
    db: HostedDatabase,
    command: MigrationStep,
    *,
    store: BlobStore,
    prefix: str,
    sql_of: Any,
    ctx: JobContext,
) -> MigrationStepResult:
    """One step of the `rman` method (module docstring)."""
    assert command.method is MigrationMethod.RMAN
    sides = _Sides(settings, db, command, sql_of)
    if isinstance(command, RunMigrationPreflight):
        return await _preflight(sides, command, store, prefix)
    if isinstance(command, RunMigrationCopy):
        return await _copy(sides, command, store, prefix, ctx)
    if isinstance(command, RunMigrationLag):
        return await _lag(sides, command, store, prefix, ctx)
    if isinstance(command, RunMigrationFence):
        return await _fence(sides, command, store, prefix, ctx)
    if isinstance(command, RunMigrationUnfence):
        return await _unfence(sides, command, store, prefix)
    if isinstance(command, RunMigrationFinalSync):
        return await _final_sync(sides, command, store, prefix, ctx)
    if isinstance(command, RunMigrationPromote):
        return await _promote(sides, command, store, prefix)
    raise EngineError.of(
        f"rman has no {command.TYPE} step: it prepares nothing before the copy, compares no "
        "rows (the copy is the source's own blocks), and keeps no way back after the open",
        code=CODE_UNSUPPORTED,
    )
