"""The executor's migration steps on PostgreSQL: a `migration.<step>` command in, the step's
functions (standby.py, cutover.py, rollback.py, archive.py) run as the cluster's OS user, a
`MigrationStepResult` out.

Which clusters a step touches:

- the **source** is a database this node hosts (`[[databases]]`, by the command's `source`);
- the **target** is the command's `target_instance`: its data directory and port, with the
  socket directory, binaries and OS user of its own declaration when this node declares the
  target's uid, else of the source (a target built beside its source, on the source's node).

A source on another node than its target (pg_basebackup over the network, with a replication
credential) is not a path Tidemark has yet: the preflight says so rather than trying.

Every blocking step runs in a worker thread; a long copy reports its bytes as it goes.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import socket
from pathlib import Path

from schemas import Lsn, utcnow
from schemas.messages import (
    ConnectionEndpoint,
    MigrationMethod,
    MigrationStep,
    MigrationStepResult,
    RunMigrationCopy,
    RunMigrationFence,
    RunMigrationFinalSync,
    RunMigrationLag,
    RunMigrationParity,
    RunMigrationPreflight,
    RunMigrationPrepare,
    RunMigrationPromote,
    RunMigrationRewind,
    RunMigrationUnfence,
)
from schemas.positions import parse_lsn
from services.blobstore import BlobStore
from services.blobstore.layout import database_prefix
from services.engines.base import EngineError, JobContext
from services.engines.postgres.migration import logical_steps as ls
from services.engines.postgres.migration.archive import (
    ArchiveFeed,
    build_from_archive,
    fence_archived_source,
    follow_archive,
    latest_base_backup,
    measure_archive_lag,
    unfence_archived_source,
)
from services.engines.postgres.migration.cutover import (
    FENCE_SETTING,
    fence_source,
    promote_target,
    unfence_source,
    verify_positions,
    wait_replayed,
)
from services.engines.postgres.migration.dump import (
    dump_to_store,
    read_manifest,
    restore_from_store,
)
from services.engines.postgres.migration.fingerprints import Fingerprint, compare, fingerprint
from services.engines.postgres.migration.instance import (
    CODE_STEP,
    MigrationStepError,
    PgInstance,
    blocking,
    dir_size,
)
from services.engines.postgres.migration.logical import (
    LogicalLag,
    fence_for_logical,
    logical_lag,
    start_replication,
)
from services.engines.postgres.migration.logical import (
    _copy_roles as copy_roles,
)
from services.engines.postgres.migration.preflight import gather_facts
from services.engines.postgres.migration.rollback import follow_new_primary
from services.engines.postgres.migration.standby import build_standby, measure_lag, slot_name
from services.engines.postgres.releases import ReleaseNotFound, release_bindir
from services.engines.postgres.sql import PgTarget
from services.engines.settings import EngineSettings, HostedDatabase

CODE_UNSUPPORTED = "TM-PG-MIGRATION-UNSUPPORTED"

STREAM = MigrationMethod.PHYSICAL_STREAM
ARCHIVE = MigrationMethod.PHYSICAL_ARCHIVE
LOGICAL = MigrationMethod.LOGICAL_UPGRADE
DUMP = MigrationMethod.DUMP
METHODS = frozenset({STREAM, ARCHIVE, LOGICAL, DUMP})
DUMP_JOBS = 2
"""pg_dump and pg_restore jobs of a `dump` migration without the `jobs` option."""
"""The methods whose steps this module runs."""

REPLICATION_ONLY = ("replication", "wal_senders", "slots")
"""Preflight problems that matter only when the target streams from the source."""


class ArchiveFeeds:
    """The fetch servers of this node's `physical-archive` targets, one per migration, each
    held open by its own task from the copy to the promote (or the abort), across jobs. After an
    executor restart the next step opens it again (`follow_archive` re-attaches the target)."""

    def __init__(self) -> None:
        self._feeds: dict[str, tuple[asyncio.Task[None], asyncio.Event, ArchiveFeed]] = {}

    async def ensure(
        self, target: PgInstance, *, store: BlobStore, prefix: str, uid: str, migration: str
    ) -> ArchiveFeed:
        held = self._feeds.get(migration)
        if held is not None and not held[0].done():
            return held[2]
        ready: asyncio.Future[ArchiveFeed] = asyncio.get_running_loop().create_future()
        stop = asyncio.Event()

        async def hold() -> None:
            try:
                async with follow_archive(
                    target, store=store, prefix=prefix, uid=uid, migration=migration
                ) as feed:
                    ready.set_result(feed)
                    await stop.wait()
            except BaseException as exc:
                if not ready.done():
                    ready.set_exception(exc)
                raise

        task = asyncio.create_task(hold(), name=f"archive feed {migration}")
        feed = await ready
        self._feeds[migration] = (task, stop, feed)
        return feed

    async def close(self, migration: str) -> None:
        held = self._feeds.pop(migration, None)
        if held is None:
            return
        task, stop, _ = held
        stop.set()
        with contextlib.suppress(Exception):
            await task


FEEDS = ArchiveFeeds()
"""This process's feeds (the engine has one instance per node; so has this)."""


