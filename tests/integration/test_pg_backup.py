"""The PostgreSQL engine against a real cluster: describe, setup_archiving (walpush into a spool,
the prefix owner check) and base backups streamed into the filesystem store and the GCS
emulator — including a pg_basebackup that dies mid-stream and a cancelled backup, after which
the store holds nothing of them and no pg_basebackup is left running."""

from __future__ import annotations

import asyncio
import io
import json
import subprocess
import tarfile
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import zstandard
from pydantic import TypeAdapter

from schemas import Lsn, Timeline
from schemas.messages import BackupSpec, Compression
from schemas.messages.jobs import Phase
from services.blobstore import BlobStore, open_store
from services.engines.base import EngineError
from services.engines.postgres.archiving import WalPushArchiving
from services.engines.postgres.engine import PostgresEngine
from services.engines.postgres.manifest import BaseManifest, backup_prefix, manifest_key
from services.engines.postgres.spool import Spool
from services.executor.settings import HostedDatabase, PostgresInstance
from tests.fixtures.gcs import GcsEmulator
from tests.fixtures.postgres import PgCluster
from tests.integration.bus_helpers import unique

pytestmark = pytest.mark.integration

PHASE: TypeAdapter[str] = TypeAdapter(Phase)
"""What `job.progress` accepts as a phase: an engine's report must fit the executor's event."""

PART = 1 << 20
"""Small parts, so a fresh cluster's few tens of megabytes make several."""


@dataclass
class Recorder:
    """A JobContext that keeps every progress report."""

    job_id: uuid.UUID = field(default_factory=uuid.uuid4)
    reports: list[dict[str, Any]] = field(default_factory=list)

    async def progress(
        self,
        phase: str,
        *,
        done: int | None = None,
        total: int | None = None,
        unit: str | None = None,
        message: str = "",
    ) -> None:
        PHASE.validate_python(phase)
        self.reports.append(
            {"phase": phase, "done": done, "total": total, "unit": unit, "message": message}
        )


class Watched:
    """A real store that runs `after_put(key)` once each object is written: the seam a test uses
    to break or cancel a backup at a chosen point, with PostgreSQL and the store both real."""

    def __init__(self, store: BlobStore, after_put: Callable[[str], Awaitable[None]]) -> None:
        self._store = store
        self._after_put = after_put

    async def put_stream(self, key: str, source: Any, metadata: Any = None, **kw: Any) -> Any:
        info = await self._store.put_stream(key, source, metadata, **kw)
        await self._after_put(key)
        return info

    def __getattr__(self, name: str) -> Any:
        return getattr(self._store, name)


@pytest.fixture(params=["file", "gcs"])
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[BlobStore]:
    if request.param == "file":
        url = f"file://{tmp_path / 'store'}"
    else:
        emulator: GcsEmulator = request.getfixturevalue("gcs_emulator")
        bucket: str = request.getfixturevalue("gcs_bucket")
        url = f"gs://{bucket}/archive?endpoint={emulator.endpoint}"
    opened = open_store(url)
    yield opened
    await opened.close()


@pytest.fixture
async def file_store(tmp_path: Path) -> AsyncIterator[BlobStore]:
    opened = open_store(f"file://{tmp_path / 'store'}")
    yield opened
    await opened.close()


def hosted(cluster: PgCluster, uid: str, *, port: int | None = None) -> HostedDatabase:
    return HostedDatabase(
        uid=uid,
        engine="postgres",
        name="orders",
        postgres=PostgresInstance(
            data_dir=cluster.data_dir,
            port=port or cluster.port,
            socket_dir=cluster.socket_dir,
            os_user=cluster.db_user.name,
            bin_dir=cluster.bindir,
        ),
    )


def engine_for(cluster: PgCluster, uid: str) -> PostgresEngine:
    archiving = WalPushArchiving(tool_dir=cluster.base / "tools", spools={uid: spool_of(cluster)})
    return PostgresEngine(archiving=archiving, part_size=PART)


def spool_of(cluster: PgCluster) -> Path:
    return cluster.base / "spool"


async def keys(store: BlobStore, prefix: str) -> list[str]:
    return [info.key async for info in store.list(prefix)]


