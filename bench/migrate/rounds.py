"""A round's baseline copy and its physical-stream migration, back to a serving source (the
physical-archive migration that follows it is `archive_method.py`'s).

    [load starts] ─▶ [timed] pg_basebackup into an empty directory (removed) ─▶ [timed]
    build_standby ─▶ catch up ─▶ stream `steady_s` ─▶ [timed] fence → replay → promote → first
    write ─▶ ledger checked ─▶ [load stops] ─▶ target dropped, source unfenced, slot dropped

The baseline and our copy run back to back under the same load, after a `sync` each (dirty
pages of the previous copy are not billed to the next). The baseline is `pg_basebackup` with
exactly the copy flags `build_standby` uses (`-X stream --checkpoint=fast`, plain format) and
none of the standby's (`-R`, `-S`/`-C`); our copy is `build_standby` as the executor calls it,
which also starts the target and waits until it accepts connections (it has then replayed the
WAL written during the copy).
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from typing import TYPE_CHECKING

from bench.migrate.downtime import Cutover, measure_cutover
from bench.migrate.settings import MigrateBenchSettings
from bench.migrate.source import Source, steady_load
from services.engines.postgres.migration import (
    PgInstance,
    build_standby,
    fence_source,
    measure_lag,
    promote_target,
    unfence_source,
    wait_replayed,
)
from services.engines.postgres.migration.standby import slot_name
from tests.integration.migration_rig import empty_target, ids_on

if TYPE_CHECKING:  # upgrade.py builds on this module
    from bench.migrate.upgrade import UpgradeRound

STREAM = "physical-stream"
BASEBACKUP_COPY_FLAGS = ("-X", "stream", "--checkpoint=fast")
"""The copy flags `build_standby` passes pg_basebackup, without its standby ones (-R, -S, -C)."""


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


@dataclass(frozen=True)
class MethodRun:
    method: str
    copy_s: float
    start_s: float
    """…of which the target's start (`PgInstance.start`: pg_ctl start -w, the standby's
    recovery up to a consistent point)."""
    copied_bytes: int
    catch_up_s: float
    lag_at_fence: str
    """The target's lag from both sides just before the fence, as the method's steps read it."""
    cutover: Cutover
    ledger_rate: float
    """The ledger writer's acknowledged commits per second, from the load's start to the fence."""
    note: str = ""
    """What else the method's steps reported."""


@dataclass(frozen=True)
class Round:
    number: int
    load_average: float
    baseline_s: float
    runs: dict[str, MethodRun]
    upgrade: UpgradeRound | None = None
    """The round's upgrade part (`upgrade.py`; None: no newer release here)."""


@dataclass(frozen=True)
class TimedStart(PgInstance):
    """The target, noting how long its `start()` takes (a seam: the step itself is unchanged)."""

    started_s: list[float] = field(default_factory=list, compare=False)

    def start(self) -> None:
        began = time.monotonic()
        super().start()
        self.started_s.append(time.monotonic() - began)


def timed_start(instance: PgInstance) -> TimedStart:
    return TimedStart(**{f.name: getattr(instance, f.name) for f in fields(PgInstance)})


def quiesce() -> None:
    os.sync()


def time_baseline(source: Source) -> float:
    """A plain `pg_basebackup` of the source into an empty directory, timed; then removed."""
    with empty_target(source.cluster) as copy:
        quiesce()
        started = time.monotonic()
        source.instance.run(
            "pg_basebackup",
            ["-D", str(copy.data_dir), *_client_args(source.instance), *BASEBACKUP_COPY_FLAGS],
            timeout=6 * 3600,
        )
        return time.monotonic() - started


def _client_args(source: PgInstance) -> list[str]:
    return ["-h", str(source.socket_dir), "-p", str(source.port), "-U", source.role]


def catch_up(source: PgInstance, target: PgInstance, timeout: float = 600.0) -> float:
    """Until the target replayed what the source had written when the copy ended."""
    started = time.monotonic()
    head = source.value("SELECT pg_current_wal_lsn()")
    target.wait_until(
        f"SELECT pg_last_wal_replay_lsn() >= '{head}'::pg_lsn",
        timeout=timeout,
        what=f"catch-up to {head}",
    )
    return time.monotonic() - started


def reset_source(source: Source, slot: str | None) -> None:
    """The source serves writes again (unfenced), with no slot of the round holding WAL."""
    unfence_source(source.instance)
    if slot is not None:
        source.instance.rows(
            "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots "
            "WHERE slot_name = :'slot'",
            {"slot": slot},
        )
    source.cluster.psql("INSERT INTO migrate_probe (round, method) VALUES (0, 'reset')", tcp=True)


def stream_run(
    source: Source, settings: MigrateBenchSettings, round_no: int, baseline: Callable[[], float]
) -> tuple[float, MethodRun]:
    """The baseline copy, then physical-stream end to end, under one load."""
    slot = slot_name(f"bench-{round_no}")
    try:
        with steady_load(source, settings.load_tps) as load, empty_target(source.cluster) as empty:
            target = timed_start(empty)
            baseline_s = baseline()
            log(f"  pg_basebackup (baseline): {baseline_s:.2f} s")
            quiesce()
            started = time.monotonic()
            copied = build_standby(source.instance, target, slot=slot)
            copy_s = time.monotonic() - started
            start_s = sum(target.started_s)
            log(
                f"  build_standby: {copy_s:.2f} s ({copied / (1 << 20):.0f} MiB; "
                f"the target's start {start_s:.2f} s of it)"
            )
            # Untimed. The copy carries the source's archive_command: promoted, the target would
            # archive its new timeline into the *source's* archive (walpush into its spool), and
            # the next physical-archive round would restore onto a timeline forked before its
            # base backup. Whatever build_standby writes, one method must not spill into another.
            target.rows("ALTER SYSTEM SET archive_command = ''")
            target.rows("SELECT pg_reload_conf()")
            caught_up = catch_up(source.instance, target)
            time.sleep(settings.steady_s)
            load.check_running()
            lag = measure_lag(source.instance, target, slot=slot)
            log(f"  lag before the fence: {lag}")
            cutover = measure_cutover(
                target_dsn=source.tcp_dsn_at(target.port),
                round_no=round_no,
                method=STREAM,
                writer=load.writer,
                fence=lambda: fence_source(source.instance),
                replay=lambda fence: wait_replayed(target, fence.final_lsn),
                promote=lambda fence: promote_target(target, fence.final_lsn),
                ledger_on_target=lambda: ids_on(target),
                stop_load=load.stop,
            )
    finally:
        # The load stopped and the target dropped (left the blocks): whatever happened, the
        # next round needs the source serving and no slot of this one holding its WAL.
        reset_source(source, slot)
    log(
        f"  cutover: fenced {cutover.fenced_s:.2f} s, replayed {cutover.replayed_s:.2f} s, "
        f"promoted {cutover.promoted_s:.2f} s, first write {cutover.downtime_s:.2f} s; "
        f"{cutover.acked} commits acknowledged, {cutover.lost_commits} lost"
    )
    rate = cutover.acked / (cutover.started - load.started)
    return baseline_s, MethodRun(
        STREAM, copy_s, start_s, copied, caught_up, str(lag), cutover, rate
    )
