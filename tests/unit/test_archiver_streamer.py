"""The archiver's streaming loop over a PostgreSQL spool, an in-memory store and a recording sink.

Files are put into `ready/` directly, as walpush would (its own tests cover walpush).
"""

from __future__ import annotations

import asyncio
import socket
import sqlite3
from pathlib import Path

import pytest
import zstandard

from schemas import Timeline
from schemas.messages import AlarmReason
from services.archiver.errors import LogNotReady
from services.archiver.events import log_message_id
from services.archiver.journal import Journal, LogState
from services.archiver.keys import owner_key
from services.archiver.postgres import PostgresSpoolSource
from services.archiver.service import describe
from services.archiver.sources import read_chunks
from services.archiver.streamer import NotReleasable
from services.archiver.upload import store_log
from services.blobstore import MemoryStore, crc32c_of_bytes
from services.blobstore.owner import Owner
from tests.doubles.stores import FlakyStore
from tests.doubles.wal_segments import (
    SEGMENT_SIZE,
    SYSTEM_ID,
    segment_bytes,
    segment_name,
    write_ready,
)
from tests.unit.archiver_rig import Rig, add_segments, make_spool, pg_database

pytestmark = pytest.mark.unit

HISTORY = "00000002.history"
BACKUP = "000000010000000000000003.00000028.backup"
BACKUP_TEXT = (
    "START WAL LOCATION: 0/3000028 (file 000000010000000000000003)\n"
    "STOP WAL LOCATION: 0/3000100 (file 000000010000000000000003)\n"
    "CHECKPOINT LOCATION: 0/3000060\nBACKUP METHOD: streamed\nLABEL: base\n"
)


def key_of(rig: Rig, name: str, timeline: int = 1) -> str:
    if name.endswith((".history", ".backup")):
        return f"orders-db/tl-{timeline:08X}/history/{name}"
    return f"orders-db/tl-{timeline:08X}/logs/1/{name}"


async def test_every_log_is_stored_once_verified_and_announced(tmp_path: Path) -> None:
    rig = Rig(tmp_path)
    names = add_segments(rig.spool, [1, 2, 3, 4])
    write_ready(rig.spool.ready_dir, HISTORY, b"1\t0/5000000\tno recovery target specified\n")
    write_ready(rig.spool.ready_dir, BACKUP, BACKUP_TEXT.encode())
    streamer = await rig.start()
    await rig.until(lambda: len(rig.sink.archived) == 6)
    await rig.stop()

    stored = {info.key: info async for info in rig.store.list("orders-db/tl-")}
    assert set(stored) == {key_of(rig, n) for n in names} | {
        key_of(rig, HISTORY, 2),
        key_of(rig, BACKUP),
    }
    for name in names:
        info = stored[key_of(rig, name)]
        local = (rig.spool.ready_dir / name).read_bytes()
        assert info.crc32c == crc32c_of_bytes(local) == info.metadata["crc32c"]
        assert info.metadata["system_id"] == str(SYSTEM_ID)
        assert info.metadata["compression"] == "none"
    by_key = {e.object_key: e for e in rig.sink.archived}
    seg2 = by_key[key_of(rig, names[1])]
    assert (seg2.kind, seg2.sequence, str(seg2.first), str(seg2.next)) == (
        "wal",
        2,
        "0/200000",
        "0/300000",
    )
    assert seg2.file_name == names[1]
    history = by_key[key_of(rig, HISTORY, 2)]
    assert isinstance(history.lineage, Timeline)
    assert (history.kind, history.lineage.parent, str(history.lineage.branch_lsn)) == (
        "history",
        1,
        "0/5000000",
    )
    backup = by_key[key_of(rig, BACKUP)]
    assert (backup.kind, str(backup.first), str(backup.next)) == (
        "backup_history",
        "0/3000028",
        "0/3000100",
    )
    # The event id is the log's deterministic id, so a republish after a crash dedupes.
    for message in rig.sink.messages:
        entry = streamer.entry(message.data.object_key)
        assert entry is not None
        assert entry.state is LogState.PUBLISHED
        assert message.id == log_message_id(entry.log)
    assert rig.sink.sent == 6