def _instance(target: PgTarget, data_dir: Path, port: int) -> PgInstance:
    return PgInstance(
        data_dir=data_dir,
        socket_dir=target.socket_dir,
        port=port,
        bindir=target.bindir,
        user=target.user,
        role=target.role,
    )


class Sides:
    """The source and target instances of one step, from the node's declarations."""

    def __init__(
        self, settings: EngineSettings, db: HostedDatabase, command: MigrationStep
    ) -> None:
        self.command = command
        source = db if db.uid == command.source else settings.database(command.source)
        self.source_db = source
        if source is not None and source.postgres is not None:
            pg = PgTarget.of(source)
            self.source: PgInstance | None = _instance(pg, source.postgres.data_dir, pg.port)
        else:
            self.source = None
        declared = db if db.uid == command.target else settings.database(command.target)
        basis = declared if declared is not None and declared.postgres is not None else source
        self.target: PgInstance | None = None
        self.release_missing: str | None = None
        """Why the target's release cannot run here (not on this node), if it cannot."""
        spec = command.target_instance
        if basis is not None and basis.postgres is not None:
            pg = PgTarget.of(basis)
            if spec.release is not None:
                try:
                    bindir = release_bindir(spec.release, settings.postgres_bin_dirs)
                except ReleaseNotFound as exc:
                    self.release_missing = str(exc)
                else:
                    pg = dataclasses.replace(pg, bindir=bindir)
            data_dir = spec.data_dir or (
                declared.postgres.data_dir if declared is basis and declared.postgres else None
            )
            port = spec.port or (
                declared.postgres.port if declared is basis and declared.postgres else None
            )
            if data_dir is not None and port is not None:
                self.target = _instance(pg, Path(data_dir), port)
        self.slot = slot_name(str(command.migration_id))
        self.dbname = command.options.get("database") or (
            source.postgres.dbname if source is not None and source.postgres else "postgres"
        )
        """The database a logical method moves (`options.database`, else the source's)."""

    def need_source(self) -> PgInstance:
        if self.source is None:
            raise EngineError.of(
                f"the source {self.command.source} is not hosted on this node: a target on "
                "another node than its source is not supported yet",
                code=CODE_UNSUPPORTED,
            )
        return self.source

    def need_target(self) -> PgInstance:
        if self.release_missing is not None:
            raise EngineError.of(self.release_missing, code=CODE_UNSUPPORTED)
        if self.target is None:
            raise EngineError.of(
                f"target {self.command.target}: a PostgreSQL target needs a data directory and "
                "a port (target_instance.data_dir/port, or its own declaration on this node)",
                code=CODE_UNSUPPORTED,
            )
        return self.target


def _lsn(value: int) -> Lsn:
    return Lsn(value=value)


def _endpoint(node: str, port: int, database: str = "postgres") -> ConnectionEndpoint:
    host = node if all(c.isalnum() or c in ".-" for c in node) else socket.gethostname()
    return ConnectionEndpoint(host=host, port=port, database=database)


