"""PostgreSQL restore, for real: a cluster archives its WAL through Tidemark (walpush → spool →
the archiver process → a filesystem store), a base backup goes into the store in the manifest
layout, rows are written with a ledger of (LSN, commit time, table checksum), and clones are
restored to an LSN, a time and the earliest consistent point. Each must equal the ledger exactly
at its target, open on a new timeline, and leave the source untouched; a target beyond the archive
fails with PostgreSQL's reason; verify restores the base and checks it."""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import re
import shutil
import socket
import subprocess
import tarfile
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import pytest
import zstandard

from schemas import Lsn, Timeline
from schemas.messages import BackupCompleted, BackupSpec, RestoreResult, RunRestore
from schemas.messages.common import ProgressUnit
from schemas.messages.restores import (
    CloneSpec,
    RestoreMode,
    RestorePlan,
    RestoreTarget,
    TargetImmediate,
    TargetPosition,
    TargetTime,
)
from services.blobstore import BlobStore, crc32c_of_bytes, open_store
from services.engines.base import EngineError
from services.engines.postgres.fetchserver import FetchStats, wal_key
from services.engines.postgres.manifest import (
    BaseManifest,
    Part,
    PostgresBase,
    manifest_key,
    part_key,
)
from services.engines.postgres.oscmd import run_as, system_python, user_env
from services.engines.postgres.restore import restore
from services.engines.postgres.spool import Spool, install_walpush
from services.engines.postgres.verify import verify
from services.engines.postgres.walfile import parse_lsn
from services.executor.settings import ExecutorSettings, HostedDatabase, PostgresInstance
from services.stack.natsserver import NatsServer
from tests.fixtures.postgres import PgCluster
from tests.integration.bus_helpers import unique
from tests.integration.test_archiver import ArchiverProcess, database

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

PREFIX = "archive"
ROWS = 6
WAIT = 60.0


class Recorder:
    """A JobContext that keeps what it is told."""

    def __init__(self) -> None:
        self.phases: list[str] = []

    @property
    def job_id(self) -> uuid.UUID:
        return uuid.UUID(int=1)

    async def progress(
        self,
        phase: str,
        *,
        done: int | None = None,
        total: int | None = None,
        unit: ProgressUnit | None = None,
        message: str = "",
    ) -> None:
        if not self.phases or self.phases[-1] != phase:
            self.phases.append(phase)


@dataclass(frozen=True)
class Entry:
    """The table as of one commit."""

    rows: int
    lsn: int
    after: datetime
    """A moment after this commit and before the next one."""
    checksum: str


@dataclass
class Source:
    cluster: PgCluster
    store: BlobStore
    uid: str
    db: HostedDatabase
    backup_id: str
    manifest_key: str
    ledger: list[Entry]
    clones: list[Path] = field(default_factory=list)


CHECKSUM_SQL = (
    "SELECT count(*) || ':' || coalesce(md5(string_agg(id || '=' || v, ',' ORDER BY id)), '') "
    "FROM ledger"
)


# -- a base backup: test helper -------------------------------------------------------------------


