"""The `dump` method's engine half on real PostgreSQL, 15 (Debian's) into 18 (the wheel's), dumped
by the 18 pg_dump as a DBA would: through the filesystem store and the GCS emulator the restore
has parity with the source, and the check can fail; an interrupted restore starts again from the
store alone; a database that is not the migration's is never dropped; a finished dump is not
dumped again."""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import tempfile
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import replace
from pathlib import Path

import pytest

from services.blobstore import BlobStore, open_store
from services.engines.postgres.migration import (
    MigrationStepError,
    PgInstance,
    compare,
    dump_to_store,
    fingerprint,
    read_manifest,
    restore_from_store,
)
from services.engines.postgres.migration.dump import parse_restore_errors
from services.engines.postgres.migration.logical import _copy_roles
from tests.fixtures.gcs import GcsEmulator
from tests.fixtures.pg18 import Pg18Cluster, pg18_factory
from tests.fixtures.postgres import PgCluster
from tests.integration.migration_rig import instance_of

__all__ = ["pg18_factory"]  # the fixture, imported to be found

DB = "shop"
PREFIX = "migrations/m1/dump"
SCHEMA = """
CREATE ROLE reporter NOLOGIN;
CREATE TABLE orders (id serial PRIMARY KEY, item text NOT NULL, qty int NOT NULL);
CREATE TABLE audit_log (at timestamptz NOT NULL DEFAULT now(), msg text);
CREATE SEQUENCE invoice_no START 1000;
CREATE VIEW big_orders AS SELECT id, item FROM orders WHERE qty > 5;
GRANT SELECT ON orders, big_orders TO reporter;
INSERT INTO orders (item, qty) SELECT 'item ' || g, g % 10 FROM generate_series(1, 2000) g;
INSERT INTO audit_log (msg) SELECT 'event ' || g FROM generate_series(1, 500) g;
SELECT count(nextval('invoice_no')) FROM generate_series(1, 25);
"""


@pytest.fixture(params=["file", "gcs"])
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[BlobStore]:
    if request.param == "file":
        url = f"file://{tmp_path / 'store'}"
    else:
        emulator: GcsEmulator = request.getfixturevalue("gcs_emulator")
        bucket: str = request.getfixturevalue("gcs_bucket")
        url = f"gs://{bucket}/tidemark?endpoint={emulator.endpoint}"
    opened = open_store(url)
    yield opened
    await opened.close()


@pytest.fixture
async def file_store(tmp_path: Path) -> AsyncIterator[BlobStore]:
    opened = open_store(f"file://{tmp_path / 'store'}")
    yield opened
    await opened.close()