async def run_step(
    settings: EngineSettings,
    db: HostedDatabase,
    command: MigrationStep,
    *,
    store: BlobStore,
    prefix: str,
    ctx: JobContext,
) -> MigrationStepResult:
    if command.method not in METHODS:
        raise EngineError.of(
            f"the PostgreSQL engine has no {command.method.value} steps yet "
            f"(it has: {', '.join(sorted(m.value for m in METHODS))})",
            code=CODE_UNSUPPORTED,
        )
    sides = Sides(settings, db, command)
    if command.method is LOGICAL:
        return await _logical_step(sides, command, ctx)
    if command.method is DUMP:
        return await _dump_step(sides, command, store=store, prefix=prefix, ctx=ctx)
    if command.method is ARCHIVE and not isinstance(command, RunMigrationPreflight):
        return await _archive_step(sides, command, store=store, prefix=prefix, ctx=ctx)
    if isinstance(command, RunMigrationPreflight):
        return await _preflight(sides, command, store=store, prefix=prefix)
    if isinstance(command, RunMigrationCopy):
        return await _copy(sides, ctx)
    if isinstance(command, RunMigrationLag):
        source, target = sides.need_source(), sides.need_target()
        lag = await blocking(lambda: measure_lag(source, target, slot=sides.slot))
        return MigrationStepResult(
            step="lag",
            lag_bytes=lag.bytes,
            lag_seconds=lag.seconds,
            source_position=_lsn(lag.source_lsn),
            target_position=_lsn(lag.replayed_lsn),
        )
    if isinstance(command, RunMigrationFence):
        source = sides.need_source()
        at = utcnow()
        fence = await blocking(lambda: fence_source(source))
        return MigrationStepResult(step="fence", source_position=_lsn(fence.final_lsn), at=at)
    if isinstance(command, RunMigrationUnfence):
        await blocking(lambda: _unfence(sides))
        return MigrationStepResult(step="unfence")
    if isinstance(command, RunMigrationFinalSync):
        return await _final_sync(sides.need_target(), command)
    if isinstance(command, RunMigrationPromote):
        return await _promote(sides.need_target(), command)
    if isinstance(command, RunMigrationRewind):
        return await _rewind(sides, command)
    raise EngineError.of(f"unknown migration step {command.TYPE}", code=CODE_UNSUPPORTED)


async def _archive_step(
    sides: Sides,
    command: MigrationStep,
    *,
    store: BlobStore,
    prefix: str,
    ctx: JobContext,
) -> MigrationStepResult:
    """A `physical-archive` step: the target fed by the archive through this node's feed."""
    migration = str(command.migration_id)

    async def feed() -> ArchiveFeed:
        target = sides.need_target()
        return await FEEDS.ensure(
            target, store=store, prefix=prefix, uid=command.source, migration=migration
        )

    if isinstance(command, RunMigrationCopy):
        source_db = sides.source_db
        if source_db is None:
            sides.need_source()
        assert source_db is not None
        target = sides.need_target()
        try:
            copied = await build_from_archive(
                source_db, target, await feed(), store=store, prefix=prefix, ctx=ctx
            )
        except MigrationStepError as exc:
            raise EngineError.of(exc.reason, code=CODE_STEP, retryable=exc.retryable) from None
        return MigrationStepResult(step="copy", bytes_copied=copied)
    if isinstance(command, RunMigrationLag):
        target = sides.need_target()
        await feed()
        try:
            lag = await measure_archive_lag(
                target, store=store, prefix=prefix, uid=command.source, source=sides.source
            )
        except MigrationStepError as exc:
            raise EngineError.of(exc.reason, code=CODE_STEP, retryable=True) from None
        return MigrationStepResult(
            step="lag",
            lag_bytes=lag.bytes,
            lag_seconds=lag.seconds,
            source_position=_lsn(
                lag.source_lsn if lag.source_lsn is not None else lag.archived_lsn
            ),
            target_position=_lsn(lag.replayed_lsn),
        )
    if isinstance(command, RunMigrationFence):
        source = sides.need_source()
        at = utcnow()
        fence = await blocking(lambda: fence_archived_source(source))
        return MigrationStepResult(step="fence", source_position=_lsn(fence.final_lsn), at=at)
    if isinstance(command, RunMigrationUnfence):
        source = sides.need_source()
        standby = sides.target

        def undo() -> None:
            if standby is not None and standby.is_running():
                if standby.value("SELECT pg_is_in_recovery()") != "t":
                    raise MigrationStepError(
                        "the target accepts writes (it was promoted): unfencing the source now "
                        "would make two writable primaries"
                    )
                standby.pg_ctl("stop", "-m", "fast")
            unfence_archived_source(source)

        await blocking(undo)
        await FEEDS.close(migration)
        return MigrationStepResult(step="unfence")
    if isinstance(command, RunMigrationFinalSync):
        await feed()
        return await _final_sync(sides.need_target(), command)
    if isinstance(command, RunMigrationPromote):
        await feed()
        promoted = await _promote(sides.need_target(), command)
        await FEEDS.close(migration)  # promoted: the target reads no more of the archive
        return promoted
    raise EngineError.of(
        f"physical-archive has no {command.TYPE} step: it keeps no way back after the cutover",
        code=CODE_UNSUPPORTED,
    )


