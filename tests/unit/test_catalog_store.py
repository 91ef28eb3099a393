"""The catalog's durable index on SQLite: migrations, idempotent upserts by natural key, conflicts
that keep the first fact, tombstones, 64-bit positions, and loading back into a CatalogIndex.

The same contract runs against PostgreSQL in tests/integration/test_catalog_ingest_postgres.py,
which imports the `test_store_*` functions below with its own `store` fixture.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import Column, MetaData, Table, inspect, select, text
from sqlalchemy.engine import Connection

from schemas import Incarnation, Lsn, Scn, Timeline
from schemas.messages import BackupCompleted, LogArchived
from services.catalog.columns import U64
from services.catalog.index import CatalogIndex
from services.catalog.migrations import (
    MIGRATIONS,
    Migration,
    MigrationError,
    current_version,
    latest,
    migrate,
)
from services.catalog.settings import CatalogSettings, check_catalog_url, sqlite_url
from services.catalog.store import (
    CatalogStore,
    Recorded,
    StoreConflict,
    StoreCounts,
    create_catalog_engine,
)
from services.catalog.tables import backups, logs, metadata
from tests.doubles.catalog_events import ORA, PG, backup, history, redo, wal

pytestmark = pytest.mark.unit

INC1 = Incarnation(resetlogs_id=1_180_000_000, resetlogs_scn=Scn(value=1), number=1)
INC2 = Incarnation(
    resetlogs_id=1_190_000_000,
    resetlogs_scn=Scn(value=(1 << 64) - 1000),
    number=2,
    prior_resetlogs_id=1_180_000_000,
)
TOP = (1 << 64) - 1


@pytest.fixture
def store(tmp_path: Path) -> Iterator[CatalogStore]:
    opened = CatalogStore.open(sqlite_url(tmp_path / "catalog.db"))
    try:
        yield opened
    finally:
        opened.close()


def index_of(store: CatalogStore) -> CatalogIndex:
    index = CatalogIndex()
    store.load_into(index)
    return index


# -- the contract (also run on PostgreSQL) -----------------------------------------------------


def test_store_a_redelivered_log_changes_nothing(store: CatalogStore) -> None:
    log = wal(3)
    assert store.record_log(PG, log) is True
    assert store.record_log(PG, log) is False
    assert store.counts() == StoreCounts(databases=1, lineages=1, logs=1, backups=0)


def test_store_a_different_log_under_a_known_name_is_refused_and_the_first_kept(
    store: CatalogStore,
) -> None:
    first = wal(3)
    store.record_log(PG, first)
    other = first.model_copy(update={"crc32c": "BBBBBB=="})
    with pytest.raises(StoreConflict, match="keeping the first"):
        store.record_log(PG, other)
    index = index_of(store)
    assert index.database(PG.uid).objects[("tl-00000001", 1, 3)].crc32c == first.crc32c


def test_store_loads_into_the_index_its_events_would_make(store: CatalogStore) -> None:
    # The start-up load reads the driver's own values (biased or NUMERIC positions, times as
    # text or timestamptz): it must come back to exactly what the events say.
    events = [
        (PG, wal(3)),
        (PG, wal(4)),
        (ORA, redo(1, 1, TOP - 10, TOP - 5, INC1)),
        (ORA, redo(1, 2, TOP - 5, TOP, INC1)),
        (ORA, redo(2, 1, 1, 1 << 63, INC1)),
    ]
    expected = CatalogIndex()
    for database, log in events:
        store.record_log(database, log)
        expected.apply_log(database, log)
    loaded = index_of(store)
    for database in (PG, ORA):
        want, got = expected.database(database.uid), loaded.database(database.uid)
        assert got.objects == want.objects
        assert got.last_archived_at == want.last_archived_at
        assert got.current_lineage == want.current_lineage
        for key in want.history.lineages:
            assert got.history.threads(key).keys() == want.history.threads(key).keys()
            for number, thread in want.history.threads(key).items():
                assert got.history.threads(key)[number].by_seq == thread.by_seq
        assert all(o.archived_at.tzinfo is UTC for o in got.objects.values())


def test_store_a_batch_of_logs_is_stored_as_one_at_a_time_would(store: CatalogStore) -> None:
    store.record_log(PG, wal(3))
    conflicting = wal(3).model_copy(update={"crc32c": "BBBBBB=="})
    oracle_as_pg = redo(1, 1, 10, 20, INC1)  # database PG is PostgreSQL: refused
    history_file = history(2, 1, 6 * 16 * 1024 * 1024 + 0x80)
    with store.writing() as writer:
        results = writer.record_logs(
            [
                (PG, wal(1)),
                (PG, wal(3)),  # known
                (PG, conflicting),
                (PG, wal(4)),
                (PG, wal(4)),  # twice in one batch: the second is known
                (PG, wal(6, timeline=2)),
                (PG, history_file),  # the parent of timeline 2, learned in the same batch
                (ORA.model_copy(update={"uid": PG.uid}), oracle_as_pg),
            ]
        )
    assert results[:2] == [True, False]
    assert isinstance(results[2], StoreConflict)
    assert "keeping the first" in str(results[2])
    assert results[3:7] == [True, False, True, True]
    assert isinstance(results[7], StoreConflict)
    assert store.counts() == StoreCounts(databases=1, lineages=2, logs=5, backups=0)
    assert store.lineage(PG.uid, "tl-00000002") == history_file.lineage
    assert store.lineage(PG.uid, "inc-1180000000") is None  # nothing of a refused log is kept
    index = index_of(store)
    assert index.database(PG.uid).objects[("tl-00000001", 1, 3)].crc32c == wal(3).crc32c


def test_store_a_segment_and_its_partial_are_two_logs(store: CatalogStore) -> None:
    segment = wal(9)
    partial = segment.model_copy(
        update={"file_name": f"{segment.file_name}.partial", "crc32c": "CCCCCC=="}
    )
    assert store.record_log(PG, segment)
    assert store.record_log(PG, partial)
    assert store.counts().logs == 2
    index_of(store)  # the index takes the first and sees the second as known


def test_store_learns_a_timeline_parent_from_its_history_file(store: CatalogStore) -> None:
    store.record_log(PG, wal(10, timeline=2))
    assert store.lineage(PG.uid, "tl-00000002") == Timeline(id=2)
    branch = 10 * 16 * 1024 * 1024 + 0x60
    store.record_log(PG, history(2, 1, branch))
    learned = Timeline(id=2, parent=1, branch_lsn=Lsn(value=branch))
    assert store.lineage(PG.uid, "tl-00000002") == learned
    # A later segment naming only its timeline does not forget the parent.
    store.record_log(PG, wal(11, timeline=2))
    assert store.lineage(PG.uid, "tl-00000002") == learned


def test_store_backups_are_idempotent_conflicting_and_tombstoned(store: CatalogStore) -> None:
    b1 = backup("b1", 2 * 16 << 20, 3 * 16 << 20, Timeline(id=1))
    assert store.record_backup(PG, b1) is Recorded.NEW
    assert store.record_backup(PG, b1) is Recorded.KNOWN
    moved = b1.model_copy(update={"manifest_key": "orders-db/backups/elsewhere/manifest.json"})
    with pytest.raises(StoreConflict):
        store.record_backup(PG, moved)
    assert store.delete_backup(PG.uid, "b1", reason="retention") is True
    assert store.delete_backup(PG.uid, "b1", reason="retention") is False
    # A late redelivery of backup.completed does not bring a deleted backup back.
    assert store.record_backup(PG, b1) is Recorded.DELETED
    assert store.counts().backups == 0


def test_store_a_deleted_backup_stays_deleted_even_before_it_arrives(store: CatalogStore) -> None:
    assert store.delete_backup(PG.uid, "b9", reason="removed by hand") is False
    assert store.record_backup(PG, backup("b9", 0, 16, Timeline(id=1))) is Recorded.DELETED


def test_store_keeps_unsigned_64_bit_positions_and_system_ids_exactly(
    store: CatalogStore,
) -> None:
    logs_ = [
        redo(1, 1, 1, 2, INC1),
        redo(1, 2, (1 << 63) - 1, 1 << 63, INC1),
        redo(1, 3, 1 << 63, (1 << 63) + 1, INC1),
        redo(1, 1, TOP - 1000, TOP, INC2),
    ]
    for log in logs_:
        store.record_log(ORA, log)
    store.record_backup(ORA, backup("L0", TOP - 1000, TOP - 10, INC2, database=ORA))
    with store.engine.begin() as conn:
        got = [
            (r.sequence, r.first, r.next) for r in conn.execute(select(logs).order_by(logs.c.first))
        ]
        ordered = conn.execute(
            select(logs.c.sequence).where(logs.c.first >= 1 << 63).order_by(logs.c.first)
        ).scalars()
        assert list(ordered) == [3, 1]
        row = conn.execute(select(backups)).one()
        assert (row.start, row.consistent_at) == (TOP - 1000, TOP - 10)
    assert got == [
        (1, 1, 2),
        (2, (1 << 63) - 1, 1 << 63),
        (3, 1 << 63, (1 << 63) + 1),
        (1, TOP - 1000, TOP),
    ]
    index = index_of(store)
    assert index.databases() == [ORA]
    assert index.snapshot(ORA.uid) == [("inc-1190000000", TOP - 10, TOP)]


def test_store_loads_into_an_index_equal_to_the_one_events_built(store: CatalogStore) -> None:
    seg = 16 * 1024 * 1024
    events: list[LogArchived | BackupCompleted] = [
        wal(1),
        wal(2),
        backup("b1", 2 * seg, 2 * seg + 0x100, Timeline(id=1), minute=2),
        wal(3),
        wal(5),  # a gap at 4
        wal(6),
        history(2, 1, 6 * seg + 0x80),
        wal(6, timeline=2),
        wal(7, timeline=2),
        backup("b2", 5 * seg, 5 * seg + 0x40, Timeline(id=1), minute=5),
    ]
    live = CatalogIndex()
    for item in events:
        if isinstance(item, LogArchived):
            live.apply_log(PG, item)
            store.record_log(PG, item)
        else:
            live.apply_backup(PG, item)
            store.record_backup(PG, item)
    loaded = index_of(store)
    assert loaded.snapshot(PG.uid) == live.snapshot(PG.uid)
    assert loaded.windows(PG.uid, now=datetime(2026, 3, 2, tzinfo=UTC)) == live.windows(
        PG.uid, now=datetime(2026, 3, 2, tzinfo=UTC)
    )
    assert loaded.databases() == [PG]


def test_store_a_log_removed_is_gone_after_reload(store: CatalogStore) -> None:
    for n in (1, 2, 3):
        store.record_log(PG, wal(n))
    store.record_backup(PG, backup("b1", 16 << 20, (16 << 20) + 1, Timeline(id=1)))
    name = wal(2).file_name or ""
    key = wal(2).object_key
    assert store.delete_log(PG.uid, "tl-00000001", "wal", 1, 2, name, object_key=key) is True
    assert store.delete_log(PG.uid, "tl-00000001", "wal", 1, 2, name, object_key=key) is False
    assert index_of(store).snapshot(PG.uid) == [("tl-00000001", (16 << 20) + 1, 2 * 16 << 20)]


def test_store_replacing_is_all_or_nothing(store: CatalogStore) -> None:
    store.record_log(PG, wal(1))

    def half_way() -> None:
        with store.replacing() as writer:
            writer.record_log(PG, wal(7))
            raise RuntimeError("half way")

    with pytest.raises(RuntimeError, match="half way"):
        half_way()
    assert store.counts().logs == 1
    with store.replacing() as writer:
        writer.record_log(ORA, redo(1, 1, 10, 20, INC1))
    assert store.counts() == StoreCounts(databases=1, lineages=1, logs=1, backups=0)
    assert store.version() == len(MIGRATIONS)


# -- SQLite specifics --------------------------------------------------------------------------


def test_sqlite_store_is_in_wal_mode_with_full_sync(store: CatalogStore) -> None:
    with store.engine.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
        assert conn.exec_driver_sql("PRAGMA synchronous").scalar() == 2  # FULL
        assert conn.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1


def test_store_survives_reopening(tmp_path: Path) -> None:
    url = sqlite_url(tmp_path / "state" / "catalog.db")
    first = CatalogStore.open(url)
    first.record_log(PG, wal(1))
    first.close()
    again = CatalogStore.open(url)
    try:
        assert again.record_log(PG, wal(1)) is False
        assert again.counts().logs == 1
    finally:
        again.close()


def test_u64_is_ordered_across_the_sign_bit_on_sqlite(tmp_path: Path) -> None:
    engine = create_catalog_engine(sqlite_url(tmp_path / "u64.db"))
    table = Table("t", MetaData(), Column("v", U64(), primary_key=True))
    values = [0, 1, (1 << 63) - 1, 1 << 63, TOP]
    with engine.begin() as conn:
        table.create(conn)
        conn.execute(table.insert(), [{"v": v} for v in reversed(values)])
        assert list(conn.execute(select(table.c.v).order_by(table.c.v)).scalars()) == values
        assert list(conn.execute(select(table.c.v).where(table.c.v > 1 << 62)).scalars()) == [
            (1 << 63) - 1,
            1 << 63,
            TOP,
        ]
        with pytest.raises(Exception, match="unsigned 64-bit"):
            conn.execute(table.insert(), [{"v": 1 << 64}])
    engine.dispose()


# -- migrations --------------------------------------------------------------------------------


def _shape(conn: Connection) -> dict[str, tuple[list[str], list[str]]]:
    inspector = inspect(conn)
    return {
        name: (
            [c["name"] for c in inspector.get_columns(name)],
            inspector.get_pk_constraint(name)["constrained_columns"],
        )
        for name in inspector.get_table_names()
        if name != "schema_version"
    }


def test_migrating_an_empty_store_ends_at_the_current_model(tmp_path: Path) -> None:
    engine = create_catalog_engine(sqlite_url(tmp_path / "m.db"))
    with engine.begin() as conn:
        assert migrate(conn) == [m.version for m in MIGRATIONS]
        migrated = _shape(conn)
    model = {
        table.name: ([c.name for c in table.columns], [c.name for c in table.primary_key])
        for table in metadata.sorted_tables
    }
    assert migrated == model
    with engine.begin() as conn:
        assert migrate(conn) == []
        assert current_version(conn) == len(MIGRATIONS)
    engine.dispose()


def _add_note(conn: Connection) -> None:
    conn.execute(text("ALTER TABLE databases ADD COLUMN note VARCHAR(100)"))


def _broken(conn: Connection) -> None:
    conn.execute(text("CREATE TABLE half_done (x INTEGER)"))
    raise RuntimeError("migration 3 failed")


NEXT = latest() + 1
"""The version a release after this one would add."""


def test_forward_migrations_apply_in_order_once(tmp_path: Path) -> None:
    engine = create_catalog_engine(sqlite_url(tmp_path / "m.db"))
    v2 = (*MIGRATIONS, Migration(NEXT, "a note per database", _add_note))
    with engine.begin() as conn:
        assert migrate(conn, MIGRATIONS) == list(range(1, NEXT))
    with engine.begin() as conn:
        assert migrate(conn, v2) == [NEXT]
        assert migrate(conn, v2) == []
        assert "note" in [c["name"] for c in inspect(conn).get_columns("databases")]
    engine.dispose()


def test_a_failing_migration_leaves_the_store_where_it_was(tmp_path: Path) -> None:
    engine = create_catalog_engine(sqlite_url(tmp_path / "m.db"))
    with engine.begin() as conn:
        migrate(conn)
    v3 = (
        *MIGRATIONS,
        Migration(NEXT, "a note per database", _add_note),
        Migration(NEXT + 1, "breaks", _broken),
    )
    with pytest.raises(RuntimeError, match="migration 3 failed"), engine.begin() as conn:
        migrate(conn, v3)
    with engine.begin() as conn:
        assert current_version(conn) == latest()
        assert "half_done" not in inspect(conn).get_table_names()
        assert "note" not in [c["name"] for c in inspect(conn).get_columns("databases")]
    engine.dispose()


def test_a_store_newer_than_this_release_is_refused(tmp_path: Path) -> None:
    url = sqlite_url(tmp_path / "m.db")
    engine = create_catalog_engine(url)
    with engine.begin() as conn:
        migrate(conn, (*MIGRATIONS, Migration(NEXT, "future", _add_note)))
    engine.dispose()
    with pytest.raises(MigrationError, match=f"schema version {NEXT}"):
        CatalogStore.open(url)
    store = CatalogStore.open(url, migrate=False)
    with pytest.raises(MigrationError, match=f"schema version {NEXT}"), store.replacing():
        pass
    store.close()


def test_migrations_must_be_numbered_without_gaps(tmp_path: Path) -> None:
    engine = create_catalog_engine(sqlite_url(tmp_path / "m.db"))
    with pytest.raises(MigrationError, match="without gaps"), engine.begin() as conn:
        migrate(conn, (*MIGRATIONS, Migration(NEXT + 1, "skips one", _add_note)))
    engine.dispose()


# -- settings ----------------------------------------------------------------------------------


def test_catalog_url_defaults_to_sqlite_in_the_state_dir(tmp_path: Path) -> None:
    url = CatalogSettings().url_for(tmp_path)
    assert url == f"sqlite:///{tmp_path.absolute()}/catalog.db"


@pytest.mark.parametrize(
    ("url", "error"),
    [
        ("postgresql://tidemark:secret@db/tidemark", "must not carry a password"),
        ("mysql://db/tidemark", "not supported"),
    ],
)
def test_catalog_urls_with_secrets_or_unknown_backends_are_refused(url: str, error: str) -> None:
    with pytest.raises(ValueError, match=error):
        check_catalog_url(url)
    with pytest.raises(ValueError, match=error):
        CatalogSettings(url=url)


def test_times_come_back_as_aware_utc(store: CatalogStore) -> None:
    log = wal(4).model_copy(
        update={"archived_at": datetime(2026, 3, 1, 13, 0, 0, 123456, tzinfo=UTC)}
    )
    store.record_log(PG, log)
    with store.engine.begin() as conn:
        got = conn.execute(select(logs.c.archived_at)).scalar_one()
    assert got == log.archived_at
    assert got.utcoffset() == timedelta(0)
