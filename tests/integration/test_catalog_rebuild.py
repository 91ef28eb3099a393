"""`catalog rebuild` recreates from the bucket alone exactly what the events built.

Two histories, each on the filesystem store and on the GCS emulator:

- constructed: a PostgreSQL database with a gap and a second timeline (its history file names
  the parent) and an Oracle RAC database with two threads, published as events to the real
  catalog service while the matching objects are written with the archiver's own key and
  metadata functions, plus objects the rebuild must skip;
- real: a PostgreSQL cluster archiving through walpush and the archiver process, a base backup
  taken with pg_backup_start/stop, then a promotion to timeline 2; the catalog indexes it from
  the archiver's events (and the archiver releases its spool copies on `logs.indexed`).

Then the store is rebuilt from the bucket and its windows compared with the event-built ones.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from nats.aio.client import Client

from schemas import DatabaseRef, Engine, Incarnation, Lsn, Scn, Timeline, envelope, parse_lsn
from schemas.messages import (
    BackupCompleted,
    BackupKind,
    BackupSpec,
    LogArchived,
)
from services.blobstore import BlobStore, open_store
from services.blobstore.owner import claim_prefix
from services.catalog.index import CatalogIndex, UnknownDatabase
from services.catalog.rebuild import rebuild
from services.catalog.settings import sqlite_url
from services.catalog.store import CatalogStore
from services.engines.postgres.oscmd import system_python
from services.engines.postgres.spool import Spool, install_walpush
from tests.doubles.catalog_events import (
    SEG,
    T0,
    backup,
    history,
    redo,
    wal,
    write_log_object,
    write_manifest,
)
from tests.fixtures.gcs import GcsEmulator
from tests.fixtures.postgres import PgCluster
from tests.integration.bus_helpers import unique, wait_for
from tests.integration.test_archiver import ArchiverProcess, database, switch_segments
from tests.integration.test_catalog_ingest import NarrowCatalog, Outbox, catalog_settings

pytestmark = pytest.mark.integration

NOW = datetime(2026, 6, 1, tzinfo=UTC)
PREFIX = "tenant-a"
WAIT = 60.0


@pytest.fixture(params=["file", "gcs"])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "file":
        return f"file://{tmp_path / 'bucket'}"
    emulator: GcsEmulator = request.getfixturevalue("gcs_emulator")
    bucket: str = request.getfixturevalue("gcs_bucket")
    return f"gs://{bucket}/archive?endpoint={emulator.endpoint}"


@pytest.fixture
async def blobs(store_url: str) -> AsyncIterator[BlobStore]:
    opened = open_store(store_url)
    yield opened
    await opened.close()


class Catalog:
    """The real catalog service, narrowed to some databases, and what it publishes."""

    def __init__(self, nc: Client, nats_url: str, state_dir: Path, uids: list[str]) -> None:
        self.nc = nc
        self.uids = uids
        self.outbox = Outbox()
        self.service = NarrowCatalog(
            settings=catalog_settings(nats_url, state_dir), only=uids, durable=unique("catalog")
        )
        self._subs: list[Any] = []

    async def start(self) -> None:
        for uid in self.uids:
            self._subs.append(await self.nc.subscribe(f"tm.evt.*.*.{uid}", cb=self.outbox.on))
        await self.service.start()

    async def stop(self) -> None:
        await self.service.stop()
        for sub in self._subs:
            await sub.unsubscribe()

    def indexed(self) -> int:
        return len(self.outbox.indexed())


@pytest.fixture
async def catalogs() -> AsyncIterator[list[Catalog]]:
    started: list[Catalog] = []
    yield started
    for catalog in started:
        await catalog.stop()


async def rebuilt(blobs: BlobStore, path: Path, prefix: str = PREFIX) -> CatalogStore:
    store = CatalogStore.open(sqlite_url(path))
    report = await rebuild(blobs, store, prefix)
    assert report.stored == store.counts()
    return store


def loaded(store: CatalogStore) -> CatalogIndex:
    index = CatalogIndex()
    store.load_into(index)
    return index


# -- a constructed history ------------------------------------------------------------------------


async def test_rebuilt_windows_equal_the_event_built_ones(
    nc: Client,
    nats_url: str,
    tmp_path: Path,
    store_url: str,
    blobs: BlobStore,
    catalogs: list[Catalog],
) -> None:
    pg = DatabaseRef(uid=unique("pg"), engine=Engine.POSTGRES, name="orders", system_id=7_312_001)
    ora = DatabaseRef(uid=unique("ora"), engine=Engine.ORACLE, name="LEDGER", system_id=1 << 63)
    inc = Incarnation(resetlogs_id=1_180_000_000, resetlogs_scn=Scn(value=1_000), number=1)
    branch = 6 * SEG + 0x80
    tl1, tl2 = Timeline(id=1), Timeline(id=2, parent=1, branch_lsn=Lsn(value=branch))

    def pg_wal(n: int, timeline: int = 1) -> LogArchived:
        return wal(n, timeline, prefix=PREFIX, database=pg)

    def pg_base(backup_id: str, start: int, consistent: int, on: Timeline) -> BackupCompleted:
        minute = start // SEG
        return backup(backup_id, start, consistent, on, minute=minute, prefix=PREFIX, database=pg)

    def ora_redo(thread: int, seq: int, first: int, next_: int) -> LogArchived:
        return redo(thread, seq, first, next_, inc, prefix=PREFIX, database=ora)

    facts: list[tuple[DatabaseRef, LogArchived | BackupCompleted]] = [
        *[(pg, pg_wal(n)) for n in (1, 2, 3, 5, 6)],  # segment 4 is missing
        (pg, pg_base("b1", SEG + 0x28, SEG + 0x100, tl1)),
        (
            pg,
            backup(
                "b2", 5 * SEG + 0x28, 5 * SEG + 0x100, tl1, minute=5, prefix=PREFIX, database=pg
            ),
        ),
        (pg, history(2, 1, branch, prefix=PREFIX, database=pg)),
        *[(pg, pg_wal(n, 2)) for n in (6, 7, 8)],
        (
            pg,
            backup("b3", 7 * SEG + 0x28, 7 * SEG + 0x40, tl2, minute=7, prefix=PREFIX, database=pg),
        ),
        (ora, ora_redo(1, 1, 1_000, 2_000)),
        (ora, ora_redo(2, 1, 1_000, 1_500)),
        (ora, ora_redo(1, 2, 2_000, 3_000)),
        (ora, ora_redo(2, 2, 1_500, 2_600)),
        (ora, ora_redo(2, 4, 3_000, 4_000)),  # thread 2 sequence 3 is missing
        (ora, ora_redo(1, 3, 3_000, 4_500)),
        (ora, backup("L0", 1_100, 1_300, inc, prefix=PREFIX, database=ora)),
    ]
    catalog = Catalog(nc, nats_url, tmp_path / "catalog", [pg.uid, ora.uid])
    catalogs.append(catalog)
    await catalog.start()
    for ref in (pg, ora):
        await claim_prefix(blobs, PREFIX, ref)
    for ref, fact in facts:
        if isinstance(fact, LogArchived):
            await write_log_object(blobs, ref, fact)
        else:
            await write_manifest(blobs, fact)
        message = envelope(fact, source="archiver@db-node-1", database=ref)
        await catalog.service.publisher.publish(message)
    logs = sum(isinstance(f, LogArchived) for _, f in facts)
    await wait_for(lambda: catalog.indexed() == logs, timeout=WAIT)
    await wait_for(lambda: len(catalog.service.index.database(pg.uid).backups) == 3)
    await wait_for(lambda: len(catalog.service.index.database(ora.uid).backups) == 1)

    # What the rebuild must step over: backup pieces, a manifest it cannot read, an object
    # under logs/ that says nothing, and objects of no database at all.
    await blobs.put_stream(f"{PREFIX}/{pg.uid}/backups/b1/base.tar", b"pieces")
    await blobs.put_stream(f"{PREFIX}/{pg.uid}/backups/b9/manifest.json", b'{"format": 99}')
    await blobs.put_stream(f"{PREFIX}/{pg.uid}/tl-00000001/logs/1/junk", b"x", {"kind": "?"})
    await blobs.put_stream("elsewhere/readme.txt", b"not ours")

    store = CatalogStore.open(sqlite_url(tmp_path / "rebuilt.db"))
    report = await rebuild(blobs, store, PREFIX)
    assert (report.stored.databases, report.stored.logs, report.stored.backups) == (2, logs, 4)
    assert report.skipped == 2
    assert any("b9/manifest.json" in w for w in report.warnings)
    assert any("tl-00000001/logs/1/junk" in w for w in report.warnings)
    assert report.other_objects == 1

    live = catalog.service.index
    for ref in (pg, ora):
        assert report.index.windows(ref.uid, now=NOW) == live.windows(ref.uid, now=NOW)
        assert loaded(store).snapshot(ref.uid) == live.snapshot(ref.uid)
    assert live.snapshot(pg.uid) == [
        ("tl-00000001", SEG + 0x100, 4 * SEG),
        ("tl-00000001", 5 * SEG + 0x100, 7 * SEG),
        ("tl-00000002", branch, 9 * SEG),
    ]
    assert live.snapshot(ora.uid) == [("inc-1180000000", 1_300, 2_600)]
    assert store.lineage(pg.uid, "tl-00000002") == tl2  # read from the history file's content
    store.close()

    # The same through the command line, into another store.
    target = tmp_path / "cli.db"
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "services.cli.main",
            "catalog",
            "rebuild",
            "--store",
            store_url,
            "--prefix",
            PREFIX,
            "--catalog-url",
            sqlite_url(target),
            "--state-dir",
            str(tmp_path / "cli-state"),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "COLUMNS": "200"},
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"2 databases, 3 lineages, {logs} logs, 4 backups indexed" in done.stdout
    assert "2 skipped" in done.stdout
    assert f"{pg.uid} (postgres orders) restorable windows" in done.stdout
    assert "tl-00000002" in done.stdout
    cli = CatalogStore.open(sqlite_url(target))
    try:
        assert loaded(cli).snapshot(pg.uid) == live.snapshot(pg.uid)
    finally:
        cli.close()


async def test_a_rebuild_that_fails_leaves_the_store_as_it_was(tmp_path: Path) -> None:
    class Broken:
        """A bucket whose listing fails after the first object."""

        def __init__(self, inner: BlobStore) -> None:
            self.inner = inner

        async def list(self, prefix: str = "", *, page_size: int = 1000) -> AsyncIterator[Any]:
            async for info in self.inner.list(prefix):
                yield info
                raise ConnectionError("bucket went away")

        def __getattr__(self, name: str) -> Any:
            return getattr(self.inner, name)

    bucket = open_store("memory://")
    pg = DatabaseRef(uid="orders-db", engine=Engine.POSTGRES, name="orders", system_id=7)
    await claim_prefix(bucket, "", pg)
    for n in (1, 2):
        await write_log_object(bucket, pg, wal(n))
    store = CatalogStore.open(sqlite_url(tmp_path / "catalog.db"))
    store.record_log(pg, wal(7))
    with pytest.raises(ConnectionError):
        await rebuild(Broken(bucket), store, "")  # type: ignore[arg-type]
    assert store.counts().logs == 1
    assert (await rebuild(bucket, store, "")).stored.logs == 2
    store.close()


# -- a real PostgreSQL ----------------------------------------------------------------------------


def _promote(cluster: PgCluster) -> None:
    """Timeline 2 without a second server: restart as a standby on its own WAL, then promote."""
    cluster.stop()
    signal_file = cluster.data_dir / "standby.signal"
    signal_file.touch()
    os.chown(signal_file, cluster.db_user.uid, cluster.db_user.gid)
    cluster.start()
    cluster.psql("SELECT pg_promote(wait => true)")
    deadline = time.monotonic() + WAIT
    while cluster.psql("SELECT pg_is_in_recovery()") != "f":
        assert time.monotonic() < deadline, cluster.log_tail()
        time.sleep(0.1)


def _base_backup(cluster: PgCluster) -> tuple[int, int]:
    """pg_backup_start/stop in one session: the backup's start and end LSN."""
    out = cluster.psql(
        "SELECT pg_backup_start('tidemark', true);\nSELECT lsn FROM pg_backup_stop(true);"
    ).splitlines()
    return parse_lsn(out[0]), parse_lsn(out[1])