async def _final_sync(target: PgInstance, command: RunMigrationFinalSync) -> MigrationStepResult:
    """The target has replayed past the source's final position (both methods alike)."""
    final = command.source_final.value
    replayed = await blocking(lambda: wait_replayed(target, final))
    await blocking(lambda: verify_positions(target, final))
    return MigrationStepResult(
        step="final_sync", source_position=command.source_final, target_position=_lsn(replayed)
    )


async def _promote(target: PgInstance, command: RunMigrationPromote) -> MigrationStepResult:
    """The point of no return: the verified standby opened; when it took writes, and where."""
    final = command.source_final.value
    opened = await blocking(lambda: promote_target(target, final))
    writable = utcnow()
    return MigrationStepResult(
        step="promote",
        source_position=command.source_final,
        target_position=_lsn(opened),
        at=writable,
        facts=await blocking(lambda: _identity(target)),
        endpoint=_endpoint(command.target_instance.node, target.port),
    )


def _identity(instance: PgInstance) -> dict[str, str]:
    row = instance.rows(
        "SELECT system_identifier, current_setting('server_version_num') FROM pg_control_system()"
    )[0]
    return {"system_identifier": row[0], "version_num": row[1]}


async def _preflight(
    sides: Sides, command: RunMigrationPreflight, *, store: BlobStore, prefix: str
) -> MigrationStepResult:
    """Facts of one side, and why it cannot take part. Changes nothing."""
    if command.side == "source":
        source = sides.need_source()
        facts = await blocking(lambda: gather_facts(source))
        identity = await blocking(lambda: _identity(source))
        problems = facts.problems_as_source()
        if not (facts.data_checksums or facts.wal_log_hints):
            # Not a stop for the copy: only the way back (pg_rewind) needs one of them, and the
            # planner refuses a rollback it could not do.
            problems = [p for p in problems if "pg_rewind" not in p]
            identity["rollback"] = "impossible"
        if command.method is ARCHIVE:
            problems = [p for p in problems if not any(w in p for w in REPLICATION_ONLY)]
            assert sides.source_db is not None
            try:
                base = await latest_base_backup(store, prefix, sides.source_db)
            except EngineError as exc:
                problems.append(
                    "physical-archive starts from a base backup in the archive: "
                    + exc.failure.reason
                )
            else:
                identity["base_backup"] = base.backup.backup_id
        return MigrationStepResult(
            step="preflight",
            facts={
                **identity,
                "major": str(facts.major),
                "size_bytes": str(facts.size_bytes),
                "encoding": facts.encoding,
                "collate": facts.collate,
                "data_checksums": str(facts.data_checksums).lower(),
                "wal_log_hints": str(facts.wal_log_hints).lower(),
                "extensions": ",".join(f"{k}={v}" for k, v in sorted(facts.extensions.items())),
            },
            problems=problems,
        )
    return await blocking(lambda: _target_preflight(sides))