@pytest.fixture
def spool() -> Iterator[Path]:
    """A spool directory the database OS user can reach (pytest's tmp_path is root's, 0700)."""
    path = Path(tempfile.mkdtemp(prefix="tidemark-spool-", dir="/tmp"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


def clusters(
    pg_factory: Callable[..., PgCluster], pg18_factory: Callable[..., Pg18Cluster], sql: str
) -> tuple[PgCluster, Pg18Cluster, PgInstance, PgInstance]:
    """A 15 source with `sql` in DB, an 18 target; the source's instance runs the 18 tools."""
    source_cluster, target_cluster = pg_factory(), pg18_factory()
    source_cluster.execute(f"CREATE DATABASE {DB}")
    source_cluster.execute(sql, dbname=DB)
    target = instance_of(target_cluster)
    return (
        source_cluster,
        target_cluster,
        replace(instance_of(source_cluster), bindir=target.bindir),
        target,
    )


@pytest.mark.integration
@pytest.mark.timeout(180)
async def test_a_dump_of_15_restores_into_18_with_parity_through_either_store(
    pg_factory: Callable[..., PgCluster],
    pg18_factory: Callable[..., Pg18Cluster],
    store: BlobStore,
    spool: Path,
) -> None:
    started = time.monotonic()
    source_cluster, target_cluster, source, target = clusters(pg_factory, pg18_factory, SCHEMA)
    # A run that died before its manifest left a file: the dump is done again beside it.
    abandoned = f"{PREFIX}/run-20200101T000000Z-deadbeef/toc.dat"
    await store.put_stream(abandoned, b"half a dump")
    dumped: list[tuple[int, int | None]] = []

    manifest = await dump_to_store(
        source,
        DB,
        store=store,
        key_prefix=PREFIX,
        jobs=2,
        spool=spool,
        progress=lambda done, total: dumped.append((done, total)),
    )
    assert manifest.server_version_num // 10000 == 15
    assert "reporter" in manifest.roles
    assert {"toc.dat"} < {f.name for f in manifest.files}
    assert dumped[-1] == (manifest.bytes, manifest.bytes)
    assert await store.head(abandoned) is None
    assert list(spool.iterdir()) == []
    assert await read_manifest(store, PREFIX) == manifest

    # Done means done: with the source stopped and no pg_dump to run, the manifest comes back.
    source_cluster.stop()
    gone = replace(source, bindir=Path("/nonexistent"))
    again = await dump_to_store(gone, DB, store=store, key_prefix=PREFIX, jobs=2, spool=spool)
    assert again == manifest

    with pytest.raises(MigrationStepError, match="lacks roles the dump names: reporter"):
        await restore_from_store(target, DB, store=store, key_prefix=PREFIX, jobs=2, spool=spool)
    source_cluster.start()
    await asyncio.to_thread(_copy_roles, source, target)
    source_cluster.stop()
    restored: list[tuple[int, int | None]] = []
    outcome = await restore_from_store(
        target,
        DB,
        store=store,
        key_prefix=PREFIX,
        jobs=2,
        spool=spool,
        progress=lambda done, total: restored.append((done, total)),
    )
    assert compare(manifest.fingerprint, outcome.fingerprint) == []
    assert outcome.benign == ()
    assert outcome.bytes == manifest.bytes
    assert restored[-1] == (manifest.bytes, manifest.bytes)
    assert list(spool.iterdir()) == []
    assert int(target_cluster.psql("SHOW server_version_num")) >= 180000
    granted = "SELECT has_table_privilege('reporter', 'public.big_orders', 'SELECT')"
    assert target_cluster.psql(granted, dbname=DB) == "t"
    assert int(target_cluster.psql("SELECT nextval('invoice_no')", dbname=DB)) == 1025

    # The check is not vacuous: one changed row on the target is reported, with its table.
    target_cluster.execute("UPDATE audit_log SET msg = 'edited' WHERE msg = 'event 7'", dbname=DB)
    changed = compare(manifest.fingerprint, await asyncio.to_thread(fingerprint, target, DB))
    assert [d.split(":")[0] for d in changed] == ["table public.audit_log"]

    # A restore rerun after it finished restores nothing again: the database may be in use.
    rerun = await restore_from_store(
        target, DB, store=store, key_prefix=PREFIX, jobs=2, spool=spool
    )
    assert rerun.reused
    assert rerun.bytes == 0
    assert target_cluster.psql("SELECT msg FROM audit_log WHERE msg = 'edited'", dbname=DB)
    assert time.monotonic() - started < 90


def _kill_restore_sessions(target: PgInstance, stop: threading.Event, killed: list[str]) -> None:
    """Terminate pg_restore's sessions as soon as one is copying data."""
    while not stop.is_set() and not killed:
        with contextlib.suppress(MigrationStepError):
            killed.extend(
                row[0]
                for row in target.rows(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                    "WHERE application_name = 'pg_restore' AND query LIKE 'COPY %'"
                )
            )
        time.sleep(0.01)


@pytest.mark.integration
@pytest.mark.timeout(180)
async def test_an_interrupted_restore_starts_again_from_the_store_alone(
    pg_factory: Callable[..., PgCluster],
    pg18_factory: Callable[..., Pg18Cluster],
    file_store: BlobStore,
    spool: Path,
) -> None:
    big = SCHEMA + (
        "CREATE TABLE readings (id bigint, at timestamptz, value float8, note text);"
        "INSERT INTO readings SELECT g, now(), random(), repeat('x', 50) "
        "FROM generate_series(1, 400000) g;"
        "CREATE INDEX ON readings (value);"
    )
    source_cluster, _, source, target = clusters(pg_factory, pg18_factory, big)
    await asyncio.to_thread(_copy_roles, source, target)
    manifest = await dump_to_store(
        source, DB, store=file_store, key_prefix=PREFIX, jobs=2, spool=spool
    )
    source_cluster.stop()  # from here on, the store is all there is

    stop, killed = threading.Event(), list[str]()
    killer = threading.Thread(target=_kill_restore_sessions, args=(target, stop, killed))
    killer.start()
    try:
        with pytest.raises(MigrationStepError, match="pg_restore into shop") as failed:
            await restore_from_store(
                target, DB, store=file_store, key_prefix=PREFIX, jobs=2, spool=spool
            )
    finally:
        stop.set()
        killer.join()
    assert failed.value.retryable
    assert killed

    outcome = await restore_from_store(
        target, DB, store=file_store, key_prefix=PREFIX, jobs=2, spool=spool
    )
    assert not outcome.reused
    assert compare(manifest.fingerprint, outcome.fingerprint) == []
    assert outcome.fingerprint.tables["public.readings"][0] == 400000


@pytest.mark.integration
@pytest.mark.timeout(180)
async def test_a_database_that_is_not_the_migrations_is_never_dropped(
    pg_factory: Callable[..., PgCluster],
    pg18_factory: Callable[..., Pg18Cluster],
    file_store: BlobStore,
    spool: Path,
) -> None:
    _, target_cluster, source, target = clusters(pg_factory, pg18_factory, SCHEMA)
    with pytest.raises(MigrationStepError, match="the dump is not in the store") as missing:
        await restore_from_store(
            target, DB, store=file_store, key_prefix=PREFIX, jobs=2, spool=spool
        )
    assert not missing.value.retryable
    await dump_to_store(source, DB, store=file_store, key_prefix=PREFIX, jobs=2, spool=spool)
    await asyncio.to_thread(_copy_roles, source, target)
    target_cluster.execute(f"CREATE DATABASE {DB}")
    target_cluster.execute(
        "CREATE TABLE precious (v int); INSERT INTO precious VALUES (1)", dbname=DB
    )

    for _ in range(2):
        with pytest.raises(MigrationStepError, match=r"not this migration's.*refusing to drop"):
            await restore_from_store(
                target, DB, store=file_store, key_prefix=PREFIX, jobs=2, spool=spool
            )
    assert target_cluster.psql("SELECT v FROM precious", dbname=DB) == "1"
    # Another migration's database is not this one's either.
    target_cluster.execute(f"COMMENT ON DATABASE {DB} IS 'tidemark migration other: restoring'")
    with pytest.raises(MigrationStepError, match="not this migration's"):
        await restore_from_store(
            target, DB, store=file_store, key_prefix=PREFIX, jobs=2, spool=spool
        )
    assert target_cluster.psql("SELECT v FROM precious", dbname=DB) == "1"


# -- pg_restore's errors, as it writes them -----------------------------------------------------

MISSING_EXTENSION = """\
pg_restore: error: could not execute query: ERROR:  extension "pgcrypto" is not available
HINT:  The extension must first be installed on the system where PostgreSQL is running.
Command was: CREATE EXTENSION IF NOT EXISTS pgcrypto WITH SCHEMA public;


pg_restore: error: could not execute query: ERROR:  schema "public" already exists
Command was: CREATE SCHEMA public;


pg_restore: warning: errors ignored on restore: 2
"""


@pytest.mark.unit
def test_restore_errors_are_read_with_their_commands_and_only_known_ones_are_benign() -> None:
    errors, ignored = parse_restore_errors(MISSING_EXTENSION)
    assert ignored == 2
    assert [(e.message, e.command, e.is_benign) for e in errors] == [
        (
            'extension "pgcrypto" is not available',
            "CREATE EXTENSION IF NOT EXISTS pgcrypto WITH SCHEMA public;",
            False,
        ),
        ('schema "public" already exists', "CREATE SCHEMA public;", True),
    ]
    # A known message answering another command is not benign.
    other, _ = parse_restore_errors(
        'pg_restore: error: could not execute query: ERROR:  schema "public" already exists\n'
        "Command was: CREATE TABLE public.t (a int);\n"
    )
    assert not other[0].is_benign
