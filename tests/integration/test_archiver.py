"""The archiver as it runs: `python -m services.archiver` against the session's nats-server, with
the filesystem store and the GCS emulator, fed by a real PostgreSQL through walpush (also reading
ahead from its pg_wal), and killed with SIGKILL in the middle of a backlog."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import nats.errors
import pytest
import zstandard
from nats.aio.client import Client
from nats.js import JetStreamContext
from nats.js.api import DeliverPolicy

from schemas import DatabaseRef, Engine, Envelope, Timeline, decode, envelope
from schemas.messages import (
    AlarmReason,
    ArchiveAlarm,
    IndexedLog,
    LogArchived,
    LogIndexed,
    LogsIndexed,
)
from services.blobstore import BlobStore, ObjectInfo, crc32c_of_bytes, open_store
from services.bus import Publisher, ensure_topology
from services.engines.postgres import walpush
from services.engines.postgres.oscmd import system_python
from services.engines.postgres.spool import Spool, install_walpush
from services.settings import BusSettings
from tests.doubles.wal_segments import SYSTEM_ID, segment_bytes, segment_name, write_ready
from tests.fixtures.gcs import GcsEmulator
from tests.fixtures.postgres import PgCluster
from tests.integration.bus_helpers import unique

pytestmark = pytest.mark.integration

WAIT = 60.0


# -- the archiver process -------------------------------------------------------------------------


@dataclass
class ArchiverProcess:
    """One `python -m services.archiver` child, configured entirely through the environment."""

    nats_url: str
    state_dir: Path
    store_url: str
    databases: list[dict[str, Any]]
    node: str = field(default_factory=lambda: unique("node"))
    settings: dict[str, str] = field(default_factory=dict)
    proc: subprocess.Popen[bytes] | None = None
    runs: int = 0

    @property
    def log_path(self) -> Path:
        return self.state_dir / f"archiver-{self.runs}.log"

    def start(self) -> None:
        self.runs += 1
        env = dict(os.environ)
        env.update(
            {
                "TIDEMARK_STATE_DIR": str(self.state_dir),
                "TIDEMARK_HEALTH_INTERVAL_S": "0.5",
                "TIDEMARK_TELEMETRY__LOG_FORMAT": "text",
                "TIDEMARK_ARCHIVER__STORE_URL": self.store_url,
                "TIDEMARK_ARCHIVER__DATABASES": json.dumps(self.databases),
                "TIDEMARK_ARCHIVER__RESCAN_S": "0.2",
                "TIDEMARK_ARCHIVER__RETRY_BASE_S": "0.1",
                **self.settings,
            }
        )
        with open(self.log_path, "ab") as out:
            self.proc = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "services.archiver",
                    "--nats-url",
                    self.nats_url,
                    "--node",
                    self.node,
                ],
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def kill9(self) -> None:
        assert self.proc is not None
        os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(10)

    def stop(self) -> int:
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.kill9()
            raise

    def check_alive(self) -> None:
        if self.proc is not None and self.proc.poll() is not None:
            raise AssertionError(
                f"archiver exited with {self.proc.returncode}:\n{self.log_path.read_text()[-3000:]}"
            )


@pytest.fixture
def state_dir(tmp_path: Path) -> Path:
    path = tmp_path / "state"
    path.mkdir()
    return path


@pytest.fixture(params=["file", "gcs"])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """Each test runs against the filesystem store and against the GCS emulator."""
    if request.param == "file":
        return f"file://{tmp_path / 'store'}"
    emulator: GcsEmulator = request.getfixturevalue("gcs_emulator")
    bucket: str = request.getfixturevalue("gcs_bucket")
    return f"gs://{bucket}/archive?endpoint={emulator.endpoint}"


@pytest.fixture
async def store(store_url: str) -> AsyncIterator[BlobStore]:
    opened = open_store(store_url)
    yield opened
    await opened.close()


@pytest.fixture
async def js(nc: Client) -> JetStreamContext:
    context = nc.jetstream()
    await ensure_topology(context, BusSettings())  # the archiver ensures the same at start
    return context


@pytest.fixture
def archivers() -> Iterator[list[ArchiverProcess]]:
    started: list[ArchiverProcess] = []
    yield started
    for archiver in started:
        if archiver.proc is not None and archiver.proc.poll() is None:
            archiver.kill9()


# -- reading what happened ------------------------------------------------------------------------


async def events(js: JetStreamContext, subject: str, settle: float = 0.3) -> list[Envelope[Any]]:
    """Every event stored on `subject` so far (an ephemeral ordered consumer from the start)."""
    sub = await js.subscribe(
        subject, stream="TM_EVT", ordered_consumer=True, deliver_policy=DeliverPolicy.ALL
    )
    found: list[Envelope[Any]] = []
    try:
        while True:
            try:
                msg = await sub.next_msg(timeout=settle)
            except nats.errors.TimeoutError:
                return found
            found.append(decode(msg.data, subject=msg.subject))
    finally:
        await sub.unsubscribe()


async def wait_events(
    js: JetStreamContext,
    subject: str,
    done: Callable[[list[Envelope[Any]]], bool],
    archiver: ArchiverProcess,
    timeout: float = WAIT,
) -> list[Envelope[Any]]:
    deadline = time.monotonic() + timeout
    while True:
        found = await events(js, subject)
        if done(found):
            return found
        archiver.check_alive()
        if time.monotonic() > deadline:
            raise AssertionError(
                f"{subject}: {len(found)} events after {timeout}s\n"
                f"{archiver.log_path.read_text()[-3000:]}"
            )
        await asyncio.sleep(0.2)


async def objects(store: BlobStore, prefix: str) -> dict[str, ObjectInfo]:
    return {info.key: info async for info in store.list(prefix)}


def database(uid: str, spool: Path, system_id: int) -> dict[str, Any]:
    return {
        "uid": uid,
        "engine": "postgres",
        "name": "orders",
        "system_id": system_id,
        "spool_dir": str(spool),
    }


def logs_of(found: list[Envelope[Any]]) -> list[LogArchived]:
    return [m.data for m in found if isinstance(m.data, LogArchived)]


# -- PostgreSQL through walpush -------------------------------------------------------------------


def switch_segments(cluster: PgCluster, count: int) -> list[str]:
    cluster.execute("CREATE TABLE IF NOT EXISTS w (id int, pad text)")
    names = []
    for _ in range(count):
        cluster.execute("INSERT INTO w SELECT g, repeat('x', 100) FROM generate_series(1, 2000) g")
        names.append(cluster.psql("SELECT pg_walfile_name(pg_current_wal_lsn())"))
        cluster.psql("SELECT pg_switch_wal()")
    return names


async def test_postgres_segments_are_stored_once_announced_and_released_when_indexed(
    pg_cluster: PgCluster,
    store_url: str,
    store: BlobStore,
    state_dir: Path,
    js: JetStreamContext,
    nats_url: str,
    archivers: list[ArchiverProcess],
) -> None:
    uid = unique("pg")
    spool = Spool(pg_cluster.base / "spool")
    spool.init(uid, owner=pg_cluster.db_user)
    tool = install_walpush(pg_cluster.base / "tools", user=pg_cluster.db_user)
    command = spool.archive_command(system_python(pg_cluster.db_user), tool)
    assert pg_cluster.configure(archive_command=command) == []
    system_id = int(pg_cluster.psql("SELECT system_identifier FROM pg_control_system()"))
    archiver = ArchiverProcess(
        nats_url, state_dir, store_url, [database(uid, spool.path, system_id)]
    )
    archivers.append(archiver)
    archiver.start()

    names = switch_segments(pg_cluster, 4)
    subject = f"tm.evt.log.archived.{uid}"
    await wait_events(
        js, subject, lambda f: {e.file_name for e in logs_of(f)} >= set(names), archiver
    )
    # Segments completed before archiving was configured (initdb's) are archived too.
    ready = {path.name: path.read_bytes() for path in spool.ready_dir.iterdir()}
    assert set(ready) >= set(names)
    await wait_events(js, subject, lambda f: len(logs_of(f)) == len(ready), archiver)
    archived = logs_of(await events(js, subject))

    # Every segment exactly once in the store, crc32c matching the spool's copy.
    stored = await objects(store, f"{uid}/")
    by_key = Counter(e.object_key for e in archived)
    assert set(by_key.values()) == {1}, "one event per log"
    assert set(stored) == set(by_key) | {f"{uid}/owner.json"}
    for event in archived:
        assert event.file_name is not None
        data = ready[event.file_name]
        info = stored[event.object_key]
        assert info.crc32c == event.crc32c == crc32c_of_bytes(data)
        assert info.metadata["system_id"] == str(system_id)
        assert event.lineage == Timeline(id=1)
        assert event.size_bytes == len(data) == 16 << 20
        assert event.next.value - event.first.value == 16 << 20  # type: ignore[union-attr]
        assert await store.get_bytes(event.object_key) == data
    assert await events(js, f"tm.evt.archive.alarm.{uid}") == []

    # `tidemark status` shows the backlog the archiver reports in its health record.
    shown = subprocess.run(
        [sys.executable, "-m", "services.cli.main", "status", "--nats-url", nats_url],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "COLUMNS": "400"},
    )
    assert shown.returncode == 0, shown.stderr
    assert f"{uid}: backlog 0 logs" in shown.stdout
    assert f"awaiting catalog {len(archived)}" in shown.stdout

    # The catalog indexes them: the spool copies are released, and only then.
    ref = DatabaseRef(uid=uid, engine=Engine.POSTGRES, name="orders", system_id=system_id)
    catalog = Publisher(js, source="catalog")
    # The first as an older catalog announced a log (alone), the rest as one announcement.
    first, *rest = archived
    indexed = LogIndexed(
        lineage=first.lineage,
        thread=1,
        sequence=first.sequence,
        object_key=first.object_key,
        crc32c=first.crc32c,
    )
    await catalog.publish(envelope(indexed, source="catalog", database=ref))
    for lineage in {event.lineage for event in rest}:
        together = LogsIndexed(
            lineage=lineage,
            logs=tuple(
                IndexedLog(thread=1, sequence=e.sequence, object_key=e.object_key, crc32c=e.crc32c)
                for e in rest
                if e.lineage == lineage
            ),
        )
        await catalog.publish(envelope(together, source="catalog", database=ref))
    deadline = time.monotonic() + WAIT
    while any(spool.ready_dir.iterdir()):
        archiver.check_alive()
        assert time.monotonic() < deadline, sorted(p.name for p in spool.ready_dir.iterdir())
        await asyncio.sleep(0.1)
    assert archiver.stop() == 0


# -- SIGKILL in the middle of a backlog -----------------------------------------------------------

BACKLOG = 80


async def test_sigkill_mid_backlog_then_restart_loses_and_duplicates_nothing(
    tmp_path: Path,
    store_url: str,
    store: BlobStore,
    state_dir: Path,
    js: JetStreamContext,
    nats_url: str,
    archivers: list[ArchiverProcess],
) -> None:
    uid = unique("kill")
    spool = Spool(tmp_path / "spool")
    spool.init(uid)
    local = {}
    for number in range(1, BACKLOG + 1):
        name = segment_name(1, number)
        # Incompressible bytes after the header, so zstd and the upload take real time.
        data = segment_bytes(1, number)[:40] + os.urandom((1 << 20) - 40)
        write_ready(spool.ready_dir, name, data)
        local[name] = data
    archiver = ArchiverProcess(
        nats_url,
        state_dir,
        store_url,
        [database(uid, spool.path, SYSTEM_ID)],
        settings={"TIDEMARK_ARCHIVER__PARALLELISM": "2", "TIDEMARK_ARCHIVER__COMPRESSION": "zstd"},
    )
    archivers.append(archiver)
    archiver.start()

    prefix = f"{uid}/tl-00000001/logs/1/"
    deadline = time.monotonic() + WAIT
    while len(await objects(store, prefix)) < 3:
        archiver.check_alive()
        assert time.monotonic() < deadline, archiver.log_path.read_text()[-3000:]
        await asyncio.sleep(0.01)
    archiver.kill9()
    at_kill = len(await objects(store, prefix))
    assert at_kill < BACKLOG, f"killed mid-backlog ({at_kill} of {BACKLOG} stored)"

    archiver.start()
    subject = f"tm.evt.log.archived.{uid}"
    await wait_events(
        js, subject, lambda f: len({e.object_key for e in logs_of(f)}) == BACKLOG, archiver
    )
    await asyncio.sleep(1.0)  # room for a duplicate, which must not come
    found = await events(js, subject)
    assert archiver.stop() == 0

    per_key = Counter(e.object_key for e in logs_of(found))
    assert len(per_key) == BACKLOG
    assert set(per_key.values()) == {1}, "each log announced exactly once"
    stored = await objects(store, prefix)
    assert set(stored) == {prefix + name for name in local}, "each log stored exactly once"
    decompress = zstandard.ZstdDecompressor()
    for name, data in local.items():
        info = stored[prefix + name]
        assert info.metadata["crc32c"] == crc32c_of_bytes(data)
        assert info.metadata["compression"] == "zstd"
        assert decompress.decompress(await store.get_bytes(prefix + name)) == data
    assert await events(js, f"tm.evt.archive.alarm.{uid}") == []
    assert all((spool.ready_dir / name).exists() for name in local), "kept until indexed"


# -- a conflicting checksum ----------------------------------------------------------------------


async def test_a_conflicting_checksum_is_refused_with_an_alarm(
    tmp_path: Path,
    store_url: str,
    store: BlobStore,
    state_dir: Path,
    js: JetStreamContext,
    nats_url: str,
    archivers: list[ArchiverProcess],
) -> None:
    uid = unique("dup")
    spool = Spool(tmp_path / "spool")
    spool.init(uid)
    clash, fine = segment_name(1, 1), segment_name(1, 2)
    write_ready(spool.ready_dir, clash, segment_bytes(1, 1))
    write_ready(spool.ready_dir, fine, segment_bytes(1, 2))
    key = f"{uid}/tl-00000001/logs/1/{clash}"
    other = segment_bytes(1, 1, seed=uuid.uuid4().bytes)
    before = await store.put_stream(key, other)
    archiver = ArchiverProcess(
        nats_url, state_dir, store_url, [database(uid, spool.path, SYSTEM_ID)]
    )
    archivers.append(archiver)
    archiver.start()

    (alarm,) = [
        m.data
        for m in await wait_events(
            js, f"tm.evt.archive.alarm.{uid}", lambda f: len(f) == 1, archiver
        )
    ]
    await wait_events(js, f"tm.evt.log.archived.{uid}", lambda f: len(f) == 1, archiver)
    assert archiver.stop() == 0
    assert isinstance(alarm, ArchiveAlarm)
    assert alarm.reason is AlarmReason.CHECKSUM_CONFLICT
    assert alarm.object_key == key
    assert alarm.existing_crc32c == crc32c_of_bytes(other)
    assert alarm.attempted_crc32c == crc32c_of_bytes(segment_bytes(1, 1))
    held = await store.head(key)
    assert held is not None
    assert (held.crc32c, held.size) == (before.crc32c, before.size), "never overwritten"
    assert (spool.ready_dir / clash).exists(), "the local copy is kept"
    (archived,) = logs_of(await events(js, f"tm.evt.log.archived.{uid}"))
    assert archived.file_name == fine


# -- read-ahead from pg_wal, and SIGKILL in the middle of it -------------------------------------


def readahead_held(spool: Spool) -> bool:
    """Whether the archiver holds `readahead.lock` (as walpush tests it)."""
    try:
        fd = os.open(spool.readahead_lock_path, os.O_RDONLY)
    except FileNotFoundError:
        return False
    try:
        return walpush._readahead_held(fd)
    finally:
        os.close(fd)


def archiver_stats(cluster: PgCluster) -> tuple[int, str, int]:
    """pg_stat_archiver: (archived_count, last_archived_wal, failed_count)."""
    row = cluster.psql(
        "SELECT archived_count, coalesce(last_archived_wal, ''), failed_count FROM pg_stat_archiver"
    )
    archived, last, failed = row.split("|")
    return int(archived), last, int(failed)


async def wait_archived_by_postgres(
    cluster: PgCluster, last: str, archiver: ArchiverProcess | None = None
) -> tuple[int, str, int]:
    deadline = time.monotonic() + WAIT
    while True:
        stats = archiver_stats(cluster)
        if stats[1] >= last:
            return stats
        if archiver is not None:
            archiver.check_alive()
        assert time.monotonic() < deadline, f"{last} not archived: {stats}\n{cluster.log_tail()}"
        await asyncio.sleep(0.1)


async def test_read_ahead_acknowledges_postgresql_without_copies_and_survives_sigkill(
    pg_cluster: PgCluster,
    store_url: str,
    store: BlobStore,
    state_dir: Path,
    js: JetStreamContext,
    nats_url: str,
    archivers: list[ArchiverProcess],
) -> None:
    uid = unique("ahead")
    spool = Spool(pg_cluster.base / "spool")
    spool.init(uid, owner=pg_cluster.db_user)
    tool = install_walpush(pg_cluster.base / "tools", user=pg_cluster.db_user)
    system_id = int(pg_cluster.psql("SELECT system_identifier FROM pg_control_system()"))
    entry = database(uid, spool.path, system_id)
    entry["pg_wal_dir"] = str(pg_cluster.data_dir / "pg_wal")
    archiver = ArchiverProcess(
        nats_url,
        state_dir,
        store_url,
        [entry],
        settings={"TIDEMARK_ARCHIVER__PARALLELISM": "2", "TIDEMARK_ARCHIVER__RESCAN_S": "1.0"},
    )
    archivers.append(archiver)
    archiver.start()
    deadline = time.monotonic() + WAIT
    while not readahead_held(spool):
        archiver.check_alive()
        assert time.monotonic() < deadline, archiver.log_path.read_text()[-3000:]
        await asyncio.sleep(0.05)
    # Only now is PostgreSQL given the command: every call finds an archiver reading ahead.
    command = spool.archive_command(system_python(pg_cluster.db_user), tool)
    assert pg_cluster.configure(archive_command=command) == []

    # 1. Steady production: each segment is stored from pg_wal, and walpush acknowledges it
    #    from the marker, without a copy into the spool.
    names = switch_segments(pg_cluster, 3)
    await wait_archived_by_postgres(pg_cluster, names[-1], archiver)
    subject = f"tm.evt.log.archived.{uid}"
    await wait_events(
        js, subject, lambda f: {e.file_name for e in logs_of(f)} >= set(names), archiver
    )
    assert list(spool.ready_dir.iterdir()) == [], "acknowledged without a single copy"
    assert archiver_stats(pg_cluster)[2] == 0, "no failed archive_command"

    # 2. A backlog PostgreSQL hands over one file at a time while the archiver works ahead on
    #    the rest; SIGKILL it in the middle. walpush, finding the lock gone, copies into the
    #    spool; a new archiver finishes from the spool and pg_wal. Nothing lost, nothing twice.
    prefix = f"{uid}/tl-00000001/logs/1/"
    before = len(await objects(store, prefix))
    backlog = switch_segments(pg_cluster, 12)
    deadline = time.monotonic() + WAIT
    while len(await objects(store, prefix)) < before + 2:
        archiver.check_alive()
        assert time.monotonic() < deadline, archiver.log_path.read_text()[-3000:]
        await asyncio.sleep(0.01)
    archiver.kill9()
    at_kill = len(await objects(store, prefix))
    assert at_kill < before + len(backlog), "killed in the middle of the read-ahead"
    await wait_archived_by_postgres(pg_cluster, backlog[-1])  # the spool took over at once
    archiver.start()
    await wait_events(
        js,
        subject,
        lambda f: {e.file_name for e in logs_of(f)} >= set(names) | set(backlog),
        archiver,
    )
    await asyncio.sleep(1.0)  # room for a duplicate, which must not come
    found = logs_of(await events(js, subject))
    assert archiver.stop() == 0

    per_key = Counter(e.object_key for e in found)
    assert set(per_key.values()) == {1}, "each log announced exactly once"
    stored = await objects(store, prefix)
    assert set(stored) == set(per_key), "each log stored exactly once, all of them announced"
    for event in found:
        assert event.file_name is not None
        info = stored[event.object_key]
        assert info.crc32c == event.crc32c
        assert info.metadata["system_id"] == str(system_id)
        data = await store.get_bytes(event.object_key)
        assert crc32c_of_bytes(data) == event.crc32c
        # The spool copy, where walpush made one, is the same bytes as the stored object.
        copy = spool.ready_dir / event.file_name
        if copy.exists():
            assert copy.read_bytes() == data
    assert await events(js, f"tm.evt.archive.alarm.{uid}") == []
    assert archiver_stats(pg_cluster)[2] == 0, "PostgreSQL never saw archive_command fail"
