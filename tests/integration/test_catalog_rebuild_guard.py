"""`catalog rebuild` from the wrong place must not empty the catalog: a listing that finds
nothing, or far fewer objects than the store indexes, is refused with the numbers and the store
keeps every row, unless `--allow-empty`."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from schemas import DatabaseRef, Engine, Timeline
from services.blobstore import open_store
from services.blobstore.owner import claim_prefix
from services.catalog.settings import sqlite_url
from services.catalog.store import CatalogStore, StoreCounts
from tests.doubles.catalog_events import SEG, backup, wal, write_log_object, write_manifest

pytestmark = pytest.mark.integration

PG = DatabaseRef(uid="orders-db", engine=Engine.POSTGRES, name="orders", system_id=7)


async def _fill(bucket_dir: Path, logs: int, *, with_backup: bool) -> None:
    bucket = open_store(f"file://{bucket_dir}")
    try:
        await claim_prefix(bucket, "prod", PG)
        for n in range(1, logs + 1):
            await write_log_object(bucket, PG, wal(n, prefix="prod"))
        if with_backup:
            await write_manifest(
                bucket, backup("b1", SEG + 0x28, SEG + 0x100, Timeline(id=1), prefix="prod")
            )
    finally:
        await bucket.close()


def _rebuild(
    tmp_path: Path, bucket_dir: Path, prefix: str, *extra: str
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "services.cli.main",
            "catalog",
            "rebuild",
            "--store",
            f"file://{bucket_dir}",
            "--prefix",
            prefix,
            "--catalog-url",
            sqlite_url(tmp_path / "catalog.db"),
            *extra,
        ],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
        env={**os.environ, "COLUMNS": "200"},
    )


def _counts(tmp_path: Path) -> StoreCounts:
    store = CatalogStore.open(sqlite_url(tmp_path / "catalog.db"))
    try:
        return store.counts()
    finally:
        store.close()


async def test_a_rebuild_from_the_wrong_prefix_is_refused_and_the_catalog_keeps_its_rows(
    tmp_path: Path,
) -> None:
    await _fill(tmp_path / "store", 6, with_backup=True)
    first = _rebuild(tmp_path, tmp_path / "store", "prod")
    assert first.returncode == 0, first.stdout + first.stderr
    full = _counts(tmp_path)
    assert (full.logs, full.backups) == (6, 1)

    wrong = _rebuild(tmp_path, tmp_path / "store", "prd")
    assert wrong.returncode == 1, wrong.stdout + wrong.stderr
    assert "refused; the store is unchanged" in wrong.stdout
    assert "found 0 objects" in wrong.stdout
    assert "indexes 7 logs and backups" in wrong.stdout
    assert _counts(tmp_path) == full

    # A bucket holding far less than the catalog knows (a copy of one day, say).
    await _fill(tmp_path / "partial", 1, with_backup=False)
    fewer = _rebuild(tmp_path, tmp_path / "partial", "prod")
    assert fewer.returncode == 1, fewer.stdout + fewer.stderr
    assert "under 50%" in fewer.stdout
    assert _counts(tmp_path) == full

    # Told explicitly, it replaces the store with what the bucket holds.
    allowed = _rebuild(tmp_path, tmp_path / "store", "prd", "--allow-empty")
    assert allowed.returncode == 0, allowed.stdout + allowed.stderr
    assert _counts(tmp_path) == StoreCounts()
