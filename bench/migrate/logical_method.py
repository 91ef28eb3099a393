"""A round's `logical-upgrade`: the source's `postgres` database moved into a fresh PostgreSQL 18
cluster by the engine steps of `services/engines/postgres/migration/logical.py`, called as the
executor calls them, back to a serving source afterwards.

    fresh 18 cluster ─▶ logical_preflight (must find nothing) ─▶ [load starts] ─▶ [timed]
    prepare_target → start_replication → wait_copied ─▶ stream until the lag is small, then
    `steady_s` ─▶ [timed: the downtime] fence_for_logical → wait_caught_up → copy_sequences →
    check_parity → open_with_way_back → the first write on the target ─▶ ledger checked ─▶
    [load stops] ─▶ target removed, the way back dropped, the privately running source stopped
    and unfenced, slot and publication dropped

The steps are the executor's for this method (`migration/logical_steps.py`): its target is
made with the product's `CLUSTER_SETTINGS` (parsed, so the two cannot drift: its
`wal_retrieve_retry_interval` is what `wait_caught_up` waits on after the fence repoints the
subscription); `check_parity` reads both fingerprints at once, as the executor's
`migration.parity` does; `open_with_way_back`, its `migration.promote`, drops the forward
subscription as `finish` does, then sets up the rollback's reverse replication before the
target takes a write: a publication on the target and the fenced source subscribed to it.

Unlike a physical standby the target accepts writes all along (it is a primary being fed by a
subscription), so "the first write" cannot be polled for: it is one INSERT into
`migrate_probe`, issued on a TCP session to the target opened before the fence (a pool already
pointed at the new address), as soon as the last step returns. The downtime runs from
`LogicalFence.started_monotonic` (read before `fence_source` raises the fence) to that
INSERT's return; each step's end is on the same clock.

The source needs `wal_level=logical` and a replica identity on every table (`source.py` sets
them up, as a DBA fixing the preflight's findings would); the preflight is run every round and
must find nothing.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, replace

import psycopg

from bench.migrate import newer
from bench.migrate.downtime import Ledger, judge_ledger
from bench.migrate.rounds import log
from bench.migrate.settings import MigrateBenchSettings
from bench.migrate.source import Source, steady_load
from services.engines.postgres.migration import (
    LogicalLag,
    PgInstance,
    copy_sequences,
    fence_for_logical,
    logical_lag,
    logical_preflight,
    prepare_target,
    start_replication,
    unfence_source,
    wait_caught_up,
    wait_copied,
)
from services.engines.postgres.migration.cutover import FENCE_SETTING
from services.engines.postgres.migration.logical_steps import (
    CLUSTER_SETTINGS,
    check_parity,
    fenced,
    open_with_way_back,
    settle_copy,
)
from tests.fixtures.postgres import SettingValue
from tests.integration.migration_rig import Writer, ids_on, instance_of

LOGICAL = "logical-upgrade"
DB = "postgres"
"""The database migrated: pgbench's, the ledger's and the probe's."""
SMALL_LAG_BYTES = 1 << 20
"""The stream counts as caught up (before the steady seconds) once this little is unconfirmed."""
COPY_TIMEOUT_S = 6 * 3600.0
STEP_TIMEOUT_S = 3600.0
WRITABLE = f"-c {FENCE_SETTING}=off"
"""What our own sessions on the fenced source set, to drop the way back there in the reset."""


def target_settings() -> dict[str, SettingValue]:
    """`CLUSTER_SETTINGS` (`name = value` lines, what the executor appends to the new cluster's
    postgresql.conf) as the harness's settings."""
    settings: dict[str, SettingValue] = {}
    for line in CLUSTER_SETTINGS:
        name, equals, value = line.partition("=")
        if not equals:
            raise ValueError(f"not a `name = value` setting: {line!r}")
        settings[name.strip()] = value.strip().strip("'")
    return settings


@dataclass(frozen=True)
class LogicalCutover:
    started: float
    """`LogicalFence.started_monotonic`: the instant every figure below counts from."""
    steps: dict[str, float]
    """Each step's end, in order, in seconds from `started`; the last is the first write."""
    differences: list[str]
    """What `check_parity` reported (empty: parity holds)."""
    sequences: int
    """Sequences `copy_sequences` set."""
    ledger: Ledger

    @property
    def downtime_s(self) -> float:
        return list(self.steps.values())[-1]

    def durations(self) -> dict[str, float]:
        """Seconds each step took (its end minus the previous one's)."""
        out: dict[str, float] = {}
        previous = 0.0
        for step, end in self.steps.items():
            out[step] = end - previous
            previous = end
        return out


@dataclass(frozen=True)
class LogicalRun:
    prepare_s: float
    """`prepare_target`: roles and schema on the target."""
    copy_s: float
    """`start_replication` → `wait_copied`: the initial copy of every table."""
    catch_up_s: float
    """Until `logical_lag` was below `SMALL_LAG_BYTES` after the copy."""
    lag_at_fence: LogicalLag
    cutover: LogicalCutover
    ledger_rate: float


def _back(name: str) -> str:
    return f"{name}_back"


