"""physical-archive on real PostgreSQL: the source archives through Tidemark (walpush → spool →
the archiver process → a filesystem store) and is base-backed-up by the engine; the target is
restored from that backup and rolls forward from the store alone. A fence after which no commit
is accepted and whose final position the target replays from the archive, promotion with every
acknowledged commit on the target, abort leaving the source serving, and every step rerunnable."""

from __future__ import annotations

import asyncio
import logging
import shutil
import time
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from schemas.messages import BackupSpec
from schemas.positions import format_lsn
from services.blobstore import BlobStore, open_store
from services.engines.postgres.archiving import WalPushArchiving
from services.engines.postgres.engine import PostgresEngine
from services.engines.postgres.migration import (
    MigrationStepError,
    PgInstance,
    build_from_archive,
    fence_archived_source,
    fence_source,
    follow_archive,
    measure_archive_lag,
    promote_target,
    unfence_archived_source,
    wait_replayed,
)
from services.engines.postgres.migration.archive import BUILDING_FILE, _start_privately
from services.engines.settings import HostedDatabase, PostgresInstance
from services.stack.natsserver import NatsServer
from tests.fixtures.postgres import PgCluster, PgClusterError
from tests.integration.bus_helpers import unique
from tests.integration.migration_rig import Writer, empty_target, ids_on, instance_of
from tests.integration.test_archiver import ArchiverProcess, database

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]
log = logging.getLogger(__name__)

PREFIX = "archive"
MIGRATION = "0190f3a2-7c1d-7e2a-9b3c-4d5e6f708192"


class Recorder:
    """A JobContext that keeps the phases it is told."""

    def __init__(self) -> None:
        self.job_id = uuid.UUID(int=1)
        self.phases: list[str] = []

    async def progress(
        self,
        phase: str,
        *,
        done: int | None = None,
        total: int | None = None,
        unit: str | None = None,
        message: str = "",
    ) -> None:
        if not self.phases or self.phases[-1] != phase:
            self.phases.append(phase)


@dataclass
class Archived:
    """A source archived into the store, with a base backup there."""

    cluster: PgCluster
    store: BlobStore
    db: HostedDatabase

    @property
    def source(self) -> PgInstance:
        return instance_of(self.cluster)


def hosted(cluster: PgCluster, uid: str, system_id: int | None) -> HostedDatabase:
    return HostedDatabase(
        uid=uid,
        engine="postgres",
        name="orders",
        system_id=system_id,
        postgres=PostgresInstance(
            data_dir=cluster.data_dir,
            port=cluster.port,
            socket_dir=cluster.socket_dir,
            os_user=cluster.db_user.name,
            bin_dir=cluster.bindir,
        ),
    )


@pytest.fixture
async def archived(
    nats_server: NatsServer, pg_cluster: PgCluster, tmp_path: Path
) -> AsyncIterator[Archived]:
    # A segment reaches the archive when it is complete: archive_timeout bounds this method's
    # lag (and keeps the test from writing 16 MiB per segment before anything is archived).
    pg_cluster.configure(archive_timeout=1)
    store = open_store(f"file://{tmp_path / 'store'}")
    uid = unique("pg")
    spool = pg_cluster.base / "spool"
    engine = PostgresEngine(
        archiving=WalPushArchiving(tool_dir=pg_cluster.base / "tools", spools={uid: spool}),
        part_size=4 << 20,
    )
    system_id = int(pg_cluster.psql("SELECT system_identifier FROM pg_control_system()"))
    db = hosted(pg_cluster, uid, system_id)
    await engine.setup_archiving(db, store, PREFIX)
    state = tmp_path / "state"
    state.mkdir()
    archiver = ArchiverProcess(
        nats_server.url,
        state,
        f"file://{tmp_path / 'store'}",
        [database(uid, spool, system_id)],
        settings={"TIDEMARK_ARCHIVER__PREFIX": PREFIX, "TIDEMARK_ARCHIVER__COMPRESSION": "zstd"},
    )
    archiver.start()
    try:
        pg_cluster.execute("CREATE TABLE ledger (id bigint PRIMARY KEY)")
        await engine.backup(
            db,
            backup_id=unique("base"),
            spec=BackupSpec(),
            store=store,
            prefix=PREFIX,
            ctx=Recorder(),
        )
        yield Archived(pg_cluster, store, db)
    finally:
        archiver.check_alive()
        archiver.kill9()
        await store.close()


