"""physical-archive, measured when its engine steps exist (`services/engines/postgres/migration/
archive.py`); until then the report says why not, and prints no figure for it.

The source archives through Tidemark for the whole run, as a protected database does (the
migration tests' rig: walpush into a spool via `PostgresEngine.setup_archiving`, the archiver
in a process of its own (`tests.integration.test_archiver.ArchiverProcess`) uploading to a
`file://` store, zstd, a nats-server for its events), with `archive_timeout` set so a quiet
source still completes segments. The physical-stream rounds run under the same archiving.

A round of this method:

    base backup into the store (`PostgresEngine.backup`, untimed, before the load) ─▶ [load
    starts] ─▶ [timed] `build_from_archive` (the backup extracted, the target started as a
    standby fed by `follow_archive`) ─▶ catch up from the archive ─▶ stream `steady_s` ─▶
    [timed] `fence_archived_source` → `wait_replayed` → `promote_target` → first write ─▶
    ledger ─▶ [load stops] ─▶ target dropped, `unfence_archived_source`
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from bench.migrate.downtime import measure_cutover
from bench.migrate.rounds import MethodRun, catch_up, log, timed_start
from bench.migrate.settings import MigrateBenchSettings
from bench.migrate.source import Source, steady_load
from bench.restore.ours import PhaseClock
from schemas import Timeline
from schemas.messages import BackupSpec
from services.blobstore import open_store
from services.blobstore.layout import log_key
from services.engines.postgres.archiving import WalPushArchiving
from services.engines.postgres.engine import PostgresEngine
from services.engines.postgres.fetchserver import THREAD
from services.engines.postgres.migration import PgInstance
from services.engines.postgres.migration.cutover import promote_target, wait_replayed
from services.engines.settings import HostedDatabase, PostgresInstance
from services.stack.natsserver import NatsServer
from tests.integration.migration_rig import empty_target, ids_on
from tests.integration.test_archiver import ArchiverProcess, database

ARCHIVE = "physical-archive"
ENGINE_MODULE = "services.engines.postgres.migration.archive"
NEEDED = (
    "build_from_archive",
    "fence_archived_source",
    "follow_archive",
    "measure_archive_lag",
    "unfence_archived_source",
)
PREFIX = "bench"
DATABASE_UID = "bench-migrate"


def unavailable_reason() -> str | None:
    """Why physical-archive cannot be measured in this tree (None: it can)."""
    try:
        module = importlib.import_module(ENGINE_MODULE)
    except ModuleNotFoundError as exc:
        if exc.name != ENGINE_MODULE:
            raise
        return f"its engine steps ({ENGINE_MODULE}) do not exist in this tree"
    missing = [name for name in NEEDED if not hasattr(module, name)]
    if missing:
        return f"{ENGINE_MODULE} has no {', '.join(missing)}"
    return None


@dataclass(frozen=True)
class Archiving:
    """The source's archive: where the store is and what the engine calls the source."""

    store_url: str
    db: HostedDatabase
    engine: PostgresEngine


def wait_drained(source: Source, archiving: Archiving, timeout: float = 3600.0) -> float:
    """Until everything the source wrote is in the store: the current segment is closed, and
    the store holds it (walpush took it and the archiver uploaded it; the archiver uploads in
    order, so every earlier segment is there too). Returns the seconds waited.

    A backlog being uploaded would share the machine with whatever the next round times (the
    load's WAL, kept while `archive_command` was empty, arrives all at once at the setup). The
    spool's `ready/` is no measure: its files are released only once a catalog has indexed
    them, and no catalog runs here."""
    started = time.monotonic()
    segment = source.cluster.psql("SELECT pg_walfile_name(pg_switch_wal())")
    timeline = Timeline(id=int(segment[:8], 16))
    key = log_key(PREFIX, DATABASE_UID, timeline, THREAD, segment)
    deadline = started + timeout
    while not asyncio.run(_stored(archiving.store_url, key)):
        if time.monotonic() > deadline:
            raise TimeoutError(f"{segment} not in the store after {timeout:g} s")
        time.sleep(0.5)
    return time.monotonic() - started


async def _stored(store_url: str, key: str) -> bool:
    store = open_store(store_url)
    try:
        return any([info.key == key async for info in store.list(key)])
    finally:
        await store.close()


@contextlib.contextmanager
def archiving_source(source: Source, settings: MigrateBenchSettings) -> Iterator[Archiving]:
    """Archiving set up on the source for the block; the archiver and nats-server stopped,
    the store removed afterwards."""
    cluster = source.cluster
    work = Path(tempfile.mkdtemp(prefix="tidemark-bench-migrate-", dir="/var/tmp"))
    nats = NatsServer(store_dir=work / "nats")
    (work / "nats").mkdir()
    archiver: ArchiverProcess | None = None
    try:
        cluster.configure(archive_timeout=settings.archive_timeout_s)
        spool = cluster.base / "spool"
        engine = PostgresEngine(
            archiving=WalPushArchiving(
                tool_dir=cluster.base / "tools", spools={DATABASE_UID: spool}
            )
        )
        system_id = int(cluster.psql("SELECT system_identifier FROM pg_control_system()"))
        db = HostedDatabase(
            uid=DATABASE_UID,
            engine="postgres",
            name="bench",
            system_id=system_id,
            postgres=PostgresInstance(
                data_dir=cluster.data_dir,
                port=cluster.port,
                socket_dir=cluster.socket_dir,
                os_user=cluster.db_user.name,
                bin_dir=cluster.bindir,
            ),
        )
        store_url = f"file://{work / 'store'}"
        asyncio.run(_setup(engine, db, store_url))
        nats.start()
        (work / "state").mkdir()
        archiver = ArchiverProcess(
            nats.url,
            work / "state",
            store_url,
            [database(DATABASE_UID, spool, system_id)],
            settings={
                "TIDEMARK_ARCHIVER__PREFIX": PREFIX,
                "TIDEMARK_ARCHIVER__COMPRESSION": "zstd",
            },
        )
        archiver.start()
        archiving = Archiving(store_url, db, engine)
        log(f"  the archive backlog drained in {wait_drained(source, archiving):.1f} s")
        yield archiving
        archiver.check_alive()
    finally:
        if archiver is not None and archiver.proc is not None:
            archiver.stop()
        nats.stop()
        shutil.rmtree(work, ignore_errors=True)


