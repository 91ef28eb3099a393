"""`logs.indexed`: the catalog announces a batch's logs together, one message per database and
lineage, and the archiver releases every log of it that it holds.

The catalog side drives the real `Ingest.handle` over a real SQLite store (`CatalogRig`, whose
publisher is a recording fake); the archiver side the real streamer over a spool
(`archiver_rig`).
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any, cast

import pytest
from nats.aio.msg import Msg

from schemas import DatabaseRef, Envelope, Payload, envelope
from schemas.messages import LogArchived, LogDeleted, LogsIndexed
from services.archiver.handlers import indexed_subjects, release_all
from services.archiver.journal import LogState
from services.archiver.settings import ArchiverSettings
from services.blobstore import MemoryStore
from services.bus import Delivery, Publisher, RetryableError, TerminalError
from tests.doubles.catalog_events import PG, wal
from tests.doubles.catalog_rig import CatalogRig
from tests.doubles.stores import FlakyStore
from tests.unit.archiver_rig import Rig, add_segments, make_spool, pg_database

pytestmark = pytest.mark.unit

OTHER = DatabaseRef(uid="billing-db", engine=PG.engine, name="billing", system_id=7_312_002)


def handle(rig: CatalogRig, *events: tuple[DatabaseRef, Payload]) -> list[Exception | None]:
    """One batch through the ingest, as the consumer delivers it; the refusals."""
    deliveries = []
    for sequence, (database, data) in enumerate(events, start=1):
        message = envelope(data, source="archiver", database=database)
        deliveries.append(
            Delivery(
                message=message,
                subject=type(data).SUBJECT.format(database=database.uid),
                attempt=1,
                stream_sequence=sequence,
                publisher=cast(Publisher, rig.publisher),
                _msg=cast(Msg, None),
            )
        )
    return list(asyncio.run(rig.ingest.handle(deliveries)))


def announced(rig: CatalogRig) -> list[Envelope[Any]]:
    return [m for m in rig.publisher.sent if isinstance(m.data, LogsIndexed)]


def test_a_batch_is_announced_once_per_database_and_lineage_in_order(tmp_path: Path) -> None:
    rig = CatalogRig(tmp_path)
    try:
        w1, w2, w3 = wal(1), wal(2), wal(3)
        branch = wal(4, 2, parent=1, branch=4 * 16 * 1024 * 1024)
        elsewhere = wal(1, database=OTHER)
        forged = w1.model_copy(update={"crc32c": "AAAAAA=="})
        gone = LogDeleted(
            lineage=w3.lineage,
            kind="wal",
            thread=1,
            sequence=3,
            object_key=w3.object_key,
            file_name=w3.file_name,
            reason="retention",
        )
        events: list[tuple[DatabaseRef, Payload]] = [
            (PG, w1),
            (PG, branch),
            (OTHER, elsewhere),
            (PG, forged),
            (PG, gone),
            (PG, w2),
            (PG, w3),  # stored before its deletion: it stays deleted, not announced
        ]
        refused = handle(rig, *events)
        assert [r is None for r in refused] == [True, True, True, False, True, True, True]
        found = {(m.database.uid, m.data.lineage.key): m for m in announced(rig)}
        assert list(found) == [
            ("orders-db", "tl-00000001"),
            ("orders-db", "tl-00000002"),
            ("billing-db", "tl-00000001"),
        ]
        main = found["orders-db", "tl-00000001"]
        assert [(i.sequence, i.object_key, i.crc32c) for i in main.data.logs] == [
            (1, w1.object_key, w1.crc32c),
            (2, w2.object_key, w2.crc32c),
        ]
        assert [i.sequence for i in found["orders-db", "tl-00000002"].data.logs] == [4]
        assert found["billing-db", "tl-00000001"].data.logs[0].object_key == elsewhere.object_key
    finally:
        rig.close()


def test_the_same_batch_announced_again_has_the_same_id(tmp_path: Path) -> None:
    rig = CatalogRig(tmp_path)
    try:
        logs: list[LogArchived] = [wal(n) for n in (1, 2, 3)]
        batch = [envelope(log, source="archiver", database=PG) for log in logs]

        def deliver(messages: list[Envelope[Any]]) -> None:
            deliveries = [
                Delivery(
                    message=m,
                    subject=f"tm.evt.log.archived.{PG.uid}",
                    attempt=2,
                    stream_sequence=i,
                    publisher=cast(Publisher, rig.publisher),
                    _msg=cast(Msg, None),
                )
                for i, m in enumerate(messages, start=1)
            ]
            asyncio.run(rig.ingest.handle(deliveries))

        deliver(batch)
        deliver(batch)  # redelivered whole: a no-op in the store, announced again
        deliver(batch[:2])  # a batch cut differently is another announcement
        first, again, shorter = announced(rig)
        assert first.id == again.id
        assert first.data == again.data
        assert shorter.id != first.id
        assert [i.sequence for i in shorter.data.logs] == [1, 2]
        assert first.causation_id == batch[0].id
        assert first.correlation_id == batch[0].correlation_id
        assert rig.store.counts().logs == 3
    finally:
        rig.close()


async def test_the_archiver_releases_what_it_holds_and_retries_or_refuses_the_rest(
    tmp_path: Path,
) -> None:
    rig = Rig(tmp_path)
    names = add_segments(rig.spool, [1, 2, 3])
    streamer = await rig.start()
    try:
        await rig.until(lambda: len(rig.sink.archived) == 3)
        by_name = {e.file_name: e for e in rig.sink.archived}
        one, two, three = (by_name[n] for n in names)
        for event in (one, two, three):
            key = event.object_key
            await rig.until(
                lambda key=key: getattr(streamer.entry(key), "state", None) is LogState.PUBLISHED
            )
        another_nodes = ("orders-db/tl-00000001/logs/1/000000010000000000000063", "AAAAAA==")
        # One checksum differs: the others are released, the message refused for that one.
        with pytest.raises(TerminalError, match="kept"):
            await release_all(
                streamer,
                [(one.object_key, one.crc32c), (two.object_key, "AAAAAA=="), another_nodes],
            )
        assert streamer.entry(one.object_key).state is LogState.RELEASED
        assert streamer.entry(two.object_key).state is LogState.PUBLISHED
        assert not (rig.spool.ready_dir / names[0]).exists()
        assert (rig.spool.ready_dir / names[1]).exists()
        # A redelivery of what is released already, with the last one: all released now.
        await release_all(
            streamer, [(one.object_key, one.crc32c), (three.object_key, three.crc32c)]
        )
        assert streamer.entry(three.object_key).state is LogState.RELEASED
    finally:
        await rig.stop()


async def test_a_log_not_stored_yet_holds_only_itself_back(tmp_path: Path) -> None:
    flaky = FlakyStore(MemoryStore())
    rig = Rig(tmp_path, store=flaky)
    stored, stuck = add_segments(rig.spool, [1, 9])
    stuck_key = f"orders-db/tl-00000001/logs/1/{stuck}"
    flaky.fail(stuck_key, 1000)
    streamer = await rig.start()
    try:
        await rig.until(lambda: len(rig.sink.archived) == 1)
        (event,) = rig.sink.archived
        key = event.object_key
        await rig.until(lambda: getattr(streamer.entry(key), "state", None) is LogState.PUBLISHED)
        await rig.until(lambda: flaky.failed[stuck_key] >= 1)
        # The stuck one sends the message back to be retried; the other is released now.
        with pytest.raises(RetryableError, match="not stored yet"):
            await release_all(streamer, [(stuck_key, "AAAAAA=="), (key, event.crc32c)])
        assert streamer.entry(key).state is LogState.RELEASED
        assert not (rig.spool.ready_dir / stored).exists()
        assert (rig.spool.ready_dir / stuck).exists()
    finally:
        await rig.stop()


def test_the_archiver_follows_both_announcements_of_its_databases(tmp_path: Path) -> None:
    settings = ArchiverSettings(databases=[pg_database(make_spool(tmp_path).path)])
    assert indexed_subjects(settings) == [
        "tm.evt.logs.indexed.orders-db",
        "tm.evt.log.indexed.orders-db",
    ]