def _target_preflight(sides: Sides) -> MigrationStepResult:
    problems: list[str] = []
    if sides.source is None:
        problems.append(
            f"the source {sides.command.source} is not hosted on the target's node: a target on "
            "another node than its source is not supported yet"
        )
    target = sides.target
    if target is None:
        problems.append(
            "a PostgreSQL target needs a data directory and a port (--data-dir, --port)"
        )
        return MigrationStepResult(step="preflight", problems=problems)
    facts = {"data_dir": str(target.data_dir), "port": str(target.port)}
    ours = (target.data_dir / "standby.signal").exists() and _follows_slot(target, sides.slot)
    if target.data_dir.exists() and any(target.data_dir.iterdir()) and not ours:
        problems.append(
            f"the target directory {target.data_dir} is not empty; a migration never writes "
            "over existing files (give an empty or new directory)"
        )
    elif not target.data_dir.exists() and not target.data_dir.parent.is_dir():
        problems.append(f"the target directory's parent {target.data_dir.parent} does not exist")
    if not ours and _port_in_use(target):
        problems.append(f"port {target.port} is already in use on this node")
    if sides.source is not None and sides.source.port == target.port:
        problems.append("the target's port is the source's")
    version = target.run("postgres", ["--version"]) if (target.bindir / "postgres").exists() else ""
    facts["server"] = version.strip()
    return MigrationStepResult(step="preflight", facts=facts, problems=problems)


def _follows_slot(target: PgInstance, slot: str) -> bool:
    auto = target.data_dir / "postgresql.auto.conf"
    try:
        return slot in auto.read_text(encoding="utf-8")
    except OSError:
        return False


def _port_in_use(target: PgInstance) -> bool:
    if (target.socket_dir / f".s.PGSQL.{target.port}").exists():
        return True
    with socket.socket() as probe:
        probe.settimeout(0.5)
        return probe.connect_ex(("127.0.0.1", target.port)) == 0


async def _copy(sides: Sides, ctx: JobContext) -> MigrationStepResult:
    source, target = sides.need_source(), sides.need_target()
    total = int(
        await blocking(lambda: source.value("SELECT sum(pg_database_size(oid)) FROM pg_database"))
    )
    await ctx.progress("copying", done=0, total=total, unit="bytes")
    work = asyncio.create_task(blocking(lambda: build_standby(source, target, slot=sides.slot)))
    while not work.done():
        await asyncio.wait({work}, timeout=1.0)
        if not work.done():
            done = await asyncio.to_thread(dir_size, target.data_dir)
            await ctx.progress("copying", done=done, total=max(total, done), unit="bytes")
    copied = await work
    await ctx.progress("copying", done=copied, total=max(total, copied), unit="bytes")
    return MigrationStepResult(step="copy", bytes_copied=copied)


def _unfence(sides: Sides) -> None:
    """Abort before the point of no return: the source serves as before, the migration's slot
    is dropped (it would keep the source's WAL forever), and a target standby on this node is
    stopped (its directory is kept: nothing is deleted)."""
    source = sides.need_source()
    target = sides.target
    if target is not None and target.is_running():
        if target.value("SELECT pg_is_in_recovery()") != "t":
            raise MigrationStepError(
                "the target accepts writes (it was promoted): unfencing the source now would "
                "make two writable primaries; roll back instead"
            )
        target.pg_ctl("stop", "-m", "fast")
    if not source.is_running() or source.value(f"SHOW {FENCE_SETTING}") == "on":
        unfence_source(source)
    source.rows(
        "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots "
        "WHERE slot_name = :'slot' AND NOT active",
        {"slot": sides.slot},
    )


async def _rewind(sides: Sides, command: RunMigrationRewind) -> MigrationStepResult:
    """Rollback after the point of no return, as a second switchover: the old source follows
    the new primary (pg_rewind where its history diverged) and catches up with every commit
    the target took; then the target is fenced (stopped cleanly, its directory kept), and the
    old source replays through the target's final position and is promoted. Rerunnable from
    any point: each part finds what an earlier run did. The target is left stopped rather
    than made to follow the old source again: a second migration builds a fresh one."""
    old, new = sides.need_source(), sides.need_target()
    slot = (sides.slot + "_back")[:63]

    def primary(instance: PgInstance) -> bool:
        return instance.is_running() and instance.value("SELECT pg_is_in_recovery()") == "f"

    def switch_back() -> tuple[int | None, int]:
        final: int | None = None
        if not primary(old):
            follow_new_primary(old, new, slot=slot)
            fence = fence_source(new)
            final = fence.final_lsn
            wait_replayed(old, final)
            promote_target(old, final)
        elif primary(new):
            raise MigrationStepError(
                "both the old source and the target accept writes: two primaries; stop one and "
                "decide which side's commits to keep"
            )
        return final, parse_lsn(old.value("SELECT pg_current_wal_lsn()"))

    final, position = await blocking(switch_back)
    return MigrationStepResult(
        step="rewind",
        source_position=_lsn(position),
        target_position=None if final is None else _lsn(final),
        at=utcnow(),
        endpoint=_endpoint(command.target_instance.node, old.port),
        facts={"target_following": "false"},
    )


