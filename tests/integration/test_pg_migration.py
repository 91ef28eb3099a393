"""physical-stream on real PostgreSQL: a streaming standby built from the source, lag read from
both sides, a fence after which no commit is accepted, promotion with every acknowledged commit
on the target, abort leaving the source serving, rollback leaving the old source following."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

import pytest

from schemas.positions import format_lsn, parse_lsn
from services.engines.postgres.migration import (
    MigrationStepError,
    build_standby,
    fence_source,
    follow_new_primary,
    gather_facts,
    measure_lag,
    promote_target,
    unfence_source,
    wait_replayed,
)
from services.engines.postgres.migration.standby import slot_name
from tests.fixtures.postgres import PgCluster
from tests.integration.migration_rig import Writer, empty_target, ids_on, instance_of

pytestmark = [pytest.mark.integration, pytest.mark.timeout(240)]
log = logging.getLogger(__name__)
SLOT = slot_name("0190f3a2-test")


def wait_caught_up(source_lag: Callable[[], int], *, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while source_lag() > 0:
        assert time.monotonic() < deadline, "standby never caught up"
        time.sleep(0.05)


def test_preflight_reads_the_facts_of_a_real_cluster(pg_cluster: PgCluster) -> None:
    facts = gather_facts(instance_of(pg_cluster))
    assert facts.major == int(pg_cluster.psql("SHOW server_version_num")) // 10000
    assert facts.wal_level == "replica"
    assert facts.data_checksums
    assert (facts.encoding, facts.collate) == ("UTF8", "C")
    assert facts.size_bytes > 1 << 20
    assert facts.hba_allows_replication
    assert not facts.in_recovery
    assert facts.extensions == {"plpgsql": "1.0"}
    assert facts.problems_as_source() == []
    pg_cluster.configure(max_replication_slots=0)
    pg_cluster.restart()
    assert "replication slots are in use" in " ".join(
        gather_facts(instance_of(pg_cluster)).problems_as_source()
    )


def test_cutover_under_writes_loses_no_commit_and_rollback_follows_the_new_primary(
    pg_cluster: PgCluster,
) -> None:
    pg_cluster.execute("CREATE TABLE ledger (id bigint PRIMARY KEY)")
    source = instance_of(pg_cluster)
    writers = [Writer(pg_cluster.tcp_dsn).start(), Writer(pg_cluster.tcp_dsn, True, 2).start()]
    with empty_target(pg_cluster) as target:
        copied = build_standby(source, target, slot=SLOT)
        assert copied > 1 << 20
        assert build_standby(source, target, slot=SLOT) == 0  # rerun: left alone
        wait_caught_up(lambda: 1 if len(ids_on(target)) < 50 else 0)
        lag = measure_lag(source, target, slot=SLOT)
        assert lag.source_lsn >= lag.received_lsn >= lag.replayed_lsn > 0
        assert lag.bytes == lag.source_lsn - lag.replayed_lsn
        log.info("lag under writes: %s", lag)

        fence = fence_source(source)
        fenced = time.monotonic()
        replayed = wait_replayed(target, fence.final_lsn)
        opened_at = promote_target(target, fence.final_lsn)
        target.rows("INSERT INTO ledger (id) VALUES (0)")
        writable = time.monotonic()
        time.sleep(0.3)  # writers keep trying against the fenced source
        for writer in writers:
            writer.stop()

        downtime = writable - fence.started_monotonic
        log.info(
            "physical-stream cutover: %s; replayed %s; opened at %s; downtime %.3f s "
            "(fence raised → target accepted a write)",
            fence,
            format_lsn(replayed),
            format_lsn(opened_at),
            downtime,
        )
        acked = {i: t for w in writers for i, t in w.acked.items()}
        assert len(acked) > 50
        assert all(w.failures > 0 for w in writers)
        on_target = ids_on(target)
        assert set(acked) <= on_target, f"lost: {sorted(set(acked) - on_target)[:10]}"
        assert max(acked.values()) < fenced, "the source acknowledged a commit after the fence"
        assert not source.is_running()
        assert opened_at > fence.final_lsn

        # The way back: the old source follows the new primary, nothing lost either way.
        follow_new_primary(source, target, slot=SLOT)
        follow_new_primary(source, target, slot=SLOT)  # rerun: already following
        target.rows("INSERT INTO ledger (id) VALUES (-1)")
        head = target.value("SELECT pg_current_wal_lsn()")
        source.wait_until(
            f"SELECT pg_last_wal_replay_lsn() >= '{head}'::pg_lsn", timeout=60, what="follow"
        )
        assert source.value("SELECT pg_is_in_recovery()") == "t"
        assert ids_on(source) == ids_on(target) >= set(acked) | {0, -1}
        assert parse_lsn(head) > fence.final_lsn


def test_abort_before_the_point_of_no_return_leaves_the_source_serving(
    pg_cluster: PgCluster,
) -> None:
    pg_cluster.execute("CREATE TABLE ledger (id bigint PRIMARY KEY)")
    source = instance_of(pg_cluster)
    with empty_target(pg_cluster) as target:
        build_standby(source, target, slot=SLOT)
        fence = fence_source(source)
        assert fence_source(source).final_lsn == fence.final_lsn  # rerun: same final position
        with pytest.raises(MigrationStepError, match="not reached"):
            wait_replayed(target, fence.final_lsn + (1 << 40), timeout=0.5)
        unfence_source(source)
        pg_cluster.psql("INSERT INTO ledger (id) VALUES (7)", tcp=True)
        assert source.value("SELECT current_setting('default_transaction_read_only')") == "off"
        head = source.value("SELECT pg_current_wal_lsn()")
        target.wait_until(
            f"SELECT pg_last_wal_replay_lsn() >= '{head}'::pg_lsn", timeout=60, what="stream"
        )
        assert ids_on(target) == {7}
        assert target.value("SELECT pg_is_in_recovery()") == "t"


def test_a_directory_holding_another_cluster_is_never_overwritten(
    pg_factory: Callable[..., PgCluster],
) -> None:
    source, other = pg_factory(), pg_factory(start=False)
    with pytest.raises(MigrationStepError, match="refusing to overwrite"):
        build_standby(instance_of(source), instance_of(other), slot=SLOT)
    assert (other.data_dir / "PG_VERSION").exists()