async def until(check: Callable[[], bool], what: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not await asyncio.to_thread(check):
        assert time.monotonic() < deadline, f"{what} not seen in {timeout:g} s"
        await asyncio.sleep(0.1)


async def test_cutover_from_the_archive_under_writes_loses_no_commit(archived: Archived) -> None:
    source, store = archived.source, archived.store
    writers = [
        Writer(archived.cluster.tcp_dsn).start(),
        Writer(archived.cluster.tcp_dsn, True, 2).start(),
    ]
    with empty_target(archived.cluster) as target:
        async with follow_archive(
            target, store=store, prefix=PREFIX, uid=archived.db.uid, migration=MIGRATION
        ) as feed:
            ctx = Recorder()
            copied = await build_from_archive(
                archived.db, target, feed, store=store, prefix=PREFIX, ctx=ctx
            )
            assert copied > 1 << 20
            assert ctx.phases == ["copy", "download", "configure", "start"]
            rerun = await build_from_archive(
                archived.db, target, feed, store=store, prefix=PREFIX, ctx=Recorder()
            )
            assert rerun == 0  # rerun: left alone, still following
            assert target.value("SELECT pg_is_in_recovery()") == "t"
            assert (
                target.value(
                    "SELECT current_setting('primary_conninfo') = '' "
                    "AND current_setting('archive_command') = ''"
                )
                == "t"
            )
            await until(lambda: len(ids_on(target)) >= 200, "the target replaying writes")
            lag = await measure_archive_lag(
                target, store=store, prefix=PREFIX, uid=archived.db.uid, source=source
            )
            assert lag.source_lsn is not None
            assert lag.source_lsn >= lag.archived_lsn >= lag.replayed_lsn > 0
            assert lag.bytes == lag.source_lsn - lag.replayed_lsn
            assert lag.archive_bytes == lag.archived_lsn - lag.replayed_lsn
            log.info("lag under writes: %s", lag)

            fence = await asyncio.to_thread(fence_archived_source, source)
            fenced = time.monotonic()
            replayed = await asyncio.to_thread(wait_replayed, target, fence.final_lsn, timeout=60)
            caught_up = time.monotonic()
            opened_at = await asyncio.to_thread(promote_target, target, fence.final_lsn)
            await asyncio.to_thread(target.rows, "INSERT INTO ledger (id) VALUES (0)")
            writable = time.monotonic()
            assert await asyncio.to_thread(promote_target, target, fence.final_lsn) >= opened_at
            await asyncio.sleep(0.3)  # writers keep trying against the fenced source
            for writer in writers:
                writer.stop()

            downtime = writable - fence.started_monotonic
            acked = {i: t for w in writers for i, t in w.acked.items()}
            report = (
                f"physical-archive cutover: {fence}; replayed {format_lsn(replayed)}; opened at "
                f"{format_lsn(opened_at)}; downtime {downtime:.3f} s (fence raised → target "
                f"accepted a write): fence {fenced - fence.started_monotonic:.3f} s, replay "
                f"{caught_up - fenced:.3f} s, promote {writable - caught_up:.3f} s; "
                f"{sum(t >= fence.started_monotonic for t in acked.values())} commits "
                f"acknowledged while the fence drained; wal fetch {feed.stats.served} files"
            )
            log.info(report)
            print(report)
            assert len(acked) > 200
            assert all(w.failures > 0 for w in writers)
            on_target = ids_on(target)
            assert set(acked) <= on_target, f"lost: {sorted(set(acked) - on_target)[:10]}"
            assert max(acked.values()) < fenced, "the source acknowledged a commit after the fence"
            assert not source.is_running()
            assert opened_at > fence.final_lsn
            # The target holds exactly what the source committed, acknowledged or not: read the
            # fenced source where no client can reach it.
            private = await asyncio.to_thread(_start_privately, source, fence.final_lsn)
            assert ids_on(private) == on_target - {0}
            await asyncio.to_thread(private.pg_ctl, "stop", "-m", "fast")
            shutil.rmtree(private.socket_dir)
        # The feed is gone: the promoted target names no socket in its settings any more.
        assert target.value("SELECT current_setting('restore_command') = ''") == "t"


async def test_abort_leaves_the_source_serving_and_every_step_rerun_is_harmless(
    archived: Archived,
) -> None:
    source, store, uid = archived.source, archived.store, archived.db.uid
    with empty_target(archived.cluster) as target:
        # An executor that died mid-copy left its mark: the next build clears the directory.
        target.data_dir.mkdir(mode=0o700)
        (target.data_dir / BUILDING_FILE).write_text(MIGRATION, encoding="utf-8")
        (target.data_dir / "base").mkdir()
        async with follow_archive(
            target, store=store, prefix=PREFIX, uid=uid, migration=MIGRATION
        ) as feed:
            await build_from_archive(
                archived.db, target, feed, store=store, prefix=PREFIX, ctx=Recorder()
            )
            assert not (target.data_dir / BUILDING_FILE).exists()
            archived.cluster.psql("INSERT INTO ledger (id) VALUES (5)", tcp=True)
            # The executor dies after the clean stop, then again inside the private run: each
            # rerun finds the same final position and finishes the fence.
            stopped = await asyncio.to_thread(fence_source, source)
            fence = await asyncio.to_thread(fence_archived_source, source)
            assert fence.final_lsn == stopped.final_lsn
            private = await asyncio.to_thread(_start_privately, source, fence.final_lsn)
            with pytest.raises(MigrationStepError):  # closed to clients: its usual socket…
                source.value("SELECT 1")
            with pytest.raises(PgClusterError):  # …and TCP
                archived.cluster.psql("SELECT 1", tcp=True)
            assert private.value("SHOW tidemark.fenced_at") == format_lsn(fence.final_lsn)
            again = await asyncio.to_thread(fence_archived_source, source)
            assert again.final_lsn == fence.final_lsn
            again = await asyncio.to_thread(fence_archived_source, source)  # after it finished
            assert again.final_lsn == fence.final_lsn
            assert not source.is_running()
            # From the archive alone, the target reaches the final position, with the commit.
            await asyncio.to_thread(wait_replayed, target, fence.final_lsn, timeout=60)
            assert ids_on(target) == {5}
            with pytest.raises(MigrationStepError, match="not reached"):
                await asyncio.to_thread(
                    wait_replayed, target, fence.final_lsn + (1 << 40), timeout=0.5
                )
            lag = await measure_archive_lag(
                target, store=store, prefix=PREFIX, uid=uid, source=source
            )
            assert lag.source_lsn is None  # fenced: the archive's end is what is measured
            assert lag.bytes == lag.archive_bytes == lag.archived_lsn - lag.replayed_lsn

            await asyncio.to_thread(unfence_archived_source, source)
            await asyncio.to_thread(unfence_archived_source, source)  # rerun: already serving
            assert source.value("SELECT current_setting('default_transaction_read_only')") == "off"
        # Between two feeds (an executor stopping, then starting) the standby waits for WAL:
        # its asks find no tool and answer "not yet", they do not shut it down.
        await asyncio.sleep(3)
        assert target.is_running(), "the standby stopped while no feed ran"
        # The executor restarts: a new feed (a new socket) and the target follows it.
        async with follow_archive(
            target, store=store, prefix=PREFIX, uid=uid, migration=MIGRATION
        ) as feed:
            archived.cluster.psql("INSERT INTO ledger (id) VALUES (7)", tcp=True)
            await until(lambda: 7 in ids_on(target), "the target following after the abort")
            assert ids_on(target) == {5, 7}
            assert target.value("SELECT pg_is_in_recovery()") == "t"
            assert feed.stats.served > 0


async def test_a_directory_holding_another_cluster_is_never_overwritten(
    pg_factory: Callable[..., PgCluster], tmp_path: Path
) -> None:
    source, other = pg_factory(start=False), pg_factory(start=False)
    store = open_store(f"file://{tmp_path / 'store'}")
    db = hosted(source, unique("pg"), None)
    try:
        target = instance_of(other)
        async with follow_archive(
            target, store=store, prefix=PREFIX, uid=db.uid, migration=MIGRATION
        ) as feed:
            with pytest.raises(MigrationStepError, match="refusing to overwrite"):
                await build_from_archive(
                    db, target, feed, store=store, prefix=PREFIX, ctx=Recorder()
                )
        assert (other.data_dir / "PG_VERSION").exists()
        with empty_target(source) as empty:
            async with follow_archive(
                empty, store=store, prefix=PREFIX, uid=db.uid, migration=MIGRATION
            ) as feed:
                with pytest.raises(MigrationStepError, match="no base backup"):
                    await build_from_archive(
                        db, empty, feed, store=store, prefix=PREFIX, ctx=Recorder()
                    )
    finally:
        await store.close()