async def _logical_step(
    sides: Sides, command: MigrationStep, ctx: JobContext
) -> MigrationStepResult:
    """A `logical-upgrade` step (`logical_steps.py` says what each does)."""
    name, back = ls.names(sides.slot)
    db, migration = sides.dbname, str(command.migration_id)
    if isinstance(command, RunMigrationPreflight):
        return await blocking(lambda: _logical_preflight(sides, command, replicates=True))
    source = sides.need_source()
    if isinstance(command, RunMigrationUnfence):
        await blocking(lambda: ls.abort(source, sides.target, db, name, back))
        return MigrationStepResult(step="unfence")
    target = sides.need_target()
    if isinstance(command, RunMigrationPrepare):
        facts = await blocking(lambda: ls.prepare(source, target, db, migration))
        return MigrationStepResult(step="prepare", facts=facts)
    if isinstance(command, RunMigrationCopy):
        return await _logical_copy(source, target, db, name, ctx)
    if isinstance(command, RunMigrationLag):

        def sample() -> tuple[LogicalLag, str]:
            return logical_lag(source, target, name), ls.schema_signature(source, db)

        lag, signature = await blocking(sample)
        return MigrationStepResult(
            step="lag",
            lag_bytes=lag.bytes,
            lag_seconds=lag.seconds,
            facts={"schema_signature": signature},
        )
    if isinstance(command, RunMigrationFence):
        at = utcnow()
        fence = await blocking(lambda: fence_for_logical(source, target, db, name))
        return MigrationStepResult(step="fence", source_position=_lsn(fence.final_lsn), at=at)
    if isinstance(command, RunMigrationFinalSync):
        final = command.source_final.value
        reached, sequences = await blocking(lambda: ls.final_sync(source, target, db, name, final))
        return MigrationStepResult(
            step="final_sync",
            source_position=command.source_final,
            target_position=_lsn(reached),
            facts={"sequences": str(sequences)},
        )
    if isinstance(command, RunMigrationParity):
        differences, signature = await blocking(lambda: ls.check_parity(source, target, db))
        return MigrationStepResult(
            step="parity",
            differences=[d[:500] for d in differences[:64]],
            facts={"schema_signature": signature, "differences": str(len(differences))},
        )
    if isinstance(command, RunMigrationPromote):
        reached = await blocking(lambda: ls.open_with_way_back(source, target, db, name, back))
        writable = utcnow()
        return MigrationStepResult(
            step="promote",
            source_position=command.source_final,
            target_position=_lsn(reached) if reached else command.source_final,
            at=writable,
            facts={**await blocking(lambda: _identity(target)), "way_back": back},
            endpoint=_endpoint(command.target_instance.node, target.port, db),
        )
    if isinstance(command, RunMigrationRewind):
        position = await blocking(lambda: ls.roll_back(source, target, db, back))
        return MigrationStepResult(
            step="rewind",
            source_position=_lsn(position),
            at=utcnow(),
            endpoint=_endpoint(command.target_instance.node, source.port, db),
            facts={"target_following": "false"},
        )
    raise EngineError.of(f"unknown migration step {command.TYPE}", code=CODE_UNSUPPORTED)