async def test_a_real_postgresql_archive_rebuilds_to_the_same_windows(
    nc: Client,
    nats_url: str,
    tmp_path: Path,
    pg_cluster: PgCluster,
    store_url: str,
    blobs: BlobStore,
    catalogs: list[Catalog],
) -> None:
    uid = unique("pg")
    spool = Spool(pg_cluster.base / "spool")
    spool.init(uid, owner=pg_cluster.db_user)
    tool = install_walpush(pg_cluster.base / "tools", user=pg_cluster.db_user)
    command = spool.archive_command(system_python(pg_cluster.db_user), tool)
    assert pg_cluster.configure(archive_command=command) == []
    system_id = int(pg_cluster.psql("SELECT system_identifier FROM pg_control_system()"))
    ref = DatabaseRef(uid=uid, engine=Engine.POSTGRES, name="orders", system_id=system_id)

    catalog = Catalog(nc, nats_url, tmp_path / "catalog", [uid])
    catalogs.append(catalog)
    await catalog.start()
    state = tmp_path / "archiver"
    state.mkdir()
    archiver = ArchiverProcess(nats_url, state, store_url, [database(uid, spool.path, system_id)])
    archiver.start()
    try:
        switch_segments(pg_cluster, 2)
        start, end = _base_backup(pg_cluster)
        switch_segments(pg_cluster, 2)
        _promote(pg_cluster)
        last = switch_segments(pg_cluster, 2)[-1]
        completed = BackupCompleted(
            backup_id="base-1",
            job_id=uuid.uuid4(),
            spec=BackupSpec(kind=BackupKind.FULL),
            lineage=Timeline(id=1),
            start=Lsn(value=start),
            consistent_at=Lsn(value=end),
            started_at=T0,
            completed_at=T0,
            size_bytes=1 << 20,
            piece_count=1,
            manifest_key=f"{uid}/backups/base-1/manifest.json",
        )
        await write_manifest(blobs, completed)
        await catalog.service.publisher.publish(
            envelope(completed, source="executor@db-node-1", database=ref)
        )

        def spooled() -> bool:
            done = pg_cluster.psql("SELECT coalesce(last_archived_wal, '') FROM pg_stat_archiver")
            return done >= last

        def settled() -> bool:
            # Everything spooled is archived, indexed, and released by the archiver; and the
            # base backup's event is in the index too (it races the logs: without it, no window).
            archiver.check_alive()
            archived = len(catalog.outbox.of(LogArchived))
            try:
                has_base = "base-1" in catalog.service.index.database(uid).backups
            except UnknownDatabase:
                has_base = False
            return (
                archived > 0
                and has_base
                and catalog.indexed() == archived
                and not any(spool.ready_dir.iterdir())
            )

        await wait_for(spooled, timeout=WAIT)
        await wait_for(settled, timeout=WAIT)
    finally:
        archiver.stop()

    live = catalog.service.index
    assert live.database(uid).history.lineages["tl-00000002"].parent == "tl-00000001"
    windows = live.snapshot(uid)
    assert [w[0] for w in windows] == ["tl-00000001", "tl-00000002"], windows
    assert windows[0][1] == end
    store = await rebuilt(blobs, tmp_path / "rebuilt.db", prefix="")
    try:
        index = loaded(store)
        assert index.snapshot(uid) == windows
        assert index.windows(uid, now=NOW) == live.windows(uid, now=NOW)
        assert store.counts().logs == len(live.database(uid).objects) + len(
            live.database(uid).lineage_files
        )
    finally:
        store.close()