async def take_base_backup(
    cluster: PgCluster, store: BlobStore, uid: str, system_id: int
) -> tuple[str, str]:
    """TEST HELPER, not the engine's backup: ``pg_basebackup -D - -Ft -X none`` into the store
    in the manifest layout (one zstd frame cut into two parts, manifest last)."""
    backup_id = unique("base")
    started = datetime.now(UTC)
    done = await asyncio.to_thread(
        subprocess.run,
        [
            str(cluster.bindir / "pg_basebackup"),
            "-h",
            str(cluster.socket_dir),
            "-p",
            str(cluster.port),
            "-U",
            cluster.superuser,
            "-D",
            "-",
            "-Ft",
            "-X",
            "none",
            "-c",
            "fast",
        ],
        capture_output=True,
        env=user_env(cluster.db_user),
        user=cluster.db_user.uid,
        group=cluster.db_user.gid,
        cwd=cluster.base,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr.decode()
    tar = done.stdout
    with tarfile.open(fileobj=io.BytesIO(tar)) as archive:
        label = archive.extractfile("backup_label").read().decode()  # type: ignore[union-attr]
        pg_manifest = json.loads(archive.extractfile("backup_manifest").read())  # type: ignore[union-attr]
    timeline_match = re.search(r"START TIMELINE: (\d+)", label)
    start = re.search(r"START WAL LOCATION: (\S+)", label)
    assert start, label
    assert timeline_match, label
    wal_range = pg_manifest["WAL-Ranges"][-1]
    packed = zstandard.ZstdCompressor().compress(tar)
    cut = len(packed) // 2
    parts = []
    for index, chunk in enumerate((packed[:cut], packed[cut:])):
        key = part_key(PREFIX, uid, backup_id, index, "zstd")
        info = await store.put_stream(key, chunk)
        parts.append(Part(key=key, size=info.size, crc32c=info.crc32c))
    key = manifest_key(PREFIX, uid, backup_id)
    timeline = int(timeline_match[1])
    version = int(cluster.psql("SHOW server_version_num"))
    manifest = BaseManifest(
        backup=BackupCompleted(
            backup_id=backup_id,
            job_id=uuid.uuid4(),
            spec=BackupSpec(),
            lineage=Timeline(id=timeline),
            start=Lsn.parse(start[1]),
            consistent_at=Lsn.parse(wal_range["End-LSN"]),
            started_at=started,
            completed_at=datetime.now(UTC),
            size_bytes=len(packed),
            piece_count=2,
            manifest_key=key,
        ),
        postgres=PostgresBase(
            pg_version=version,
            system_id=system_id,
            timeline=timeline,
            compression="zstd",
            tar_bytes=len(tar),
            parts=parts,
        ),
    )
    await store.put_stream(key, manifest.model_dump_json().encode())
    return backup_id, key


# -- the source: archived, backed up, written with a ledger ---------------------------------------


async def wait_archived(store: BlobStore, uid: str, name: str, archiver: ArchiverProcess) -> None:
    key = wal_key(PREFIX, uid, name)
    assert key is not None
    deadline = time.monotonic() + WAIT
    while await store.head(key) is None:
        archiver.check_alive()
        assert time.monotonic() < deadline, f"{name} not archived after {WAIT}s"
        await asyncio.sleep(0.1)


@pytest.fixture(scope="module")
async def source(
    nats_server: NatsServer, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[Source]:
    tmp = tmp_path_factory.mktemp("pg-restore")
    cluster = PgCluster()
    store = open_store(f"file://{tmp / 'store'}")
    archiver: ArchiverProcess | None = None
    try:
        cluster.start()
        uid = unique("pg")
        spool = Spool(cluster.base / "spool")
        spool.init(uid, owner=cluster.db_user)
        tool = install_walpush(cluster.base / "tools", user=cluster.db_user)
        cluster.configure(
            archive_command=spool.archive_command(system_python(cluster.db_user), tool)
        )
        system_id = int(cluster.psql("SELECT system_identifier FROM pg_control_system()"))
        state = tmp / "state"
        state.mkdir()
        archiver = ArchiverProcess(
            nats_server.url,
            state,
            f"file://{tmp / 'store'}",
            [database(uid, spool.path, system_id)],
            settings={
                "TIDEMARK_ARCHIVER__PREFIX": PREFIX,
                "TIDEMARK_ARCHIVER__COMPRESSION": "zstd",
            },
        )
        archiver.start()

        cluster.execute("CREATE TABLE ledger (id int PRIMARY KEY, v text)")
        backup_id, key = await take_base_backup(cluster, store, uid, system_id)

        ledger = []
        for i in range(1, ROWS + 1):
            cluster.execute(f"INSERT INTO ledger VALUES ({i}, md5('{i}'))")  # noqa: S608 - an int
            lsn = parse_lsn(cluster.psql("SELECT pg_current_wal_lsn()"))
            checksum = cluster.psql(CHECKSUM_SQL)
            after = datetime.fromisoformat(
                cluster.psql(
                    "SELECT to_char(clock_timestamp() AT TIME ZONE 'UTC', "
                    "'YYYY-MM-DD\"T\"HH24:MI:SS.US')"
                )
            ).replace(tzinfo=UTC)
            ledger.append(Entry(i, lsn, after, checksum))
            time.sleep(0.01)
        # One more commit after the last ledger entry, so a time target has a commit past it.
        cluster.execute("CREATE TABLE after_ledger (x int)")
        last = cluster.psql("SELECT pg_walfile_name(pg_current_wal_lsn())")
        cluster.psql("SELECT pg_switch_wal()")
        await wait_archived(store, uid, last, archiver)

        db = HostedDatabase(
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
        made = Source(cluster, store, uid, db, backup_id, key, ledger)
        yield made
        for clone in made.clones:
            stop_clone(cluster, clone)
    finally:
        if archiver is not None and archiver.proc is not None and archiver.proc.poll() is None:
            archiver.kill9()
        cluster.cleanup()
        await store.close()


# -- clones ---------------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def stop_clone(cluster: PgCluster, data_dir: Path) -> None:
    if (data_dir / "postmaster.pid").exists():
        run_as(
            cluster.db_user,
            [cluster.bindir / "pg_ctl", "-D", data_dir, "stop", "-m", "immediate", "-w"],
            cwd="/",
        )
    shutil.rmtree(data_dir, ignore_errors=True)


def clone_psql(source: Source, port: int, sql: str) -> str:
    done = run_as(
        source.cluster.db_user,
        [
            source.cluster.bindir / "psql",
            "-X",
            "-A",
            "-t",
            "-q",
            "-h",
            source.cluster.socket_dir,
            "-p",
            str(port),
            "-d",
            "postgres",
            "-c",
            sql,
        ],
        cwd="/",
    )
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


async def restore_clone(
    source: Source, target: RestoreTarget, recovery: dict[str, str] | None = None
) -> tuple[RestoreResult, int, Path, Recorder, FetchStats]:
    port = free_port()
    data_dir = source.cluster.base / f"clone-{uuid.uuid4().hex[:6]}"
    source.clones.append(data_dir)
    command = RunRestore(
        job_id=uuid.uuid4(),
        restore_id=uuid.uuid4(),
        target=target,
        mode=RestoreMode.CLONE,
        clone=CloneSpec(data_dir=str(data_dir), port=port),
        plan=RestorePlan(
            base_backup_id=source.backup_id,
            base_manifest_key=source.manifest_key,
            lineage=Timeline(id=1),
            recovery=recovery or {},
        ),
    )
    ctx = Recorder()
    stats = FetchStats()
    result = await restore(
        source.db,
        command,
        store=source.store,
        prefix=PREFIX,
        ctx=ctx,
        settings=ExecutorSettings(prefetch=3),
        stats=stats,
    )
    return result, port, data_dir, ctx, stats


def check_source_untouched(source: Source) -> None:
    assert source.cluster.running
    assert source.cluster.psql(CHECKSUM_SQL) == source.ledger[-1].checksum
    assert source.cluster.psql("SELECT timeline_id FROM pg_control_checkpoint()") == "1"


def check_new_timeline(result: RestoreResult, source: Source, port: int) -> None:
    assert isinstance(result.lineage, Timeline)
    assert result.lineage.id >= 2
    assert result.lineage.parent == 1
    assert result.lineage.branch_lsn == result.reached
    assert clone_psql(source, port, "SELECT pg_is_in_recovery()") == "f"
    assert clone_psql(source, port, "SELECT timeline_id FROM pg_control_checkpoint()") == str(
        result.lineage.id
    )
    # The clone never archives into the source's prefix.
    assert clone_psql(source, port, "SHOW archive_mode") == "off"
    assert clone_psql(source, port, "SHOW restore_command") == ""


async def test_restore_a_clone_to_an_lsn(source: Source) -> None:
    entry = source.ledger[2]
    recovery = {  # as the catalog writes them
        "recovery_target_lsn": str(Lsn(value=entry.lsn)),
        "recovery_target_timeline": "1",
        "recovery_target_action": "promote",
    }
    result, port, _, ctx, stats = await restore_clone(
        source, TargetPosition(position=Lsn(value=entry.lsn)), recovery
    )
    assert clone_psql(source, port, CHECKSUM_SQL) == entry.checksum
    assert isinstance(result.reached, Lsn)
    assert entry.lsn <= result.reached.value < source.ledger[3].lsn
    check_new_timeline(result, source, port)
    check_source_untouched(source)
    assert ctx.phases[:2] == ["prepare", "download"]
    assert "recover" in ctx.phases
    assert stats.served >= 1
    assert stats.errors == 0
    # The clone's pg_wal is on the cache's filesystem: nothing came through the socket.
    assert stats.taken + stats.handed_over == stats.served


async def test_restore_a_clone_to_a_time(source: Source) -> None:
    entry = source.ledger[4]
    result, port, _, _, _ = await restore_clone(source, TargetTime(at=entry.after))
    assert clone_psql(source, port, CHECKSUM_SQL) == entry.checksum
    assert result.reached_time is not None
    assert source.ledger[3].after < result.reached_time <= entry.after
    check_new_timeline(result, source, port)
    check_source_untouched(source)


async def test_restore_a_clone_to_the_earliest_consistent_point(source: Source) -> None:
    result, port, _, _, _ = await restore_clone(source, TargetImmediate())
    assert clone_psql(source, port, CHECKSUM_SQL) == "0:"
    manifest = BaseManifest.model_validate_json(await source.store.get_bytes(source.manifest_key))
    assert result.reached >= manifest.backup.consistent_at
    check_new_timeline(result, source, port)
    check_source_untouched(source)


async def test_a_target_beyond_the_archive_fails_with_the_reason(source: Source) -> None:
    beyond = Lsn(value=source.ledger[-1].lsn + (1 << 30))
    with pytest.raises(EngineError) as failed:
        await restore_clone(source, TargetPosition(position=beyond))
    assert "recovery ended before configured recovery target was reached" in str(failed.value)
    assert not failed.value.failure.retryable
    assert not source.clones[-1].exists(), "the failed clone is removed"
    check_source_untouched(source)


async def test_verify_restores_the_base_and_checks_it(source: Source, tmp_path: Path) -> None:
    scratch = source.cluster.base / "scratch"
    scratch.mkdir()
    result = await verify(
        source.db,
        backup_id=source.backup_id,
        manifest_key=source.manifest_key,
        store=source.store,
        prefix=PREFIX,
        scratch_dir=str(scratch),
        ctx=Recorder(),
        settings=ExecutorSettings(),
    )
    assert result.ok, result.checks
    names = [check.partition(":")[0] for check in result.checks]
    assert names[:5] == ["manifest", "download", "pg_verifybackup", "recovery", "query"]
    assert not any(scratch.iterdir()), "the scratch restore is removed"
    check_source_untouched(source)


async def test_verify_reports_a_corrupt_part(source: Source, tmp_path: Path) -> None:
    manifest = BaseManifest.model_validate_json(await source.store.get_bytes(source.manifest_key))
    bad = manifest.model_copy(deep=True)
    bad.postgres.parts[1] = Part(
        key=bad.postgres.parts[1].key, size=bad.postgres.parts[1].size, crc32c=crc32c_of_bytes(b"x")
    )
    key = manifest_key(PREFIX, source.uid, "corrupt-" + uuid.uuid4().hex[:6])
    await source.store.put_stream(key, bad.model_dump_json().encode())
    scratch = source.cluster.base / "scratch-corrupt"
    result = await verify(
        source.db,
        backup_id=source.backup_id,
        manifest_key=key,
        store=source.store,
        prefix=PREFIX,
        scratch_dir=str(scratch),
        ctx=Recorder(),
        settings=ExecutorSettings(),
    )
    assert not result.ok
    assert any(c.startswith("download: FAILED") for c in result.checks), result.checks
    with contextlib.suppress(FileNotFoundError):
        assert not any(scratch.iterdir())


# -- in place (last: these change the source) -----------------------------------------------------


async def restore_in_place(source: Source, target: RestoreTarget) -> RestoreResult:
    command = RunRestore(
        job_id=uuid.uuid4(),
        restore_id=uuid.uuid4(),
        target=target,
        mode=RestoreMode.IN_PLACE,
        plan=RestorePlan(
            base_backup_id=source.backup_id,
            base_manifest_key=source.manifest_key,
            lineage=Timeline(id=1),
        ),
    )
    return await restore(
        source.db,
        command,
        store=source.store,
        prefix=PREFIX,
        ctx=Recorder(),
        settings=ExecutorSettings(),
    )


def leftovers(source: Source) -> list[str]:
    data = source.cluster.data_dir
    return sorted(p.name for p in data.parent.iterdir() if p.name.startswith(f"{data.name}."))


async def test_a_failed_restore_in_place_puts_the_database_back(source: Source) -> None:
    beyond = Lsn(value=source.ledger[-1].lsn + (1 << 30))
    with pytest.raises(EngineError, match="recovery ended before configured recovery target"):
        await restore_in_place(source, TargetPosition(position=beyond))
    check_source_untouched(source)
    assert leftovers(source) == []


async def test_restore_in_place_to_an_lsn(source: Source) -> None:
    entry = source.ledger[1]
    result = await restore_in_place(source, TargetPosition(position=Lsn(value=entry.lsn)))
    cluster = source.cluster
    assert cluster.running
    assert cluster.psql(CHECKSUM_SQL) == entry.checksum
    assert isinstance(result.lineage, Timeline)
    assert cluster.psql("SELECT timeline_id FROM pg_control_checkpoint()") == str(result.lineage.id)
    assert result.lineage.id >= 2
    assert cluster.psql("SHOW restore_command") == ""
    # The pre-restore directory is kept aside, whole, until the user removes it.
    kept = leftovers(source)
    assert len(kept) == 1, kept
    assert ".tidemark-old-" in kept[0]
    old = cluster.data_dir.parent / kept[0]
    assert (old / "PG_VERSION").is_file()
    assert (old / "global" / "pg_control").is_file()
    from services.cli.leftovers import find_leftovers, remove_leftover

    (found,) = find_leftovers([cluster.data_dir])
    assert found.path == old
    remove_leftover(found, [cluster.data_dir])
    assert leftovers(source) == []
