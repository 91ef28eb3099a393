"""Restore a PostgreSQL base backup and recover it from the archive to a target.

Phases, each reported through ``ctx.progress``:

``prepare``
    Check the backup fits this node (server major version, system identifier). In place: stop the
    cluster (``pg_ctl stop -m fast``) and move its data directory aside to
    ``<data_dir>.tidemark-old-<restore8>``. Clone: the target directory must be new or empty.
``download``
    Stream the tar parts in order from the store (each verified against its crc32c, zstd frames
    decoded) into ``tarfile``, which extracts them with the ``data`` filter (no absolute paths,
    no ``..``, no links leaving the directory, no devices). Nothing is staged whole on disk.
``configure``
    Give every file to the database's OS user, data directory 0700, no stale ``postmaster.pid``;
    write ``recovery.signal`` and the settings (``postgresql.auto.conf``, read last, so it wins
    over ``postgresql.conf`` and its includes): ``restore_command`` = ``wal-fetch`` on this
    restore's fetch server, the recovery target, and for a clone its own ``port`` and socket
    directory with archiving off — a clone must never archive into its source's prefix.
``recover``
    Start the server and follow ``pg_last_wal_replay_lsn()`` until ``pg_is_in_recovery()`` is
    false. A server that exits instead fails the restore with its own FATAL line, e.g. "recovery
    ended before configured recovery target was reached".
``finish``
    Read the new timeline from the current WAL segment's name and its branch point from
    the new timeline's history file — the exact LSN where recovery ended, which is what the
    restore reached — with ``pg_last_xact_replay_timestamp()`` as the time reached (it stays at
    the last replayed commit after promotion). The recovery settings are then removed from
    ``postgresql.auto.conf`` (they name a socket that is about to disappear) and the server
    reloaded.

In place, on any failure the new data directory is removed, the old one put back and, if it was
running, started again — a failed restore leaves the database as it found it. On success the old
directory stays aside, never deleted by the restore: it is the only copy of whatever the restore
abandoned (a wrong target is a mistake found only later). `tidemark leftovers` lists such
directories and removes them when told (they hold a second copy of the database's volume).

The phases live in their own modules; this one holds the sequence, the rollback and the
translation of the plan's target into ``recovery_target*`` settings:

    instance.py        the cluster being restored (start, stop, query as its OS user)  prepare
    extract.py         the base backup's parts streamed into the data directory       download
    recovery_conf.py   ``postgresql.auto.conf`` and the ``restore_command`` rig        configure
    recovery.py        start in archive recovery, follow it, read where it ended   recover, finish

``verify.py`` reuses the pieces (:func:`.extract.load_manifest`, :func:`.extract.extract_base`,
:class:`.instance.Instance`...).
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from schemas import Lsn, Timeline
from schemas.messages import RestoreResult, RunRestore
from schemas.messages.restores import (
    RestoreMode,
    TargetImmediate,
    TargetName,
    TargetPosition,
    TargetTime,
    TargetXid,
)
from services.blobstore import BlobStore
from services.engines.base import JobContext
from services.engines.postgres.extract import extract_base, load_manifest, prepare_data_dir
from services.engines.postgres.fetchserver import FetchStats
from services.engines.postgres.instance import Instance, _fail, server_major
from services.engines.postgres.manifest import BaseManifest
from services.engines.postgres.oscmd import chown_to
from services.engines.postgres.recovery import RecoveryOutcome, recover
from services.engines.postgres.walfile import format_lsn
from services.engines.settings import EngineSettings, HostedDatabase

__all__ = [
    "Instance",
    "RecoveryOutcome",
    "extract_base",
    "load_manifest",
    "recovery_settings",
    "restore",
]

log = logging.getLogger(__name__)

RECOVERY_SETTINGS = frozenset(
    {
        "recovery_target",
        "recovery_target_lsn",
        "recovery_target_time",
        "recovery_target_xid",
        "recovery_target_name",
        "recovery_target_inclusive",
        "recovery_target_timeline",
        "recovery_target_action",
    }
)
"""What a restore plan may set: a command must not be a way to set ``archive_command``."""
TARGET_SETTINGS = frozenset(
    {
        "recovery_target",
        "recovery_target_lsn",
        "recovery_target_time",
        "recovery_target_xid",
        "recovery_target_name",
    }
)
CLONE_OVERRIDES = ("port", "unix_socket_directories", "archive_mode", "archive_command")


# -- the target, in PostgreSQL's words ----------------------------------------------------------


def recovery_settings(command: RunRestore) -> dict[str, str]:
    """The ``recovery_target*`` settings for ``command``: the catalog's, completed from the
    target where the catalog gave none."""
    given = dict(command.plan.recovery)
    unknown = sorted(set(given) - RECOVERY_SETTINGS)
    if unknown:
        raise _fail(f"the restore plan sets {', '.join(unknown)}, which a restore may not set")
    settings = dict(given)
    target = command.target
    if not TARGET_SETTINGS & set(given):
        if isinstance(target, TargetTime):
            settings["recovery_target_time"] = target.at.isoformat(sep=" ")
        elif isinstance(target, TargetPosition):
            if target.position.kind != "lsn":
                raise _fail("a PostgreSQL restore targets an LSN, not an SCN")
            settings["recovery_target_lsn"] = str(target.position)
        elif isinstance(target, TargetXid):
            settings["recovery_target_xid"] = str(target.xid)
        elif isinstance(target, TargetName):
            settings["recovery_target_name"] = target.name
        elif isinstance(target, TargetImmediate):
            settings["recovery_target"] = "immediate"
        else:
            raise _fail(f"a PostgreSQL restore cannot target {target.kind}")
    if "recovery_target_time" in settings:
        settings.setdefault("recovery_target_inclusive", "true")
    lineage = command.plan.lineage
    if isinstance(lineage, Timeline):
        settings.setdefault("recovery_target_timeline", str(lineage.id))
    settings.setdefault("recovery_target_action", "promote")
    return settings


# -- restore ---------------------------------------------------------------------------------------


def _is_empty_dir(path: Path) -> bool:
    return path.is_dir() and not any(path.iterdir())


def _clear(path: Path, *, keep_dir: bool) -> None:
    if keep_dir and path.is_dir():
        for child in path.iterdir():
            if child.is_dir() and not child.is_symlink():
                shutil.rmtree(child, ignore_errors=True)
            else:
                child.unlink(missing_ok=True)
    else:
        shutil.rmtree(path, ignore_errors=True)


@contextlib.contextmanager
def _moved_aside(data_dir: Path, aside: Path) -> Iterator[None]:
    """Move ``data_dir`` to ``aside`` for the block; put it back if the block fails."""
    had = data_dir.exists()
    if aside.exists():
        raise _fail(f"{aside} exists: a previous restore left it; look at it and remove it")
    if had:
        os.rename(data_dir, aside)
    try:
        yield
    except BaseException:
        shutil.rmtree(data_dir, ignore_errors=True)
        if had:
            os.rename(aside, data_dir)
        raise


async def restore(
    db: HostedDatabase,
    command: RunRestore,
    *,
    store: BlobStore,
    prefix: str,
    ctx: JobContext,
    settings: EngineSettings,
    stats: FetchStats | None = None,
) -> RestoreResult:
    """Restore ``db`` (in place or as a clone) to ``command.target``; see the module docstring.

    ``stats`` (optional) is filled with the fetch server's figures (``wal_fetch`` throughput).
    """
    if db.postgres is None:
        raise _fail(f"database {db.uid} is not a PostgreSQL database")
    tag = command.restore_id.hex[-8:]  # the random end of a UUIDv7, not its clock
    source = Instance.of(db.postgres)
    stats = stats if stats is not None else FetchStats()
    await ctx.progress("prepare", message="reading the base backup's manifest")
    manifest = await load_manifest(store, command.plan.base_manifest_key)
    pg = manifest.postgres
    major = await server_major(source.bindir, source.user)
    if pg.pg_version // 10000 != major:
        raise _fail(
            f"the base backup is from PostgreSQL {pg.pg_version // 10000}, this node's server "
            f"binaries ({source.bindir}) are {major}"
        )
    if db.system_id is not None and pg.system_id != db.system_id:
        raise _fail(
            f"the base backup is of system {pg.system_id}, database {db.uid} is {db.system_id}"
        )
    target_settings = recovery_settings(command)
    goal = command.target.position.value if isinstance(command.target, TargetPosition) else None
    job = _Rebuild(
        manifest=manifest,
        command=command,
        store=store,
        prefix=prefix,
        uid=db.uid,
        ctx=ctx,
        settings=settings,
        target_settings=target_settings,
        tag=tag,
        start_lsn=manifest.backup.start.value,
        goal_lsn=goal,
        stats=stats,
    )
    if command.mode is RestoreMode.CLONE:
        assert command.clone is not None
        inst = Instance(
            data_dir=Path(command.clone.data_dir),
            port=command.clone.port,
            socket_dir=source.socket_dir,
            user=source.user,
            bindir=source.bindir,
            dbname=source.dbname,
            password_file=source.password_file,
        )
        overrides = {
            "port": str(inst.port),
            "unix_socket_directories": str(inst.socket_dir),
            "archive_mode": "off",
            "archive_command": "",
        }
        return await _restore_clone(inst, job, overrides)
    return await _restore_in_place(source, job)


@dataclass(frozen=True)
class _Rebuild:
    """What both kinds of restore do in an empty data directory: lay the base down, configure
    recovery, recover. A clone and an in-place restore differ only around it."""

    manifest: BaseManifest
    command: RunRestore
    store: BlobStore
    prefix: str
    uid: str
    ctx: JobContext
    settings: EngineSettings
    target_settings: dict[str, str]
    tag: str
    start_lsn: int
    goal_lsn: int | None
    stats: FetchStats

    async def run(self, inst: Instance, overrides: dict[str, str], where: str) -> RecoveryOutcome:
        """Into `inst.data_dir`; on any failure the server it started is stopped."""
        try:
            await extract_base(self.store, self.manifest, inst.data_dir, inst.user, self.ctx)
            await self.ctx.progress("configure", message=where)
            prepare_data_dir(inst.data_dir, inst.user)
            return await recover(
                inst,
                store=self.store,
                prefix=self.prefix,
                uid=self.uid,
                plan_keys=list(self.command.plan.log_keys),
                settings=self.target_settings,
                overrides=overrides,
                ctx=self.ctx,
                prefetch=self.settings.prefetch,
                tag=self.tag,
                start_lsn=self.start_lsn,
                goal_lsn=self.goal_lsn,
                stats=self.stats,
            )
        except BaseException:
            with contextlib.suppress(Exception):
                await inst.stop("immediate")
            raise


async def _restore_clone(inst: Instance, job: _Rebuild, overrides: dict[str, str]) -> RestoreResult:
    data_dir = inst.data_dir
    existed = data_dir.exists()
    if existed and not _is_empty_dir(data_dir):
        raise _fail(f"clone directory {data_dir} is not empty; a clone is restored into a new one")
    data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    chown_to(data_dir, inst.user)
    try:
        outcome = await job.run(inst, overrides, f"clone on port {inst.port}")
    except BaseException:
        _clear(data_dir, keep_dir=existed)
        raise
    return _result(outcome, job.stats, job.tag)


async def _restore_in_place(inst: Instance, job: _Rebuild) -> RestoreResult:
    data_dir = inst.data_dir
    aside = data_dir.with_name(f"{data_dir.name}.tidemark-old-{job.tag}")
    was_running = data_dir.exists() and await inst.is_running()
    if was_running:
        await job.ctx.progress("prepare", message=f"stopping the cluster in {data_dir}")
        await inst.stop("fast")
    try:
        with _moved_aside(data_dir, aside):
            data_dir.mkdir(mode=0o700)
            chown_to(data_dir, inst.user)
            outcome = await job.run(inst, {}, f"in place in {data_dir}")
    except BaseException:
        if was_running:  # leave the database as we found it
            inst.pid = None
            with contextlib.suppress(Exception):
                await inst.start(data_dir / "log" / f"tidemark-rollback-{job.tag}.log")
        raise
    # Kept, not deleted (see the module docstring): `tidemark leftovers` removes it when told.
    log.info("restore %s: the previous data directory is kept at %s", job.tag, aside)
    return _result(outcome, job.stats, job.tag)


def _result(outcome: RecoveryOutcome, stats: FetchStats, tag: str) -> RestoreResult:
    log.info(
        "restore %s reached %s on timeline %d (%s); wal fetch: %d files, %.1f MiB at %.1f MiB/s, "
        "%d prefetch hits",
        tag,
        format_lsn(outcome.branch_lsn),
        outcome.timeline,
        outcome.reason,
        stats.served,
        stats.fetched_bytes / (1 << 20),
        stats.fetch_mib_s,
        stats.prefetch_hits,
    )
    branch = Lsn(value=outcome.branch_lsn)
    return RestoreResult(
        reached=branch,
        reached_time=outcome.last_xact_time,
        lineage=Timeline(id=outcome.timeline, parent=outcome.parent, branch_lsn=branch),
    )