def _logical_preflight(
    sides: Sides, command: RunMigrationPreflight, *, replicates: bool
) -> MigrationStepResult:
    """One side of a logical method's preflight. The target's side also checks the source's
    release and extensions against its own (both are on this node). Changes nothing."""
    db = sides.dbname
    if command.side == "source":
        found = ls.source_findings(sides.need_source(), db, replicates=replicates)
        facts = {"database": db}
        if not any("has no database" in p for p in found):
            facts = {**ls.source_facts(sides.need_source(), db), **_identity(sides.need_source())}
        return MigrationStepResult(step="preflight", facts=facts, problems=found)
    problems: list[str] = []
    source, target = sides.source, sides.target
    if source is None:
        problems.append(
            f"the source {sides.command.source} is not hosted on the target's node: a target on "
            "another node than its source is not supported yet"
        )
    if sides.release_missing is not None:
        problems.append(sides.release_missing)
    if target is None:
        if sides.release_missing is None:
            problems.append(
                "a PostgreSQL target needs a data directory and a port (--data-dir, --port)"
            )
        return MigrationStepResult(step="preflight", problems=problems)
    problems += ls.target_problems(target, source, str(command.migration_id))
    version = target.run("postgres", ["--version"]).strip()
    major = int(version.split()[-1].split(".")[0]) if version else 0
    facts = {"data_dir": str(target.data_dir), "port": str(target.port), "server": version}
    facts["major"] = str(major)
    if source is not None:
        try:
            theirs = ls.source_facts(source, db)
        except MigrationStepError:
            theirs = None  # the source's side says why
        if theirs is not None:
            if major < int(theirs["major"]):
                problems.append(
                    f"the target's release {major} is older than the source's {theirs['major']}"
                )
            available = ls.available_extensions(target.bindir, major)
            for extension in filter(None, theirs["extensions"].split(",")):
                if extension not in available:
                    problems.append(
                        f"{db}: extension {extension} is not available in the target's "
                        f"release {major}"
                    )
    return MigrationStepResult(step="preflight", facts=facts, problems=problems)


async def _logical_copy(
    source: PgInstance, target: PgInstance, db: str, name: str, ctx: JobContext
) -> MigrationStepResult:
    """The subscription's initial copy, its bytes reported as the target's database grows."""
    total = await blocking(lambda: ls.database_size(source, db))
    await blocking(lambda: start_replication(source, target, db, name))
    while not await blocking(lambda: ls.check_copy(target, db, name)):
        done = await blocking(lambda: ls.database_size(target, db))
        await ctx.progress("copying", done=done, total=max(total, done), unit="bytes")
        await asyncio.sleep(1.0)
    vacuum = asyncio.create_task(blocking(lambda: ls.settle_copy(target, db)))
    while not vacuum.done():
        await ctx.progress("copying", done=total, total=total, unit="bytes", message="vacuum")
        await asyncio.wait({vacuum}, timeout=5.0)
    await vacuum
    copied = await blocking(lambda: ls.database_size(target, db))
    await ctx.progress("copying", done=copied, total=max(total, copied), unit="bytes")
    return MigrationStepResult(step="copy", bytes_copied=copied)


