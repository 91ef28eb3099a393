"""Rebuilding the store from a bucket (in memory): what each object becomes, what is skipped and
why, and that the result matches the facts the objects describe."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
import zstandard

from schemas import DatabaseRef, Engine, Incarnation, Lsn, Scn, Timeline
from schemas.messages import BackupCompleted, LogArchived
from services.blobstore import MemoryStore, ObjectInfo
from services.blobstore.owner import claim_prefix
from services.catalog.index import CatalogIndex
from services.catalog.rebuild import (
    Skipped,
    backup_from_manifest,
    log_from_object,
    parse_history,
    rebuild,
)
from services.catalog.settings import sqlite_url
from services.catalog.store import CatalogStore
from tests.doubles.catalog_events import (
    ORA,
    PG,
    SEG,
    backup,
    history,
    history_text,
    redo,
    wal,
    write_log_object,
    write_manifest,
)

pytestmark = pytest.mark.unit

INC = Incarnation(resetlogs_id=1_180_000_000, resetlogs_scn=Scn(value=500), number=1)


@pytest.fixture
def store(tmp_path: Path) -> Iterator[CatalogStore]:
    opened = CatalogStore.open(sqlite_url(tmp_path / "catalog.db"))
    yield opened
    opened.close()


def events_index(facts: list[tuple[DatabaseRef, object]]) -> CatalogIndex:
    index = CatalogIndex()
    for ref, fact in facts:
        if isinstance(fact, LogArchived):
            index.apply_log(ref, fact)
        elif isinstance(fact, BackupCompleted):
            index.apply_backup(ref, fact)
    return index


async def test_every_log_kind_and_manifest_is_read_back(store: CatalogStore) -> None:
    bucket = MemoryStore()
    branch = 3 * SEG + 0x60
    facts: list[tuple[DatabaseRef, object]] = [
        *[(PG, wal(n)) for n in (1, 2, 3)],
        (PG, history(2, 1, branch)),
        *[(PG, wal(n, 2)) for n in (3, 4)],
        (PG, backup("b1", SEG + 0x28, SEG + 0x100, Timeline(id=1))),
        (ORA, redo(1, 1, 500, 900, INC)),
        (ORA, redo(1, 2, 900, 1_400, INC)),
        (ORA, backup("L0", 600, 700, INC, database=ORA)),
    ]
    for ref in (PG, ORA):
        await claim_prefix(bucket, "", ref)
    for ref, fact in facts:
        if isinstance(fact, LogArchived):
            await write_log_object(bucket, ref, fact)
        elif isinstance(fact, BackupCompleted):
            await write_manifest(bucket, fact)
    report = await rebuild(bucket, store)
    assert report.warnings == []
    assert (report.stored.databases, report.stored.lineages, report.stored.logs) == (2, 3, 8)
    live = events_index(facts)
    for ref in (PG, ORA):
        assert report.index.snapshot(ref.uid) == live.snapshot(ref.uid)
        assert report.index.database(ref.uid).ref == ref  # from owner.json
    assert report.index.snapshot(PG.uid)[-1] == ("tl-00000002", branch, 5 * SEG)
    assert store.lineage(PG.uid, "tl-00000002") == Timeline(
        id=2, parent=1, branch_lsn=Lsn(value=branch)
    )


async def test_a_compressed_history_file_is_read(store: CatalogStore) -> None:
    bucket = MemoryStore()
    await claim_prefix(bucket, "", PG)
    found = history(2, 1, 5 * SEG)
    raw = history_text(2, 1, 5 * SEG)
    await write_log_object(bucket, PG, found, data=raw)
    # Re-store it zstd-compressed, as the archiver does with compression = "zstd".
    info = await bucket.head(found.object_key)
    assert info is not None
    await bucket.delete(found.object_key)
    # Streamed, like the archiver's uploads: the frame does not state its content size.
    compressor = zstandard.ZstdCompressor().compressobj()
    packed = compressor.compress(raw) + compressor.flush()
    await bucket.put_stream(found.object_key, packed, {**info.metadata, "compression": "zstd"})
    report = await rebuild(bucket, store)
    assert report.warnings == []
    assert store.lineage(PG.uid, "tl-00000002") == Timeline(
        id=2, parent=1, branch_lsn=Lsn(value=5 * SEG)
    )


async def test_without_owner_json_the_database_is_named_unknown(store: CatalogStore) -> None:
    bucket = MemoryStore()
    await write_log_object(bucket, PG, wal(1))
    report = await rebuild(bucket, store)
    assert report.skipped == 0
    assert report.warnings == ["orders-db: no readable owner.json; database named 'unknown'"]
    assert report.index.databases() == [
        DatabaseRef(uid="orders-db", engine=Engine.POSTGRES, name="unknown")
    ]


def _info(key: str, metadata: dict[str, str]) -> ObjectInfo:
    return ObjectInfo(
        key=key,
        size=1,
        crc32c="AAAAAA==",
        metadata=metadata,
        generation=1,
        updated=datetime(2026, 3, 1, tzinfo=UTC),
    )


def test_metadata_naming_another_database_or_lineage_is_skipped() -> None:
    key = "orders-db/tl-00000001/logs/1/000000010000000000000001"
    meta = {"database": "other-db", "lineage": "tl-00000001"}
    with pytest.raises(Skipped, match="metadata names database 'other-db'"):
        log_from_object(_info(key, meta), "orders-db", "tl-00000001")


def test_metadata_missing_a_field_is_skipped_with_the_reason() -> None:
    key = "orders-db/tl-00000001/logs/1/000000010000000000000001"
    meta = {"database": "orders-db", "lineage": "tl-00000001", "engine": "postgres"}
    with pytest.raises(Skipped, match="does not describe a log"):
        log_from_object(_info(key, meta), "orders-db", "tl-00000001")


def test_history_files_name_their_parent_on_the_last_line() -> None:
    text = "1\t0/3000000\tbefore\n\n2\t0/5000060\tno recovery target specified\n"
    assert parse_history(3, text) == Timeline(id=3, parent=2, branch_lsn=Lsn.parse("0/5000060"))
    with pytest.raises(Skipped, match="names parent 4"):
        parse_history(3, "4\t0/1\tx\n")
    with pytest.raises(Skipped, match="not readable"):
        parse_history(3, "")


def test_manifests_carry_the_backup_completed_payload() -> None:
    b1 = backup("b1", 16, 32, Timeline(id=1))
    top = json.dumps(b1.model_dump(mode="json")).encode()
    nested = json.dumps({"format": 1, "backup": b1.model_dump(mode="json")}).encode()
    assert backup_from_manifest(top, b1.manifest_key, "b1") == b1
    assert backup_from_manifest(nested, b1.manifest_key, "b1") == b1
    with pytest.raises(Skipped, match="stored under b2"):
        backup_from_manifest(top, "orders-db/backups/b2/manifest.json", "b2")
    with pytest.raises(Skipped, match="not a manifest this release can read"):
        backup_from_manifest(b"<xml/>", b1.manifest_key, "b1")
