"""The saga machinery on a real nats-server's KV, driven through a test-only saga kind
(`tests/doubles/rehearsal_saga.py`) that uses every feature a migration will: two databases
locked for the saga's life, rounds repeated until they converge, a gate that must hold, a
window, pause after a named phase, and a planner restart in the middle."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

import pytest
from nats.aio.client import Client

from services.bus import ensure_topology
from services.planner.clock import ManualClock
from services.planner.errors import BUSY, Refused
from services.planner.keys import lock_key
from services.planner.locks import take_lock
from services.planner.records import Lock
from services.planner.sagas import SagaDriver, SagaRef, TimeWindow, step_ref
from services.planner.store import PlanStore
from services.runtime.phases import IllegalTransition
from tests.doubles.rehearsal_saga import Phase, Rehearsal, RehearsalRecord, World
from tests.integration.bus_helpers import FAST

pytestmark = pytest.mark.integration

NOON = datetime(2026, 3, 2, 12, 0, tzinfo=UTC)


async def rig(nc: Client, clock: ManualClock, world: World) -> tuple[PlanStore, SagaDriver]:
    await ensure_topology(nc.jetstream(), FAST)
    plans = await PlanStore.open(nc.jetstream())
    driver = SagaDriver(plans, clock.now)
    driver.register(Rehearsal(plans, driver, world))
    return plans, driver


async def start(
    plans: PlanStore, clock: ManualClock, *, windows: list[TimeWindow], pause_after: str | None
) -> RehearsalRecord:
    suffix = uuid.uuid4().hex[:8]
    record = RehearsalRecord(
        rehearsal_id=uuid.uuid4(),
        source=f"src-{suffix}",
        target=f"tgt-{suffix}",
        lag_budget=100,
        hold_s=60,
        windows=windows,
        pause_after=pause_after,
        phase=Phase.PREPARING,
        created_at=clock.now(),
        updated_at=clock.now(),
    )
    await plans.create(f"rehearsal.{record.rehearsal_id}", record)
    return record


async def test_a_saga_repeats_rounds_waits_on_its_gate_and_window_and_pauses_where_asked(
    nc: Client,
) -> None:
    clock, world = ManualClock(NOON), World(rounds_to_converge=3, lag=5_000)
    plans, driver = await rig(nc, clock, world)
    window = TimeWindow(start=NOON + timedelta(hours=2), end=NOON + timedelta(hours=3))
    record = await start(plans, clock, windows=[window], pause_after="ready")
    ref = record.ref

    # Rounds until converged, each with its own id; then paused after entering `ready`.
    moved = await driver.advance(ref)
    assert moved.phase is Phase.READY
    assert moved.paused
    assert len(world.round_ids) == 3
    assert len(set(world.round_ids)) == 3
    assert world.round_ids[0] == step_ref(record.rehearsal_id, "copy", 0)
    assert moved.rounds == {"copy": 3}
    # Both databases are locked by this saga for its whole life: another taker is refused.
    other = Lock(
        kind="backup",
        job_id=uuid.uuid4(),
        node="n",
        backup_id="b",
        command_id=uuid.uuid4(),
        taken_at=NOON,
    )
    with pytest.raises(Refused) as refused:
        await take_lock(plans, record.target, other)
    assert refused.value.refusal.code == BUSY
    assert str(ref) in refused.value.refusal.reason

    # Paused: advancing does nothing until resumed.
    assert (await driver.advance(ref)).paused
    waiting = await driver.resume(ref)
    assert waiting.phase is Phase.READY
    assert not waiting.paused
    assert waiting.waiting is not None
    assert "lag 5000" in waiting.waiting.reason

    # The gate: under budget must hold for the full 60 s; a relapse starts the clock again.
    world.lag = 50
    assert (await driver.advance(ref)).phase is Phase.READY
    clock.advance(timedelta(seconds=40))
    world.lag = 500
    assert (await driver.advance(ref)).gates == {}
    world.lag = 50
    await driver.advance(ref)
    clock.advance(timedelta(seconds=59))
    assert (await driver.advance(ref)).phase is Phase.READY
    clock.advance(timedelta(seconds=1))

    # Gate held: on to cutting over, which waits for its window and says until when.
    outside = await driver.advance(ref)
    assert outside.phase is Phase.CUTTING_OVER
    assert outside.waiting is not None
    assert outside.waiting.until == window.start
    assert world.cutovers == []
    clock.set(window.start + timedelta(minutes=1))
    done = await driver.advance(ref)
    assert done.phase is Phase.COMPLETED
    assert world.cutovers == [step_ref(record.rehearsal_id, "cutover")]
    assert [s.phase for s in done.history] == [
        Phase.COPYING,
        Phase.READY,
        Phase.CUTTING_OVER,
        Phase.COMPLETED,
    ]
    # Its end released both locks.
    for uid in (record.source, record.target):
        assert await plans.get(lock_key(uid), Lock) is None


async def test_a_planner_restart_resumes_a_saga_without_redoing_its_rounds(nc: Client) -> None:
    clock, world = ManualClock(NOON), World(rounds_to_converge=2, lag=0)
    plans, driver = await rig(nc, clock, world)
    record = await start(plans, clock, windows=[], pause_after="copying")
    paused = await driver.advance(record.ref)
    assert paused.phase is Phase.COPYING
    assert paused.paused
    assert world.round_ids == []

    # A second planner (a restart) over the same bucket; the pause is lifted there.
    plans2 = await PlanStore.open(nc.jetstream())
    driver2 = SagaDriver(plans2, clock.now)
    driver2.register(Rehearsal(plans2, driver2, world))
    await driver2.resume(record.ref)
    ended = await driver2.load(record.ref)
    assert ended is not None
    # The gate needs 60 s of lag under budget: it waits, then a restart resumes it there.
    assert ended.value.phase is Phase.READY
    assert len(world.round_ids) == 2
    clock.advance(timedelta(seconds=61))
    assert await driver.resume_all() >= 1
    final = await driver.load(record.ref)
    assert final is not None
    assert final.value.phase is Phase.COMPLETED
    assert len(world.round_ids) == 2  # no round was run twice


async def test_a_saga_whose_windows_have_all_passed_fails_and_frees_its_databases(
    nc: Client,
) -> None:
    clock, world = ManualClock(NOON), World(rounds_to_converge=1, lag=0)
    plans, driver = await rig(nc, clock, world)
    past = TimeWindow(start=NOON - timedelta(hours=3), end=NOON - timedelta(hours=2))
    record = await start(plans, clock, windows=[past], pause_after=None)
    clock.advance(timedelta(seconds=61))
    await driver.advance(record.ref)
    clock.advance(timedelta(seconds=61))
    failed = await driver.advance(record.ref)
    assert failed.phase is Phase.FAILED
    assert failed.failure is not None
    assert "window" in failed.failure.reason
    for uid in (record.source, record.target):
        assert await plans.get(lock_key(uid), Lock) is None
    # Final is final: the table refuses any move out of it, and pausing it is refused.
    with pytest.raises(IllegalTransition):
        await driver.write(driver.kind_of(record.ref), failed, 0, Phase.COMPLETED)
    with pytest.raises(Refused):
        await driver.pause(record.ref)


async def test_an_unregistered_kind_is_a_clear_error(nc: Client) -> None:
    clock = ManualClock(NOON)
    _, driver = await rig(nc, clock, World())
    with pytest.raises(LookupError, match="no saga kind 'migration'"):
        await driver.advance(SagaRef(kind="migration", id=uuid.uuid4()))