def basebackup_processes(port: int) -> list[int]:
    """pg_basebackup processes aimed at `port` (ours, left behind?)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if argv and argv[0].endswith(b"pg_basebackup") and str(port).encode() in argv:
            found.append(int(entry.name))
    return found


def wait_until(check: Callable[[], bool], timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


# -- describe -------------------------------------------------------------------------------------


async def test_describe_reports_the_running_cluster(pg_cluster: PgCluster) -> None:
    db = hosted(pg_cluster, unique("pg"))
    described = await PostgresEngine().describe(db)

    system_id = int(pg_cluster.psql("SELECT system_identifier FROM pg_control_system()"))
    assert described.system_id == system_id
    assert described.version == pg_cluster.psql("SHOW server_version_num")
    assert described.lineage == Timeline(id=1)
    assert not described.in_recovery
    assert isinstance(described.position, Lsn)
    now = Lsn.parse(pg_cluster.psql("SELECT pg_current_wal_lsn()"))
    assert described.position <= now
    assert described.details["wal_level"] == "replica"


async def test_describe_of_an_unreachable_cluster_is_a_clear_error(pg_cluster: PgCluster) -> None:
    db = hosted(pg_cluster, unique("pg"), port=1)
    with pytest.raises(EngineError) as caught:
        await PostgresEngine().describe(db)
    assert caught.value.failure.code == "TM-PG-SQL"
    assert ".s.PGSQL.1" in caught.value.failure.reason


# -- setup_archiving ------------------------------------------------------------------------------


async def test_setup_archiving_points_archive_command_at_walpush(
    pg_cluster: PgCluster, file_store: BlobStore
) -> None:
    uid = unique("pg")
    db = hosted(pg_cluster, uid)
    engine = engine_for(pg_cluster, uid)

    done = await engine.configure_archiving(db, file_store, "prod")

    spool = Spool(spool_of(pg_cluster))
    assert done.changed == ("archive_command",)
    assert done.restart_needed == ()
    assert pg_cluster.psql("SHOW archive_command") == done.archive_command
    assert f"--spool {spool.path} %p" in done.archive_command
    # WAL now really flows: a switched segment lands in the spool, handed over by walpush.
    segment = pg_cluster.psql("SELECT pg_walfile_name(pg_current_wal_lsn())")
    pg_cluster.execute("SELECT pg_switch_wal()")
    assert wait_until(lambda: (spool.ready_dir / segment).exists())
    owner = json.loads(await file_store.get_bytes(f"prod/{uid}/owner.json"))
    assert owner["system_id"] == (await engine.describe(db)).system_id
    # A second run finds nothing to change.
    again = await engine.configure_archiving(db, file_store, "prod")
    assert again.changed == ()
    assert again.archive_command == done.archive_command


async def test_setup_archiving_refuses_a_prefix_owned_by_another_cluster(
    pg_cluster: PgCluster, file_store: BlobStore
) -> None:
    uid = unique("pg")
    db = hosted(pg_cluster, uid)
    foreign = {"format": 1, "engine": "postgres", "system_id": 42, "name": "other"}
    await file_store.put_stream(f"{uid}/owner.json", json.dumps(foreign).encode())

    with pytest.raises(EngineError) as caught:
        await engine_for(pg_cluster, uid).setup_archiving(db, file_store, "")

    assert caught.value.failure.code == "TM-PG-FOREIGN"
    assert "system id 42" in caught.value.failure.reason
    assert pg_cluster.psql("SHOW archive_command") == ""  # the server was not touched
    assert not spool_of(pg_cluster).exists()


async def test_archive_mode_off_is_turned_on_and_the_restart_is_reported(
    pg_factory: Callable[..., PgCluster], file_store: BlobStore
) -> None:
    cluster = pg_factory(archive_mode="off")
    uid = unique("pg")
    db = hosted(cluster, uid)
    engine = engine_for(cluster, uid)

    done = await engine.configure_archiving(db, file_store, "")

    assert done.restart_needed == ("archive_mode",)
    assert set(done.changed) == {"archive_mode", "archive_command"}
    # Until the restart nothing is archived, so a backup would be unrestorable: refused.
    with pytest.raises(EngineError) as caught:
        await engine.backup(
            db, backup_id="b1", spec=BackupSpec(), store=file_store, prefix="", ctx=Recorder()
        )
    assert caught.value.failure.code == "TM-PG-NOARCHIVE"
    cluster.restart()
    assert cluster.psql("SHOW archive_mode") == "on"
    assert (await engine.configure_archiving(db, file_store, "")).restart_needed == ()


# -- backup ---------------------------------------------------------------------------------------


def tar_of(parts: list[bytes], compression: str) -> bytes:
    joined = b"".join(parts)
    if compression == "zstd":
        return zstandard.ZstdDecompressor().decompressobj().decompress(joined)
    return joined


@pytest.mark.parametrize("compression", [Compression.NONE, Compression.ZSTD])
async def test_backup_streams_parts_then_the_manifest(
    pg_cluster: PgCluster, store: BlobStore, compression: Compression, tmp_path: Path
) -> None:
    uid = unique("pg")
    db = hosted(pg_cluster, uid)
    engine = engine_for(pg_cluster, uid)
    await engine.setup_archiving(db, store, "prod")
    pg_cluster.execute("CREATE TABLE t AS SELECT g, md5(g::text) FROM generate_series(1, 50000) g")
    ctx = Recorder()
    spec = BackupSpec(compression=compression)

    outcome = await engine.backup(
        db, backup_id="b1", spec=spec, store=store, prefix="prod", ctx=ctx
    )

    manifest = BaseManifest.model_validate_json(await store.get_bytes(outcome.manifest_key))
    assert outcome.manifest_key == manifest_key("prod", uid, "b1")
    assert manifest.backup.job_id == ctx.job_id
    assert manifest.backup.spec == spec
    assert outcome.start <= outcome.consistent_at
    assert outcome.lineage == Timeline(id=1)
    assert outcome.started_at <= outcome.completed_at
    system_id = int(pg_cluster.psql("SELECT system_identifier FROM pg_control_system()"))
    assert manifest.postgres.system_id == system_id
    assert manifest.postgres.label == "tidemark:b1"
    assert manifest.postgres.compression == compression.value
    stored = await keys(store, backup_prefix("prod", uid, "b1"))
    assert stored == sorted([*(p.key for p in manifest.postgres.parts), outcome.manifest_key])
    assert outcome.piece_count == len(manifest.postgres.parts) >= 2
    assert outcome.size_bytes == sum(p.size for p in manifest.postgres.parts)

    blobs = [await store.get_bytes(p.key) for p in manifest.postgres.parts]
    tar = tar_of(blobs, compression.value)
    assert len(tar) == manifest.postgres.tar_bytes
    target = tmp_path / "restored"
    with tarfile.open(fileobj=io.BytesIO(tar)) as archive:
        archive.extractall(target, filter="data")
    label = (target / "backup_label").read_text()
    assert f"START WAL LOCATION: {outcome.start} " in label
    assert "LABEL: tidemark:b1" in label
    # PostgreSQL's own check of every file against its backup_manifest (WAL comes from the
    # archive, so it is not parsed here).
    checked = subprocess.run(
        [pg_cluster.bindir / "pg_verifybackup", "--no-parse-wal", target],
        capture_output=True,
        text=True,
        check=False,
    )
    assert checked.returncode == 0, checked.stderr
    ranges = json.loads((target / "backup_manifest").read_text())["WAL-Ranges"]
    assert Lsn.parse(ranges[-1]["End-LSN"]) == outcome.consistent_at

    copy = [r for r in ctx.reports if r["phase"] == "copy" and r["done"] is not None]
    assert copy, ctx.reports
    assert all(r["unit"] == "bytes" for r in copy)
    assert copy[-1]["done"] == copy[-1]["total"] > 0

    # The end of the backup's WAL reached the archive (the server switched and waited for it).
    last_needed = pg_cluster.psql(f"SELECT pg_walfile_name('{outcome.consistent_at}')")
    assert (spool_of(pg_cluster) / "ready" / last_needed).exists()


async def test_backup_again_with_the_same_id_returns_the_stored_backup(
    pg_cluster: PgCluster, file_store: BlobStore
) -> None:
    uid = unique("pg")
    db = hosted(pg_cluster, uid)
    engine = engine_for(pg_cluster, uid)
    await engine.setup_archiving(db, file_store, "")

    first = await engine.backup(
        db, backup_id="b1", spec=BackupSpec(), store=file_store, prefix="", ctx=Recorder()
    )
    listed = [info async for info in file_store.list(backup_prefix("", uid, "b1"))]
    again = await engine.backup(
        db, backup_id="b1", spec=BackupSpec(), store=file_store, prefix="", ctx=Recorder()
    )

    assert again == first
    assert [info async for info in file_store.list(backup_prefix("", uid, "b1"))] == listed


async def test_pg_basebackup_dying_mid_stream_leaves_no_objects(
    pg_cluster: PgCluster, store: BlobStore
) -> None:
    uid = unique("pg")
    db = hosted(pg_cluster, uid)
    engine = engine_for(pg_cluster, uid)
    await engine.setup_archiving(db, store, "")

    async def kill_walsender(key: str) -> None:
        if key.endswith("base.tar.00000"):
            pg_cluster.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                "WHERE backend_type = 'walsender'"
            )

    with pytest.raises(EngineError) as caught:
        await engine.backup(
            db,
            backup_id="b1",
            spec=BackupSpec(),
            store=Watched(store, kill_walsender),
            prefix="",
            ctx=Recorder(),
        )

    assert caught.value.failure.code in ("TM-PG-BASEBACKUP", "TM-PG-STREAM")
    assert "pg_basebackup" in caught.value.failure.reason
    assert await keys(store, backup_prefix("", uid, "b1")) == []
    assert basebackup_processes(pg_cluster.port) == []


async def test_pg_basebackup_refused_by_the_server_is_an_engine_error(
    pg_factory: Callable[..., PgCluster], file_store: BlobStore
) -> None:
    cluster = pg_factory(max_wal_senders=0)
    uid = unique("pg")
    db = hosted(cluster, uid)
    engine = engine_for(cluster, uid)
    await engine.setup_archiving(db, file_store, "")

    with pytest.raises(EngineError) as caught:
        await engine.backup(
            db, backup_id="b1", spec=BackupSpec(), store=file_store, prefix="", ctx=Recorder()
        )

    failure = caught.value.failure
    assert failure.code == "TM-PG-BASEBACKUP"
    assert "max_wal_senders" in failure.reason
    assert await keys(file_store, backup_prefix("", uid, "b1")) == []


async def test_cancelled_backup_leaves_no_objects_and_no_process(
    pg_cluster: PgCluster, store: BlobStore
) -> None:
    uid = unique("pg")
    db = hosted(pg_cluster, uid)
    engine = engine_for(pg_cluster, uid)
    await engine.setup_archiving(db, store, "")
    first_part = asyncio.Event()

    async def note(key: str) -> None:
        if key.endswith("base.tar.00000"):
            first_part.set()
            await asyncio.sleep(3600)  # hold the backup here until it is cancelled

    job = asyncio.create_task(
        engine.backup(
            db,
            backup_id="b1",
            spec=BackupSpec(),
            store=Watched(store, note),
            prefix="",
            ctx=Recorder(),
        )
    )
    await asyncio.wait_for(first_part.wait(), 30)
    assert basebackup_processes(pg_cluster.port) != []
    job.cancel()
    with pytest.raises(asyncio.CancelledError):
        await job

    assert basebackup_processes(pg_cluster.port) == []
    assert await keys(store, backup_prefix("", uid, "b1")) == []
    # The server ends its side of the aborted backup too: a new one can start at once.
    assert wait_until(
        lambda: (
            pg_cluster.psql(
                "SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'walsender'"
            )
            == "0"
        )
    )
    again = await engine.backup(
        db, backup_id="b1", spec=BackupSpec(), store=store, prefix="", ctx=Recorder()
    )
    assert again.piece_count >= 2


async def test_unsupported_specs_are_refused_before_anything_runs(
    pg_cluster: PgCluster, file_store: BlobStore
) -> None:
    db = hosted(pg_cluster, unique("pg"))
    engine = PostgresEngine()
    for spec in (BackupSpec(kind="incremental"), BackupSpec(compression=Compression.GZIP)):
        with pytest.raises(EngineError) as caught:
            await engine.backup(
                db, backup_id="b1", spec=spec, store=file_store, prefix="", ctx=Recorder()
            )
        assert caught.value.failure.code == "TM-PG-CONFIG"
    assert await keys(file_store, "") == []
