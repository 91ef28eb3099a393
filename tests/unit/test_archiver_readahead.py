"""Read-ahead: the streamer takes `.ready` segments straight from pg_wal, stores them, and tells
walpush (through `stored/<file>`) that PostgreSQL's file needs no copy; whatever it cannot store
from pg_wal it declines, and walpush's spool copy gets the usual checks and alarms.

PostgreSQL's side is played by hand: a segment written into `pg_wal/` with its
`archive_status/<file>.ready`, walpush run in-process, `.ready` renamed `.done` on exit 0.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator, Mapping
from contextlib import AbstractAsyncContextManager
from pathlib import Path

import pytest

from schemas.messages import AlarmReason
from services.archiver.journal import LogState
from services.archiver.postgres import PostgresSpoolSource
from services.blobstore import (
    BlobStore,
    Digest,
    MemoryStore,
    Metadata,
    ObjectInfo,
    ObjectReader,
    Source,
    crc32c_of_bytes,
)
from services.engines.postgres import walpush
from tests.doubles.stores import FlakyStore
from tests.doubles.wal_segments import SYSTEM_ID, segment_bytes, segment_name, write_ready
from tests.unit.archiver_rig import Rig, pg_database

pytestmark = pytest.mark.unit


class AheadRig(Rig):
    """A rig whose database also has a pg_wal (with archive_status/) to read ahead from."""

    def __init__(self, tmp_path: Path, **kwargs: object) -> None:
        super().__init__(tmp_path, **kwargs)  # type: ignore[arg-type]
        self.pg_wal = tmp_path / "pg_wal"
        (self.pg_wal / "archive_status").mkdir(parents=True)
        self.database = pg_database(self.spool.path).model_copy(update={"pg_wal_dir": self.pg_wal})
        self.sources = [PostgresSpoolSource(self.database)]

    def complete(self, number: int, data: bytes | None = None) -> str:
        """PostgreSQL finishes segment `number`: the file, then its `.ready`."""
        name = segment_name(1, number)
        (self.pg_wal / name).write_bytes(data if data is not None else segment_bytes(1, number))
        (self.pg_wal / "archive_status" / f"{name}.ready").touch()
        return name

    def archive(self, name: str) -> int:
        """PostgreSQL runs archive_command for `name`; `.ready` becomes `.done` on exit 0."""
        code = walpush.main(["--spool", str(self.spool.path), str(self.pg_wal / name)])
        if code == walpush.EXIT_OK:
            status = self.pg_wal / "archive_status"
            (status / f"{name}.ready").rename(status / f"{name}.done")
        return code

    def key(self, name: str) -> str:
        return f"orders-db/tl-00000001/logs/1/{name}"

    def look(self) -> None:
        """A notification: the streamer looks at the spool and pg_wal now."""
        assert self.streamer is not None
        self.streamer.poke()

    def lock_held(self) -> bool:
        try:
            fd = os.open(self.spool.readahead_lock_path, os.O_RDONLY)
        except FileNotFoundError:
            return False
        try:
            return walpush._readahead_held(fd)
        finally:
            os.close(fd)


async def test_ready_segments_are_stored_from_pg_wal_and_acknowledged_without_copies(
    tmp_path: Path,
) -> None:
    rig = AheadRig(tmp_path)
    names = [rig.complete(n) for n in (1, 2, 3)]
    streamer = await rig.start()
    await rig.until(lambda: len(rig.sink.archived) == 3)
    assert rig.lock_held(), "walpush may wait for the archiver"

    for name in names:
        info = await rig.store.head(rig.key(name))
        assert info is not None
        assert info.crc32c == crc32c_of_bytes((rig.pg_wal / name).read_bytes())
        st = (rig.pg_wal / name).stat()
        marker = rig.spool.marker(name)
        assert marker is not None
        assert marker["stored"] is True
        assert [marker[f] for f in walpush.IDENTITY] == [getattr(st, f) for f in walpush.IDENTITY]
        assert marker["key"] == rig.key(name)
        entry = streamer.entry(rig.key(name))
        assert entry is not None
        assert entry.log.path == rig.pg_wal / name
        assert rig.archive(name) == walpush.EXIT_OK
    assert rig.spool.ready_files() == [], "PostgreSQL acknowledged without a single copy"
    by_name = {e.file_name: e for e in rig.sink.archived}
    assert set(by_name) == set(names)

    # PostgreSQL is done with them: the markers go at the next look.
    rig.look()
    await rig.until(lambda: rig.spool.markers() == [])
    await rig.stop()
    assert not rig.lock_held(), "a stopped archiver makes nobody wait"


async def test_the_marker_comes_only_once_the_store_and_the_journal_hold_the_log(
    tmp_path: Path,
) -> None:
    gate = GatedStore(MemoryStore())
    rig = AheadRig(tmp_path, store=gate)
    name = rig.complete(4)
    streamer = await rig.start()
    await rig.until(lambda: gate.waiting)
    await asyncio.sleep(0.1)
    assert rig.spool.marker(name) is None, "not stored yet: walpush must keep waiting"
    gate.open.set()
    await rig.until(lambda: rig.spool.marker(name) is not None)
    entry = streamer.entry(rig.key(name))
    assert entry is not None
    assert entry.state in (LogState.STORED, LogState.PUBLISHED)
    assert await rig.store.head(rig.key(name)) is not None
    await rig.stop()


@pytest.mark.parametrize("trouble", ["foreign", "conflict"])
async def test_what_cannot_be_stored_from_pg_wal_is_declined_and_alarmed_from_the_spool(
    tmp_path: Path, trouble: str
) -> None:
    rig = AheadRig(tmp_path)
    number = 5
    if trouble == "foreign":
        data = segment_bytes(1, number, system_id=SYSTEM_ID + 1)
    else:
        data = segment_bytes(1, number)
        other = segment_bytes(1, number, seed=b"another history")
        await rig.store.put_stream(rig.key(segment_name(1, number)), other)
    name = rig.complete(number, data)
    good = rig.complete(6)
    await rig.start()
    await rig.until(lambda: len(rig.sink.archived) == 1)
    await rig.until(lambda: (rig.spool.marker(name) or {}).get("stored") is False)
    assert rig.sink.alarms == [], "read-ahead declines; the spool copy is what alarms"

    # walpush sees the refusal and copies the file into the spool, as without read-ahead.
    assert rig.archive(name) == walpush.EXIT_OK
    assert [f.name for f in rig.spool.ready_files()] == [name]
    assert rig.archive(good) == walpush.EXIT_OK
    rig.look()
    await rig.until(lambda: len(rig.sink.alarms) == 1)
    await asyncio.sleep(0.3)
    await rig.stop()
    (alarm,) = rig.sink.alarms
    if trouble == "foreign":
        assert alarm.reason is AlarmReason.INVALID
        assert "belongs to system" in alarm.detail
        assert await rig.store.head(rig.key(name)) is None
    else:
        assert alarm.reason is AlarmReason.CHECKSUM_CONFLICT
        assert alarm.attempted_crc32c == crc32c_of_bytes(data)
    assert alarm.path == str(rig.spool.ready_dir / name)
    assert (rig.spool.ready_dir / name).exists(), "kept for an operator"


async def test_a_failing_store_withdraws_read_ahead_and_the_next_success_renews_it(
    tmp_path: Path,
) -> None:
    flaky = FlakyStore(MemoryStore())
    rig = AheadRig(tmp_path, store=flaky, retry_base_s=0.2, retry_max_s=0.2)
    name = rig.complete(7)
    flaky.fail(rig.key(name), 2)
    await rig.start()
    # walpush copies at once instead of waiting on a failing store.
    await rig.until(lambda: flaky.failed[rig.key(name)] >= 1 and not rig.lock_held())
    await rig.until(lambda: len(rig.sink.archived) == 1)
    assert rig.lock_held()
    await rig.stop()


@pytest.mark.parametrize("copied", [True, False])
async def test_a_segment_gone_from_pg_wal_is_taken_from_the_spool_or_reported(
    tmp_path: Path, copied: bool
) -> None:
    flaky = FlakyStore(MemoryStore())
    rig = AheadRig(tmp_path, store=flaky, retry_base_s=0.05, retry_max_s=0.05)
    name = rig.complete(8)
    data = (rig.pg_wal / name).read_bytes()
    flaky.fail(rig.key(name), 3)
    await rig.start()
    await rig.until(lambda: flaky.failed[rig.key(name)] >= 1)
    # PostgreSQL got its answer elsewhere and recycled the segment.
    if copied:
        write_ready(rig.spool.ready_dir, name, data)
    (rig.pg_wal / "archive_status" / f"{name}.ready").rename(
        rig.pg_wal / "archive_status" / f"{name}.done"
    )
    (rig.pg_wal / name).unlink()
    if copied:
        await rig.until(lambda: len(rig.sink.archived) == 1)
        assert rig.sink.alarms == []
        info = await rig.store.head(rig.key(name))
        assert info is not None
        assert info.crc32c == crc32c_of_bytes(data)
    else:
        await rig.until(lambda: len(rig.sink.alarms) == 1)
        (alarm,) = rig.sink.alarms
        assert alarm.reason is AlarmReason.UNREADABLE
        assert "gone" in alarm.detail
    await rig.stop()


async def test_a_waiting_walpush_makes_the_streamer_look_at_once(tmp_path: Path) -> None:
    rig = AheadRig(tmp_path, rescan_s=30.0)
    await rig.start()
    await rig.until(lambda: rig.lock_held())
    name = rig.complete(9)
    # walpush, waiting for the marker, says so: the streamer looks without waiting 30 s.
    code = await asyncio.to_thread(rig.archive, name)
    assert code == walpush.EXIT_OK
    assert rig.spool.ready_files() == []
    assert [e.file_name for e in rig.sink.archived] == [name]
    await rig.stop()


class GatedStore:
    """Writes wait until `open` is set."""

    def __init__(self, inner: BlobStore) -> None:
        self.inner = inner
        self.open = asyncio.Event()
        self.waiting = False

    @property
    def late_metadata(self) -> bool:
        return self.inner.late_metadata

    async def put_stream(
        self,
        key: str,
        source: Source,
        metadata: Metadata | None = None,
        *,
        expect: Digest | None = None,
    ) -> ObjectInfo:
        if "/logs/" in key:
            self.waiting = True
            await self.open.wait()
        return await self.inner.put_stream(key, source, metadata, expect=expect)

    async def put_file(
        self, key: str, path: str | os.PathLike[str], metadata: Mapping[str, str] | None = None
    ) -> ObjectInfo:
        return await self.inner.put_file(key, path, metadata)

    async def get_to_file(self, key: str, path: str | os.PathLike[str]) -> ObjectInfo:
        return await self.inner.get_to_file(key, path)

    def open_read(
        self, key: str, *, chunk_size: int | None = None
    ) -> AbstractAsyncContextManager[ObjectReader]:
        return self.inner.open_read(key, chunk_size=chunk_size)

    async def get_bytes(self, key: str) -> bytes:
        return await self.inner.get_bytes(key)

    async def head(self, key: str) -> ObjectInfo | None:
        return await self.inner.head(key)

    def list(self, prefix: str = "", *, page_size: int = 1000) -> AsyncIterator[ObjectInfo]:
        return self.inner.list(prefix, page_size=page_size)

    async def delete(self, key: str, *, generation: int | None = None) -> bool:
        return await self.inner.delete(key, generation=generation)

    async def close(self) -> None:
        await self.inner.close()


async def test_a_pg_wal_it_cannot_read_leaves_archiving_to_the_spool(tmp_path: Path) -> None:
    rig = AheadRig(tmp_path)
    rig.database = rig.database.model_copy(update={"pg_wal_dir": tmp_path / "not-pg_wal"})
    rig.sources = [PostgresSpoolSource(rig.database)]
    name = segment_name(1, 10)
    write_ready(rig.spool.ready_dir, name, segment_bytes(1, 10))
    await rig.start()
    await rig.until(lambda: len(rig.sink.archived) == 1)
    assert not rig.lock_held(), "walpush must not wait for markers that cannot come"
    await rig.stop()
    assert [e.file_name for e in rig.sink.archived] == [name]