async def test_zstd_compression_stores_a_smaller_object_that_restores_exactly(
    tmp_path: Path,
) -> None:
    rig = Rig(tmp_path, compression="zstd")
    (name,) = add_segments(rig.spool, [7])
    await rig.start()
    await rig.until(lambda: len(rig.sink.archived) == 1)
    await rig.stop()
    original = (rig.spool.ready_dir / name).read_bytes()
    info = await rig.store.head(key_of(rig, name))
    assert info is not None
    assert info.metadata["compression"] == "zstd"
    assert info.metadata["crc32c"] == crc32c_of_bytes(original)
    assert info.size < len(original)
    raw = await rig.store.get_bytes(key_of(rig, name))
    assert zstandard.ZstdDecompressor().decompress(raw) == original
    event = rig.sink.archived[0]
    assert (event.compression, event.crc32c, event.size_bytes) == (
        "zstd",
        crc32c_of_bytes(original),
        SEGMENT_SIZE,
    )


async def test_identical_repush_is_success_and_another_checksum_raises_an_alarm(
    tmp_path: Path,
) -> None:
    rig = Rig(tmp_path)
    names = add_segments(rig.spool, [1, 2, 3])
    # Segment 1 is already stored, identical (a re-push); segment 2's key holds another log.
    await rig.store.put_stream(key_of(rig, names[0]), (rig.spool.ready_dir / names[0]).read_bytes())
    other = segment_bytes(1, 2, seed=b"another cluster's history")
    before = await rig.store.put_stream(key_of(rig, names[1]), other)
    streamer = await rig.start()
    await rig.until(lambda: len(rig.sink.archived) == 2 and len(rig.sink.alarms) == 1)
    await rig.until(lambda: streamer.backlogs()["orders-db"].conflicts == 1)
    await rig.stop()

    assert {e.object_key for e in rig.sink.archived} == {
        key_of(rig, names[0]),
        key_of(rig, names[2]),
    }
    alarm = rig.sink.alarms[0]
    local = (rig.spool.ready_dir / names[1]).read_bytes()
    assert alarm.reason is AlarmReason.CHECKSUM_CONFLICT
    assert alarm.object_key == key_of(rig, names[1])
    assert alarm.existing_crc32c == crc32c_of_bytes(other)
    assert alarm.attempted_crc32c == crc32c_of_bytes(local)
    assert (rig.spool.ready_dir / names[1]).exists(), "the local copy is kept"
    assert await rig.store.head(key_of(rig, names[1])) == before, "never overwritten"
    entry = streamer.entry(key_of(rig, names[1]))
    assert entry is not None
    assert entry.state is LogState.CONFLICT
    points = rig.metric_points("tidemark.archive.alarms")
    assert [p.attributes["reason"] for p in points] == ["checksum_conflict"]

    # A restart does not raise the same alarm again.
    await rig.start()
    await asyncio.sleep(0.3)
    await rig.stop()
    assert len(rig.sink.alarms) == 1


async def test_a_repush_is_judged_by_the_logs_checksum_whatever_the_compression(
    tmp_path: Path,
) -> None:
    spool = make_spool(tmp_path)
    add_segments(spool, [3])
    source = PostgresSpoolSource(pg_database(spool.path))
    (log,) = (await source.discover()).logs
    store = MemoryStore()
    key = "orders-db/tl-00000001/logs/1/" + log.name
    first = await store_log(store, key, log, source.check_header, compression="none")
    again = await store_log(store, key, log, source.check_header, compression="zstd")
    assert (first.existed, again.existed) == (False, True)
    assert again.info == first.info
    assert again.compression == "none", "the event describes the object that is stored"


async def test_store_errors_back_off_and_retry_without_blocking_other_logs(tmp_path: Path) -> None:
    flaky = FlakyStore(MemoryStore())
    rig = Rig(tmp_path, store=flaky, parallelism=1, retry_base_s=0.05, retry_max_s=0.2)
    names = add_segments(rig.spool, [1, 2, 3, 4])
    flaky.fail(key_of(rig, names[0]), 3)  # the oldest log, which would go first
    await rig.start()
    await rig.until(lambda: len(rig.sink.archived) == 4)
    await rig.stop()

    order = [e.object_key for e in rig.sink.archived]
    assert order[-1] == key_of(rig, names[0]), "the failing log did not hold up the others"
    assert sorted(order[:3]) == [key_of(rig, n) for n in names[1:]]
    assert flaky.failed[key_of(rig, names[0])] == 3
    retries = rig.metric_points("tidemark.archive.retries")
    assert sum(p.value for p in retries) == 3
    journal = Journal(rig.journal_path)
    entry = journal.get(key_of(rig, names[0]))
    journal.close()
    assert entry is not None
    assert (entry.state, entry.attempts) == (LogState.PUBLISHED, 3)
    assert entry.last_error is None, "cleared once stored"


