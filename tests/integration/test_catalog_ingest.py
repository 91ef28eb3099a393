"""The catalog service against a real nats-server: events in → store → index → events out.

Each test uses its own database uid and durable, since the server (and TM_EVT) is shared by the
whole session.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from nats.aio.client import Client
from nats.aio.msg import Msg

from schemas import DatabaseRef, Engine, Envelope, Timeline, decode, envelope
from schemas.messages import (
    BackupDeleted,
    IndexedLog,
    LogArchived,
    LogDeleted,
    LogsIndexed,
    WindowChanged,
)
from services.bus import Publisher, ensure_topology
from services.catalog.ingest import derived_id
from services.catalog.service import CatalogService
from services.catalog.settings import CatalogSettings
from services.catalog.store import CatalogStore
from services.runtime import ConsumerSpec
from services.settings import NatsSettings, Settings
from tests.doubles.catalog_events import SEG, backup, wal
from tests.integration.bus_helpers import FAST, dead_letters, unique, wait_for

pytestmark = pytest.mark.integration


@dataclass
class NarrowCatalog(CatalogService):
    """The real service, with its consumer narrowed to one database under a unique durable."""

    only: Sequence[str] = ()
    durable: str = field(default_factory=lambda: unique("catalog"))

    def consumers(self, publisher: Publisher) -> Sequence[ConsumerSpec]:
        assert self.ingest is not None
        return (self.ingest.consumer(durable=self.durable, databases=list(self.only)),)


def catalog_settings(nats_url: str, state_dir: Path, **catalog: Any) -> Settings:
    return Settings(
        node="catalog-node",
        state_dir=state_dir,
        nats=NatsSettings(url=nats_url),
        bus=FAST,
        # No timeline page unless a test asks for one: 8470 may be a user's own stack's.
        catalog=CatalogSettings(**{"http_port": 0, **catalog}),
    )


class Outbox:
    """Everything the catalog publishes about one database, as decoded envelopes."""

    def __init__(self) -> None:
        self.messages: list[Envelope[Any]] = []

    async def on(self, msg: Msg) -> None:
        self.messages.append(decode(msg.data, subject=msg.subject))

    def of(self, kind: type[Any]) -> list[Any]:
        """The payloads of one kind, in arrival order."""
        return [m.data for m in self.messages if isinstance(m.data, kind)]

    def indexed(self) -> list[IndexedLog]:
        """Every log announced in `logs.indexed`, in arrival order."""
        return [log for announced in self.of(LogsIndexed) for log in announced.logs]


@dataclass
class Rig:
    nc: Client
    uid: str
    db: DatabaseRef
    state_dir: Path
    nats_url: str
    outbox: Outbox
    catalog: dict[str, Any] = field(default_factory=dict)
    service: NarrowCatalog | None = None
    durable: str = field(default_factory=lambda: unique("catalog"))

    async def start(self) -> NarrowCatalog:
        self.service = NarrowCatalog(
            settings=catalog_settings(self.nats_url, self.state_dir, **self.catalog),
            only=[self.uid],
            durable=self.durable,
        )
        await self.service.start()
        return self.service

    async def stop(self) -> None:
        if self.service is not None:
            await self.service.stop()
            self.service = None

    async def publish(self, data: Any, message_id: Any = None) -> Envelope[Any]:
        message = envelope(data, source="archiver@db-node-1", database=self.db)
        if message_id is not None:
            message = message.model_copy(update={"id": message_id})
        await self.nc.jetstream().publish(
            f"tm.evt.{data.TYPE}.{self.uid}",
            message.model_dump_json().encode(),
            headers={"Nats-Msg-Id": str(message.id)},
        )
        return message

    def store(self) -> CatalogStore:
        settings = CatalogSettings(**self.catalog)
        return CatalogStore.open(
            settings.url_for(self.state_dir), password_file=settings.password_file
        )


@asynccontextmanager
async def open_rig(
    nc: Client, nats_url: str, state_dir: Path, **catalog: Any
) -> AsyncIterator[Rig]:
    """A rig for a fresh database uid, listening to everything published about it."""
    uid = unique("db")
    outbox = Outbox()
    sub = await nc.subscribe(f"tm.evt.*.*.{uid}", cb=outbox.on)
    db = DatabaseRef(uid=uid, engine=Engine.POSTGRES, name="orders", system_id=7_312_001)
    made = Rig(nc, uid, db, state_dir, nats_url, outbox, catalog=catalog)
    try:
        yield made
    finally:
        await made.stop()
        await sub.unsubscribe()


@pytest.fixture
async def rig(nc: Client, nats_url: str, tmp_path: Path) -> AsyncIterator[Rig]:
    async with open_rig(nc, nats_url, tmp_path / "state") as made:
        yield made


def logs(rig: Rig, *segnos: int, timeline: int = 1) -> list[LogArchived]:
    return [wal(n, timeline, database=rig.db) for n in segnos]


async def until(predicate: Callable[[], bool], timeout: float = 15.0) -> None:
    await wait_for(predicate, timeout=timeout)


async def test_logs_are_stored_indexed_and_announced(rig: Rig) -> None:
    service = await rig.start()
    published = [await rig.publish(log) for log in logs(rig, 1, 2, 3)]
    await until(lambda: len(rig.outbox.indexed()) == 3)
    assert [(o.object_key, o.crc32c, o.sequence) for o in rig.outbox.indexed()] == [
        (m.data.object_key, m.data.crc32c, m.data.sequence) for m in published
    ]
    # Each announcement is caused by the first log.archived it answers (its correlation), and
    # says its database and lineage; the catalog is its source.
    causes = {m.id: m for m in published}
    for effect in [m for m in rig.outbox.messages if m.type == "logs.indexed"]:
        cause = causes[effect.causation_id]
        assert effect.data.logs[0].object_key == cause.data.object_key
        assert effect.correlation_id == cause.correlation_id
        assert effect.database == rig.db
        assert effect.data.lineage == cause.data.lineage
        assert effect.source == "catalog@catalog-node"
    assert service.index.database(rig.uid).history.threads("tl-00000001")[1].cover.intervals() == [
        (SEG, 4 * SEG)
    ]


async def test_a_backup_opens_a_window_and_its_deletion_closes_it(rig: Rig) -> None:
    await rig.start()
    for log in logs(rig, 1, 2, 3):
        await rig.publish(log)
    await until(lambda: len(rig.outbox.indexed()) == 3)
    assert rig.outbox.of(WindowChanged) == []  # logs alone restore nothing

    b1 = backup("b1", SEG + 0x28, SEG + 0x100, Timeline(id=1), database=rig.db)
    await rig.publish(b1)
    await until(lambda: len(rig.outbox.of(WindowChanged)) == 1)
    opened: WindowChanged = rig.outbox.of(WindowChanged)[0]
    assert opened.lineage == "tl-00000001"
    assert [(w.start.value, w.end.value, w.bases) for w in opened.windows] == [
        (SEG + 0x100, 4 * SEG, ["b1"])
    ]
    await rig.publish(logs(rig, 4)[0])
    await until(lambda: len(rig.outbox.of(WindowChanged)) == 2)
    assert rig.outbox.of(WindowChanged)[1].windows[0].end.value == 5 * SEG

    await rig.publish(BackupDeleted(backup_id="b1", reason="retention"))
    await until(lambda: len(rig.outbox.of(WindowChanged)) == 3)
    assert rig.outbox.of(WindowChanged)[2].windows == []
    # A late backup.completed (a replay) does not bring it back.
    await rig.publish(b1)
    await rig.publish(logs(rig, 5)[0])
    await until(lambda: len(rig.outbox.indexed()) == 5)
    assert len(rig.outbox.of(WindowChanged)) == 3


async def test_a_redelivered_log_changes_nothing_but_is_announced_again(rig: Rig) -> None:
    await rig.start()
    log = logs(rig, 7)[0]
    first = await rig.publish(log)
    await until(lambda: len(rig.outbox.indexed()) == 1)
    # The same fact again under a new envelope id (a republish after the dedupe window).
    again = await rig.publish(log, message_id=derived_id(first.id, "republish"))
    await until(lambda: len(rig.outbox.indexed()) == 2)
    assert rig.outbox.messages[-1].causation_id == again.id
    await rig.stop()
    store = rig.store()
    try:
        assert store.counts().logs == 1
    finally:
        store.close()


async def test_a_different_log_under_a_known_name_is_dead_lettered_and_the_first_kept(
    rig: Rig,
) -> None:
    service = await rig.start()
    log = logs(rig, 7)[0]
    await rig.publish(log)
    await until(lambda: len(rig.outbox.indexed()) == 1)
    forged = log.model_copy(update={"crc32c": "AAAAAA=="})
    await rig.publish(forged)
    letter = await dead_letters(rig.nc.jetstream(), f"tm.evt.log.archived.{rig.uid}")
    assert letter.error == "terminal"
    assert "keeping the first" in letter.reason
    assert len(rig.outbox.indexed()) == 1  # the archiver keeps its copy of the forged one
    held = service.index.database(rig.uid).objects[("tl-00000001", 1, 7)]
    assert held.crc32c == log.crc32c


def deleted(log: LogArchived) -> LogDeleted:
    return LogDeleted(
        lineage=log.lineage,
        kind=log.kind,
        thread=log.thread,
        sequence=log.sequence,
        object_key=log.object_key,
        file_name=log.file_name,
        reason="retention",
    )


async def test_one_batch_is_applied_in_stream_order_and_a_poison_event_refused_alone(
    rig: Rig,
) -> None:
    w1, w2, w3, w4, w5 = logs(rig, 1, 2, 3, 4, 5)
    b1 = backup("b1", SEG + 0x28, SEG + 0x100, Timeline(id=1), database=rig.db)
    moved = b1.model_copy(update={"manifest_key": f"{rig.uid}/backups/elsewhere/manifest.json"})
    forged = w1.model_copy(update={"crc32c": "AAAAAA=="})
    # Published before the catalog starts, so its consumer takes them as one batch.
    await ensure_topology(rig.nc.jetstream(), FAST)
    for event in (w1, w2, forged, w3, deleted(w4), w4, deleted(w2), b1, moved, w5):
        await rig.publish(event)
    service = await rig.start()
    await until(lambda: len(rig.outbox.indexed()) == 4)
    js = rig.nc.jetstream()
    forged_letter = await dead_letters(js, f"tm.evt.log.archived.{rig.uid}")
    assert "keeping the first" in forged_letter.reason
    moved_letter = await dead_letters(js, f"tm.evt.backup.completed.{rig.uid}")
    assert "keeping the first" in moved_letter.reason
    # Deleted before its (earlier stored) object's event arrived: it stays deleted, a
    # tombstone. Archived, then deleted: gone.
    db = service.index.database(rig.uid)
    assert sorted(seq for _, _, seq in db.objects) == [1, 3, 5]
    assert db.objects[("tl-00000001", 1, 1)].crc32c == w1.crc32c
    assert [o.object_key for o in rig.outbox.indexed()] == [
        log.object_key for log in (w1, w2, w3, w5)
    ]
    assert len(rig.outbox.of(LogsIndexed)) == 1  # one batch, one announcement
    # One batch, one notice: the window as the whole batch left it (segment 2 is missing).
    [notice] = rig.outbox.of(WindowChanged)
    assert [(w.start.value, w.end.value) for w in notice.windows] == [(SEG + 0x100, 2 * SEG)]
    info = await js.consumer_info("TM_EVT", rig.durable)
    assert (info.num_pending, info.num_ack_pending) == (0, 0)
    await rig.stop()
    store = rig.store()
    try:
        assert store.counts().logs == 3
        assert store.counts().backups == 1
    finally:
        store.close()


async def test_a_restart_loads_the_same_index_from_the_store(rig: Rig) -> None:
    service = await rig.start()
    for log in logs(rig, 1, 2, 3, 5):
        await rig.publish(log)
    await rig.publish(backup("b1", SEG + 0x28, SEG + 0x100, Timeline(id=1), database=rig.db))
    await until(lambda: len(rig.outbox.of(WindowChanged)) == 1)
    before = service.index.snapshot(rig.uid)
    await rig.stop()

    again = await rig.start()  # same durable: nothing left to consume
    assert again.index.snapshot(rig.uid) == before
    assert again.index.databases() == [rig.db]
    # Known windows are not announced again after a restart.
    await rig.publish(logs(rig, 9)[0])
    await until(lambda: len(rig.outbox.indexed()) == 5)
    assert len(rig.outbox.of(WindowChanged)) == 1


def test_log_indexed_ids_are_derived_from_their_cause() -> None:
    from schemas import uuid7

    cause = uuid7()
    assert derived_id(cause, "log.indexed") == derived_id(cause, "log.indexed")
    assert derived_id(cause, "log.indexed") != derived_id(cause, "window.changed")
    assert derived_id(cause, "log.indexed").version == 7
    assert derived_id(cause, "log.indexed").int >> 80 == cause.int >> 80