async def _setup(engine: PostgresEngine, db: HostedDatabase, store_url: str) -> None:
    store = open_store(store_url)
    try:
        await engine.setup_archiving(db, store, PREFIX)
    finally:
        await store.close()


def _log_tail_on_error(target: PgInstance) -> Callable[..., bool]:
    """An exit callback: the target's server log when the block fails (it goes with the target)."""

    def exit_(exc_type: type[BaseException] | None, *_: object) -> bool:
        if exc_type is not None:
            with contextlib.suppress(OSError):
                tail = (target.data_dir.parent / f"{target.data_dir.name}.log").read_text()
                log("  the target's log ends:\n" + "\n".join(tail.splitlines()[-30:]))
        return False

    return exit_


def archive_run(
    source: Source, archiving: Archiving, settings: MigrateBenchSettings, round_no: int
) -> MethodRun:
    try:
        return asyncio.run(_archive_run(source, archiving, settings, round_no))
    finally:
        from services.engines.postgres.migration.archive import unfence_archived_source

        # The target is gone (the blocks were left): the next round needs the source serving.
        unfence_archived_source(source.instance)
        source.cluster.psql(
            "INSERT INTO migrate_probe (round, method) VALUES (0, 'reset')", tcp=True
        )


async def _archive_run(
    source: Source, archiving: Archiving, settings: MigrateBenchSettings, round_no: int
) -> MethodRun:
    # Imported here: the module may not exist in this tree (see unavailable_reason).
    from services.engines.postgres.migration.archive import (
        build_from_archive,
        fence_archived_source,
        follow_archive,
        measure_archive_lag,
    )

    db = archiving.db
    uid = DATABASE_UID
    migration = f"bench-archive-{round_no}"
    store = open_store(archiving.store_url)
    try:
        log("  base backup into the store (untimed, before the load)")
        await archiving.engine.backup(
            db,
            backup_id=f"bench-{round_no}",
            spec=BackupSpec(),
            store=store,
            prefix=PREFIX,
            ctx=PhaseClock("base backup"),
        )
        await asyncio.to_thread(wait_drained, source, archiving)
        with (
            steady_load(source, settings.load_tps) as load,
            empty_target(source.cluster) as empty,
            contextlib.ExitStack() as stack,
        ):
            target = timed_start(empty)
            stack.push(_log_tail_on_error(target))
            async with follow_archive(
                target, store=store, prefix=PREFIX, uid=uid, migration=migration
            ) as feed:
                started = time.monotonic()
                clock = PhaseClock("build_from_archive")
                copied = await build_from_archive(
                    db,
                    target,
                    feed,
                    store=store,
                    prefix=PREFIX,
                    ctx=clock,
                )
                copy_s = time.monotonic() - started
                phases = clock.durations(time.perf_counter())
                start_s = sum(target.started_s)
                log(
                    f"  build_from_archive: {copy_s:.2f} s ({copied / (1 << 20):.0f} MiB; the "
                    f"target's start {start_s:.2f} s of it)"
                )
                caught_up = await asyncio.to_thread(catch_up, source.instance, target)
                await asyncio.sleep(settings.steady_s)
                load.check_running()
                lag = await measure_archive_lag(
                    target, store=store, prefix=PREFIX, uid=uid, source=source.instance
                )
                log(f"  lag before the fence: {lag}")
                cutover = await asyncio.to_thread(
                    measure_cutover,
                    target_dsn=source.tcp_dsn_at(target.port),
                    round_no=round_no,
                    method=ARCHIVE,
                    writer=load.writer,
                    fence=lambda: fence_archived_source(source.instance),
                    replay=lambda fence: wait_replayed(target, fence.final_lsn),
                    promote=lambda fence: promote_target(target, fence.final_lsn),
                    ledger_on_target=lambda: ids_on(target),
                    stop_load=load.stop,
                )
                served = feed.stats.served
    finally:
        await store.close()
    log(
        f"  cutover: fenced {cutover.fenced_s:.2f} s, replayed {cutover.replayed_s:.2f} s, "
        f"promoted {cutover.promoted_s:.2f} s, first write {cutover.downtime_s:.2f} s; "
        f"{cutover.acked} commits acknowledged, {cutover.lost_commits} lost; "
        f"{served} WAL files fetched from the archive"
    )
    rate = cutover.acked / (cutover.started - load.started)
    note = (
        "build phases "
        + ", ".join(f"{name} {seconds:.2f} s" for name, seconds in phases.items())
        + f"; {served} WAL files fetched from the archive"
    )
    return MethodRun(ARCHIVE, copy_s, start_s, copied, caught_up, str(lag), cutover, rate, note)