async def test_truncated_foreign_and_stray_files_are_reported_and_never_uploaded(
    tmp_path: Path,
) -> None:
    rig = Rig(tmp_path)
    good = add_segments(rig.spool, [1])[0]
    truncated = segment_name(1, 2)
    write_ready(rig.spool.ready_dir, truncated, segment_bytes(1, 2)[: SEGMENT_SIZE // 2])
    foreign = segment_name(1, 3)
    write_ready(rig.spool.ready_dir, foreign, segment_bytes(1, 3, system_id=SYSTEM_ID + 1))
    recycled = segment_name(1, 4)  # an old segment's bytes under a newer name
    write_ready(rig.spool.ready_dir, recycled, segment_bytes(1, 1, seed=b"old"))
    (rig.spool.ready_dir / "notes.txt").write_text("someone's scratch file")
    streamer = await rig.start()
    await rig.until(lambda: len(rig.sink.archived) == 1 and len(rig.sink.alarms) == 4)

    assert [e.object_key for e in rig.sink.archived] == [key_of(rig, good)]
    alarms = {(a.path or "").rsplit("/", 1)[-1]: a for a in rig.sink.alarms}
    assert set(alarms) == {truncated, foreign, recycled, "notes.txt"}
    assert all(a.reason is AlarmReason.INVALID for a in alarms.values())
    assert "belongs to system" in alarms[foreign].detail
    assert "truncated" in alarms[truncated].detail
    for name in (truncated, foreign, recycled):
        assert await rig.store.head(key_of(rig, name)) is None
        assert (rig.spool.ready_dir / name).exists()
        entry = streamer.entry(key_of(rig, name))
        assert entry is not None
        assert entry.state is LogState.UNREADABLE
    await rig.until(lambda: streamer.backlogs()["orders-db"].unreadable == 3)
    await rig.until(lambda: streamer.backlogs()["orders-db"].strays == 1)

    # The operator puts the complete segment in place: it is examined again and archived.
    (rig.spool.ready_dir / truncated).unlink()
    write_ready(rig.spool.ready_dir, truncated, segment_bytes(1, 2))
    await rig.until(lambda: len(rig.sink.archived) == 2)
    await rig.stop()
    assert len(rig.sink.alarms) == 4, "reported once, not at every rescan"


async def test_an_alarm_nobody_acknowledges_does_not_stall_archiving(tmp_path: Path) -> None:
    rig = Rig(tmp_path)
    rig.sink.alarms_flow.clear()  # NATS takes alarms but never acknowledges them
    (rig.spool.ready_dir / "core.1234").write_bytes(b"not WAL")
    add_segments(rig.spool, [1, 2])
    await rig.start()
    await rig.until(lambda: len(rig.sink.archived) == 2)
    await rig.stop(timeout=0.2)
    assert rig.sink.alarms == []


async def test_a_log_that_vanishes_before_it_is_stored_is_reported_unreadable(
    tmp_path: Path,
) -> None:
    flaky = FlakyStore(MemoryStore())
    rig = Rig(tmp_path, store=flaky)
    (name,) = add_segments(rig.spool, [5])
    flaky.fail(key_of(rig, name), 1000)
    await rig.start()
    await rig.until(lambda: flaky.failed[key_of(rig, name)] >= 1)
    (rig.spool.ready_dir / name).unlink()
    await rig.until(lambda: len(rig.sink.alarms) == 1)
    await rig.stop()
    alarm = rig.sink.alarms[0]
    assert alarm.reason is AlarmReason.UNREADABLE
    assert "gone" in alarm.detail


async def test_a_file_that_grows_while_read_is_not_ready(tmp_path: Path) -> None:
    spool = make_spool(tmp_path)
    add_segments(spool, [1])
    source = PostgresSpoolSource(pg_database(spool.path))
    (log,) = (await source.discover()).logs
    chunks = read_chunks(log, source.check_header, chunk_size=SEGMENT_SIZE // 4)
    next(chunks)
    with open(log.path, "ab") as grow:
        grow.write(b"more")
    with pytest.raises(LogNotReady):
        list(chunks)


async def test_crash_at_any_step_resumes_without_loss_or_duplicates(tmp_path: Path) -> None:
    rig = Rig(tmp_path)
    names = add_segments(rig.spool, [1, 2, 3])
    # Crash 1: NATS is down after the objects are stored; the journal holds them as stored.
    rig.sink.fail_next = 10**6
    streamer = await rig.start()
    await rig.until(
        lambda: all(
            (e := streamer.entry(key_of(rig, n))) is not None and e.state is LogState.STORED
            for n in names
        )
    )
    await rig.stop()
    generations = {n: (await rig.store.head(key_of(rig, n))) for n in names}
    assert rig.sink.messages == []
    # Crash 2: the journal is lost for segment 3 (as if killed between put and commit).
    db = sqlite3.connect(rig.journal_path)
    db.execute("DELETE FROM logs WHERE key = ?", (key_of(rig, names[2]),))
    db.commit()
    db.close()
    # Restart: stored logs are published with their deterministic ids, segment 3 is re-pushed
    # (identical: nothing rewritten), and a republish of the same id is dropped.
    rig.sink.fail_next = 0
    streamer = await rig.start()
    await rig.until(lambda: len(rig.sink.archived) == 3)
    await rig.stop()
    await rig.start()  # and once more: nothing new
    await asyncio.sleep(0.3)
    await rig.stop()
    assert rig.sink.sent == 3
    assert sorted(e.object_key for e in rig.sink.archived) == sorted(key_of(rig, n) for n in names)
    for n in names:
        assert (await rig.store.head(key_of(rig, n))) == generations[n], "stored exactly once"
    objects = [i.key async for i in rig.store.list("orders-db/tl-")]
    assert len(objects) == 3


async def test_log_indexed_releases_only_a_stored_log_with_the_same_checksum(
    tmp_path: Path,
) -> None:
    rig = Rig(tmp_path)
    names = add_segments(rig.spool, [1, 2])
    streamer = await rig.start()
    await rig.until(lambda: len(rig.sink.archived) == 2)
    event = next(e for e in rig.sink.archived if e.file_name == names[0])
    key = event.object_key
    await rig.until(lambda: getattr(streamer.entry(key), "state", None) is LogState.PUBLISHED)

    with pytest.raises(ValueError, match="kept"):
        await streamer.release(key, "AAAAAA==")
    assert (rig.spool.ready_dir / names[0]).exists()
    assert await streamer.release(key, event.crc32c) is LogState.RELEASED
    assert not (rig.spool.ready_dir / names[0]).exists()
    assert await streamer.release(key, event.crc32c) is LogState.RELEASED  # a redelivery
    assert await streamer.release("orders-db/tl-00000001/logs/1/elsewhere", "AAAAAA==") is None
    assert (rig.spool.ready_dir / names[1]).exists()
    await rig.stop()


async def test_log_indexed_before_the_log_is_stored_is_retried(tmp_path: Path) -> None:
    flaky = FlakyStore(MemoryStore())
    rig = Rig(tmp_path, store=flaky)
    (name,) = add_segments(rig.spool, [9])
    flaky.fail(key_of(rig, name), 1000)
    streamer = await rig.start()
    await rig.until(lambda: flaky.failed[key_of(rig, name)] >= 1)
    with pytest.raises(NotReleasable):
        await streamer.release(key_of(rig, name), "AAAAAA==")
    await rig.stop()
    assert (rig.spool.ready_dir / name).exists()


async def test_a_prefix_owned_by_another_database_is_refused_with_an_alarm(tmp_path: Path) -> None:
    rig = Rig(tmp_path)
    add_segments(rig.spool, [1])
    other = Owner(engine="postgres", system_id=SYSTEM_ID + 1, name="orders-clone")
    await rig.store.put_stream(owner_key("", "orders-db"), other.document())
    streamer = await rig.start()
    await rig.until(lambda: len(rig.sink.alarms) == 1)
    await rig.until(lambda: streamer.backlogs()["orders-db"].blocked is not None)
    await rig.stop()
    alarm = rig.sink.alarms[0]
    assert alarm.reason is AlarmReason.FOREIGN_ARCHIVE
    assert alarm.owner_system_id == SYSTEM_ID + 1
    assert [i.key async for i in rig.store.list("orders-db/")] == ["orders-db/owner.json"]
    assert rig.sink.archived == []


async def test_an_unclaimed_prefix_holding_another_databases_logs_is_refused(
    tmp_path: Path,
) -> None:
    rig = Rig(tmp_path)
    add_segments(rig.spool, [1])
    await rig.store.put_stream(
        "orders-db/tl-00000001/logs/1/000000010000000000000009",
        b"x",
        {"engine": "postgres", "system_id": "42"},
    )
    streamer = await rig.start()
    await rig.until(lambda: len(rig.sink.alarms) == 1)
    await rig.stop()
    assert streamer.backlogs()["orders-db"].blocked is not None
    assert await rig.store.head(owner_key("", "orders-db")) is None


async def test_the_prefix_is_claimed_once_and_kept(tmp_path: Path) -> None:
    rig = Rig(tmp_path)
    add_segments(rig.spool, [1])
    await rig.start()
    await rig.until(lambda: len(rig.sink.archived) == 1)
    await rig.stop()
    owner = await rig.store.get_bytes(owner_key("", "orders-db"))
    assert b'"system_id": %d' % SYSTEM_ID in owner
    await rig.start()
    await asyncio.sleep(0.2)
    await rig.stop()
    assert await rig.store.get_bytes(owner_key("", "orders-db")) == owner


async def test_a_notification_wakes_the_streamer_before_the_rescan(tmp_path: Path) -> None:
    rig = Rig(tmp_path, rescan_s=30.0)
    add_segments(rig.spool, [1])
    await rig.start()
    await rig.until(lambda: len(rig.sink.archived) == 1)
    (name,) = add_segments(rig.spool, [2])
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    try:
        sock.sendto(name.encode(), str(rig.spool.notify_socket_path))
    finally:
        sock.close()
    await rig.until(lambda: len(rig.sink.archived) == 2, timeout=5)
    await rig.stop()


async def test_metrics_and_status_show_lag_bytes_and_backlog(tmp_path: Path) -> None:
    flaky = FlakyStore(MemoryStore())
    rig = Rig(tmp_path, store=flaky)
    names = add_segments(rig.spool, [1, 2, 3])
    flaky.fail(key_of(rig, names[2]), 10**6)
    streamer = await rig.start()
    await rig.until(lambda: len(rig.sink.archived) == 2)
    backlog = streamer.backlogs()["orders-db"]
    await rig.until(lambda: (backlog.logs, backlog.unreleased) == (1, 2))
    assert backlog.bytes == SEGMENT_SIZE
    assert backlog.unreleased == 2
    assert backlog.last_lag_s is not None
    assert sum(p.value for p in rig.metric_points("tidemark.archive.bytes")) == 2 * SEGMENT_SIZE
    assert sum(p.count for p in rig.metric_points("tidemark.archive.lag")) == 2
    (gauge,) = rig.metric_points("tidemark.archive.backlog.logs")
    assert (gauge.value, dict(gauge.attributes)) == (1, {"database": "orders-db"})
    (gauge,) = rig.metric_points("tidemark.archive.backlog.bytes")
    assert gauge.value == SEGMENT_SIZE
    (gauge,) = rig.metric_points("tidemark.archive.oldest_wait")
    assert gauge.value >= 0.0
    line = describe("orders-db", backlog)
    assert line.startswith("orders-db: backlog 1 logs (1.0 MiB)")
    assert "awaiting catalog 2" in line
    await rig.stop()


async def test_a_segment_arriving_during_discovery_is_not_called_a_stray(tmp_path: Path) -> None:
    spool = make_spool(tmp_path)
    early, late = add_segments(spool, [3, 4])
    source = PostgresSpoolSource(pg_database(spool.path))
    listing = spool.ready_files()
    # walpush adds `late` after the spool was listed: the source sees it only in the raw
    # directory read that looks for strays.
    source.spool.ready_files = lambda: [f for f in listing if f.name != late]  # type: ignore[method-assign]
    (spool.ready_dir / "notes.txt").write_text("not ours")
    found = await source.discover()
    assert [log.name for log in found.logs] == [early]
    assert [p.name for p in found.problems] == ["notes.txt"]