# -- docs/catalog.md -------------------------------------------------------------------------------

CATALOG_DOC = Path(__file__).parents[2] / "docs" / "catalog.md"


async def test_the_rebuild_command_in_the_docs_runs_as_written(tmp_path: Path) -> None:
    block = re.search(r"```sh\n(tidemark catalog rebuild [^\n]*)\n```", CATALOG_DOC.read_text())
    assert block is not None, "docs/catalog.md lost its rebuild command"
    argv = shlex.split(block.group(1).replace("/var/lib/tidemark", str(tmp_path)))
    bucket = open_store(f"file://{tmp_path / 'store'}")
    pg = DatabaseRef(uid="orders-db", engine=Engine.POSTGRES, name="orders", system_id=7)
    await claim_prefix(bucket, "prod", pg)
    for n in (1, 2, 3):
        await write_log_object(bucket, pg, wal(n, prefix="prod"))
    await write_manifest(
        bucket, backup("b1", SEG + 0x28, SEG + 0x100, Timeline(id=1), prefix="prod")
    )
    await bucket.close()
    done = subprocess.run(
        [sys.executable, "-m", "services.cli.main", *argv[1:]],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
        env={**os.environ, "COLUMNS": "200"},
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "1 databases, 1 lineages, 3 logs, 1 backups indexed" in done.stdout
    store = CatalogStore.open(sqlite_url(tmp_path / "catalog.db"))
    try:
        assert loaded(store).snapshot("orders-db") == [("tl-00000001", SEG + 0x100, 4 * SEG)]
    finally:
        store.close()