def logical_run(source: Source, settings: MigrateBenchSettings, round_no: int) -> LogicalRun:
    name = f"bench_upgrade_{round_no}"
    try:
        with newer.fresh_cluster(settings, extra=target_settings()) as target_cluster:
            target = instance_of(target_cluster)
            problems = logical_preflight(source.instance, target, [DB])
            if problems:
                raise RuntimeError("logical_preflight found: " + "; ".join(problems))
            with steady_load(source, settings.load_tps) as load:
                started = time.monotonic()
                prepare_target(source.instance, target, DB)
                prepared = time.monotonic()
                start_replication(source.instance, target, DB, name)
                wait_copied(target, DB, name, timeout=COPY_TIMEOUT_S)
                settle_copy(target, DB)  # the copy step's end, as the executor runs it
                copied = time.monotonic()
                log(
                    f"  prepare_target {prepared - started:.2f} s, initial copy "
                    f"{copied - prepared:.2f} s"
                )
                _wait_small_lag(source.instance, target, name)
                caught_up = time.monotonic()
                time.sleep(settings.steady_s)
                load.check_running()
                lag = logical_lag(source.instance, target, name)
                log(f"  lag before the fence: {lag.bytes} bytes, {lag.seconds:.3f} s")
                cutover = measure_logical_cutover(
                    source.instance,
                    target,
                    name,
                    target_dsn=target_cluster.tcp_dsn,
                    round_no=round_no,
                    writer=load.writer,
                    stop_load=load.stop,
                )
    finally:
        # The target (and its subscription) is gone first: the slot is then free to drop.
        reset_source(source, name)
    log(
        "  cutover (from the fence's start): "
        + ", ".join(f"{step} {end:.2f} s" for step, end in cutover.steps.items())
        + f"; parity differences {len(cutover.differences)}; "
        f"{cutover.ledger.acked} commits acknowledged, {cutover.ledger.lost_commits} lost"
    )
    for difference in cutover.differences:
        log(f"    parity: {difference}")
    return LogicalRun(
        prepare_s=prepared - started,
        copy_s=copied - prepared,
        catch_up_s=caught_up - copied,
        lag_at_fence=lag,
        cutover=cutover,
        ledger_rate=cutover.ledger.acked / (cutover.started - load.started),
    )


def _wait_small_lag(source: PgInstance, target: PgInstance, name: str) -> None:
    deadline = time.monotonic() + STEP_TIMEOUT_S
    while logical_lag(source, target, name).bytes > SMALL_LAG_BYTES:
        if time.monotonic() > deadline:
            raise TimeoutError(f"the subscription never came within {SMALL_LAG_BYTES} bytes")
        time.sleep(0.2)


def measure_logical_cutover(
    source: PgInstance,
    target: PgInstance,
    name: str,
    *,
    target_dsn: str,
    round_no: int,
    writer: Writer,
    stop_load: Callable[[], None],
) -> LogicalCutover:
    """The timed cutover (see the module's docstring), then the ledger checked."""
    steps: dict[str, float] = {}
    with psycopg.connect(target_dsn, autocommit=True, connect_timeout=10) as conn:
        conn.execute("SELECT 1")
        fence = fence_for_logical(source, target, DB, name)
        started = fence.started_monotonic
        fenced_at = time.monotonic()
        steps["fence_for_logical"] = fenced_at - started
        wait_caught_up(target, DB, name, fence.final_lsn, timeout=STEP_TIMEOUT_S)
        steps["wait_caught_up"] = time.monotonic() - started
        sequences = copy_sequences(fence.fenced, target, DB)
        steps["copy_sequences"] = time.monotonic() - started
        # The unfenced source: check_parity reads the fenced one on its private socket itself.
        differences, _signature = check_parity(source, target, DB)
        steps["check_parity"] = time.monotonic() - started
        open_with_way_back(source, target, DB, name, _back(name))
        steps["open_with_way_back"] = time.monotonic() - started
        conn.execute(
            "INSERT INTO migrate_probe (round, method) VALUES (%s, %s)", (round_no, LOGICAL)
        )
        steps["first write"] = time.monotonic() - started
    # The writer keeps knocking on the fenced source meanwhile; any success would show here.
    stop_load()
    ledger = judge_ledger(writer, started, fenced_at, ids_on(target))
    return LogicalCutover(started, steps, differences, sequences, ledger)


def reset_source(source: Source, name: str) -> None:
    """The source serves writes again on its own address (the private run stopped, unfenced),
    and nothing of the round — its slot, its publication — holds WAL or lingers."""
    private = fenced(source.instance)
    if (private.socket_dir / f".s.PGSQL.{private.port}").exists():
        _drop_way_back(replace(private, session_options=WRITABLE), _back(name))
        private.pg_ctl("-m", "fast", "stop")
    unfence_source(source.instance)
    source.instance.rows(
        "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots "
        "WHERE slot_name = :'name'",
        {"name": name},
    )
    source.cluster.execute(f'DROP PUBLICATION IF EXISTS "{name}"', dbname=DB)
    source.cluster.psql("INSERT INTO migrate_probe (round, method) VALUES (0, 'reset')", tcp=True)


def _drop_way_back(private: PgInstance, back: str) -> None:
    """The source's subscription to the (removed) target, detached from its slot first: the
    slot was the target's."""
    variables = {"name": back}
    exists = "SELECT 1 FROM pg_subscription WHERE subname = :'name'"
    if not private.rows(exists, variables):
        return
    for sql in (
        'ALTER SUBSCRIPTION :"name" DISABLE',
        'ALTER SUBSCRIPTION :"name" SET (slot_name = NONE)',
        'DROP SUBSCRIPTION :"name"',
    ):
        private.rows(sql, variables)