async def _dump_step(
    sides: Sides, command: MigrationStep, *, store: BlobStore, prefix: str, ctx: JobContext
) -> MigrationStepResult:
    """A `dump` step: the source fenced, dumped into the store by the target release's
    pg_dump, restored from the store (and only from it: a rerun never reads the source
    again), the fingerprints compared. Nothing streams, so there is no copy and no lag."""
    name, _ = ls.names(sides.slot)
    db, migration = sides.dbname, str(command.migration_id)
    key_prefix = f"{database_prefix(prefix, command.source)}/migrations/{migration}/dump"
    jobs = int(command.options.get("jobs", DUMP_JOBS))
    if isinstance(command, RunMigrationPreflight):
        return await blocking(lambda: _logical_preflight(sides, command, replicates=False))
    source = sides.need_source()
    if isinstance(command, RunMigrationUnfence):
        await blocking(lambda: ls.unfence_alone(source, sides.target, name))
        return MigrationStepResult(step="unfence")
    target = sides.need_target()

    async def reported(done: int, total: int | None) -> None:
        await ctx.progress("dump", done=done, total=total, unit="bytes")

    def progress(done: int, total: int | None) -> None:
        loop.call_soon_threadsafe(lambda: asyncio.ensure_future(reported(done, total)))

    loop = asyncio.get_running_loop()
    if isinstance(command, RunMigrationPrepare):

        def prepare() -> dict[str, str]:
            created = ls.ensure_cluster(source, target, db, migration)
            copy_roles(source, target)
            return {
                "created_cluster": str(created).lower(),
                "release": target.value("SELECT current_setting('server_version_num')"),
            }

        return MigrationStepResult(step="prepare", facts=await blocking(prepare))
    if isinstance(command, RunMigrationFence):
        at = utcnow()
        final = await blocking(lambda: ls.fence_alone(source, name))
        # The target release's pg_dump (a newer pg_dump reads an older server) on the fenced
        # source: what it dumps is the source's final state.
        reader = dataclasses.replace(ls.fenced(source), bindir=target.bindir)
        try:
            manifest = await dump_to_store(
                reader,
                db,
                store=store,
                key_prefix=key_prefix,
                jobs=jobs,
                spool=source.data_dir.parent / SPOOL,
                progress=progress,
            )
        except MigrationStepError as exc:
            raise EngineError.of(exc.reason, code=CODE_STEP, retryable=exc.retryable) from None
        return MigrationStepResult(
            step="fence", source_position=_lsn(final), at=at, bytes_copied=manifest.bytes
        )
    if isinstance(command, RunMigrationFinalSync):
        try:
            restored = await restore_from_store(
                target,
                db,
                store=store,
                key_prefix=key_prefix,
                jobs=jobs,
                spool=target.data_dir.parent / SPOOL,
                progress=progress,
            )
        except MigrationStepError as exc:
            raise EngineError.of(exc.reason, code=CODE_STEP, retryable=exc.retryable) from None
        # Read by the parity step (the target is not open: nothing changes it in between).
        restored_print = target.data_dir.parent / f".{migration}.restored-fingerprint.json"
        restored_print.write_text(json.dumps(restored.fingerprint.to_json()), encoding="utf-8")
        # pg_restore carries no planner statistics: gathered before the target is opened.
        await blocking(
            lambda: target.run(
                "vacuumdb", ["--analyze-only", "-j", str(jobs), *_socket_args(target, db)]
            )
        )
        return MigrationStepResult(
            step="final_sync",
            source_position=command.source_final,
            target_position=command.source_final,
            bytes_copied=restored.bytes,
            facts={"benign": str(len(restored.benign)), "restore_s": f"{restored.seconds:.1f}"},
        )
    if isinstance(command, RunMigrationParity):
        manifest_read = await read_manifest(store, key_prefix)
        if manifest_read is None:
            raise EngineError.of(f"the dump is not in the store ({key_prefix})", code=CODE_STEP)
        manifest = manifest_read
        restored_print = target.data_dir.parent / f".{migration}.restored-fingerprint.json"

        def restored_fingerprint() -> Fingerprint:
            # The restore's own reading when this node kept it, else read again.
            with contextlib.suppress(OSError, ValueError, KeyError):
                return Fingerprint.from_json(json.loads(restored_print.read_text("utf-8")))
            return fingerprint(target, db)

        differences = await blocking(lambda: compare(manifest.fingerprint, restored_fingerprint()))
        return MigrationStepResult(
            step="parity",
            differences=[d[:500] for d in differences[:64]],
            facts={"differences": str(len(differences))},
        )
    if isinstance(command, RunMigrationPromote):
        # The restored database is the target's only copy; it accepts writes as it is.
        return MigrationStepResult(
            step="promote",
            source_position=command.source_final,
            target_position=command.source_final,
            at=utcnow(),
            facts=await blocking(lambda: _identity(target)),
            endpoint=_endpoint(command.target_instance.node, target.port, db),
        )
    raise EngineError.of(
        f"dump has no {command.TYPE} step: it keeps no way back after the cutover",
        code=CODE_UNSUPPORTED,
    )


SPOOL = ".tidemark-spool"
"""Beside the data directory: where a dump is written before it goes to the store, and read
back before it is restored (removed after each step)."""


def _socket_args(instance: PgInstance, dbname: str) -> list[str]:
    return [
        "-h",
        str(instance.socket_dir),
        "-p",
        str(instance.port),
        "-U",
        instance.role,
        "-d",
        dbname,
    ]
