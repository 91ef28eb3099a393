"""logical-upgrade's engine steps on real PostgreSQL, 15 (Debian's) into 18 (the wheel's): the
preflight names the table logical replication cannot carry, and once it is fixed, the roles and
schema, the initial copy, the stream under writes, the fence, the sequences and the parity check
leave the 18 target with every acknowledged commit and every sequence past the source's."""

from __future__ import annotations

import time
from collections.abc import Callable

import pytest

from services.engines.postgres.migration import (
    copy_sequences,
    fence_for_logical,
    finish,
    logical_lag,
    logical_preflight,
    parity,
    prepare_target,
    start_replication,
    wait_caught_up,
    wait_copied,
)
from tests.fixtures.pg18 import Pg18Cluster, pg18_factory
from tests.fixtures.postgres import PgCluster
from tests.integration.migration_rig import Writer, instance_of

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]
__all__ = ["pg18_factory"]  # the fixture, imported to be found

DB = "shop"
NAME = "tidemark_upgrade_test"
SCHEMA = """
CREATE ROLE reporter NOLOGIN;
CREATE TABLE ledger (id bigint PRIMARY KEY);
CREATE TABLE orders (id serial PRIMARY KEY, item text NOT NULL, qty int NOT NULL);
CREATE TABLE audit_log (at timestamptz NOT NULL DEFAULT now(), msg text);
CREATE SEQUENCE invoice_no START 1000;
CREATE VIEW big_orders AS SELECT id, item FROM orders WHERE qty > 5;
GRANT SELECT ON orders, big_orders TO reporter;
INSERT INTO orders (item, qty) SELECT 'item ' || g, g % 10 FROM generate_series(1, 2000) g;
INSERT INTO audit_log (msg) SELECT 'event ' || g FROM generate_series(1, 500) g;
SELECT count(nextval('invoice_no')) FROM generate_series(1, 25);
"""


def ledger_ids(cluster: PgCluster) -> set[int]:
    return {int(line) for line in cluster.psql("SELECT id FROM ledger", dbname=DB).split()}


def test_logical_upgrade_from_15_to_18_loses_no_commit_and_leaves_sequences_ahead(
    pg_factory: Callable[..., PgCluster], pg18_factory: Callable[..., Pg18Cluster]
) -> None:
    started = time.monotonic()
    source_cluster = pg_factory()
    target_cluster = pg18_factory()
    source_cluster.execute(f"CREATE DATABASE {DB}")
    source_cluster.execute(SCHEMA, dbname=DB)
    source, target = instance_of(source_cluster), instance_of(target_cluster)

    problems = logical_preflight(source, target)
    assert any("wal_level is replica" in p for p in problems), problems
    assert [p for p in problems if "public.audit_log" in p] == [
        f"{DB}.public.audit_log: no primary key and no replica identity: "
        "its UPDATEs and DELETEs cannot be replicated"
    ], problems

    source_cluster.execute("ALTER TABLE audit_log REPLICA IDENTITY FULL", dbname=DB)
    source_cluster.configure(wal_level="logical")
    source_cluster.restart()
    assert logical_preflight(source, target) == []

    writer = Writer(source_cluster.tcp_dsn.replace("dbname=postgres", f"dbname={DB}")).start()
    try:
        for _ in range(2):  # rerunnable: the second pass finds everything in place
            prepare_target(source, target, DB)
            start_replication(source, target, DB, NAME)
        wait_copied(target, DB, NAME, timeout=60)
        assert target_cluster.psql("SELECT count(*) FROM orders", dbname=DB) == "2000"
        granted = "SELECT has_table_privilege('reporter', 'public.big_orders', 'SELECT')"
        assert target_cluster.psql(granted, dbname=DB) == "t"

        # Changes of every kind stream while the ledger writer runs.
        source_cluster.execute(
            "UPDATE orders SET qty = qty + 1 WHERE id <= 100; DELETE FROM orders WHERE id > 1900;"
            "DELETE FROM audit_log WHERE msg = 'event 7';"
            "INSERT INTO orders (item, qty) VALUES ('late', 9);"
            "SELECT count(nextval('invoice_no')) FROM generate_series(1, 10);",
            dbname=DB,
        )
        deadline = time.monotonic() + 30
        while (lag := logical_lag(source, target, NAME)).bytes > 64 * 1024:
            assert time.monotonic() < deadline, f"never caught up: {lag}"
            time.sleep(0.1)
        assert lag.seconds < 10, lag
        assert len(writer.acked) > 100

        fence = fence_for_logical(source, target, DB, NAME)
    finally:
        writer.stop()
    assert fence_for_logical(source, target, DB, NAME).final_lsn == fence.final_lsn
    fenced = fence.fenced
    wait_caught_up(target, DB, NAME, fence.final_lsn, timeout=60)
    assert copy_sequences(fenced, target, DB) == 2  # invoice_no and orders_id_seq
    assert parity(fenced, target, DB) == []
    # The check is not vacuous: one changed row on the target is reported, with its table.
    target_cluster.execute("UPDATE orders SET qty = -1 WHERE id = 1", dbname=DB)
    assert [d.split(":")[0] for d in parity(fenced, target, DB)] == ["table public.orders"]
    target_cluster.execute("UPDATE orders SET qty = 2 WHERE id = 1", dbname=DB)
    finish(target, DB, NAME)
    finish(target, DB, NAME)

    assert int(target_cluster.psql("SHOW server_version_num")) >= 180000
    acked = set(writer.acked)
    on_target = ledger_ids(target_cluster)
    assert acked <= on_target, f"lost {len(acked - on_target)} acknowledged commits"
    # 1000 and 34 more on the source (parity has compared every row of the ledger already).
    assert int(target_cluster.psql("SELECT nextval('invoice_no')", dbname=DB)) > 1034
    assert int(target_cluster.psql("SELECT nextval('orders_id_seq')", dbname=DB)) > 2001
    assert target_cluster.psql("SELECT count(*) FROM pg_subscription") == "0"
    assert fenced.value("SELECT count(*) FROM pg_replication_slots") == "0"
    assert time.monotonic() - started < 60
