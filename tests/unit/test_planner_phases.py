"""The restore saga's phases as data: which transitions are allowed, and that the one
function that moves a record refuses the others."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

import pytest

from schemas import DatabaseRef, Engine
from schemas.messages import RequestRestore, TargetImmediate
from services.planner.phases import (
    FINAL,
    TRANSITIONS,
    IllegalTransition,
    RestorePhase,
    RestoreRecord,
    transition,
)

pytestmark = pytest.mark.unit
NOW = datetime(2026, 3, 1, tzinfo=UTC)


def record(phase: RestorePhase) -> RestoreRecord:
    return RestoreRecord(
        restore_id=uuid.uuid4(),
        command_id=uuid.uuid4(),
        correlation_id=uuid.uuid4(),
        database=DatabaseRef(uid="orders", engine=Engine.POSTGRES, name="orders"),
        request=RequestRestore(target=TargetImmediate()),
        phase=phase,
        created_at=NOW,
        updated_at=NOW,
    )


def test_the_happy_path_and_its_history() -> None:
    r = record(RestorePhase.CHECKING)
    for phase in ("planning", "dispatched", "running", "completed"):
        r = transition(r, RestorePhase(phase), NOW, percent=1.0)
    assert r.final
    assert [s.phase.value for s in r.history] == ["planning", "dispatched", "running", "completed"]


def test_every_phase_can_fail_until_it_is_final() -> None:
    for phase in RestorePhase:
        if phase in FINAL:
            continue
        assert transition(record(phase), RestorePhase.FAILED, NOW).phase is RestorePhase.FAILED


@pytest.mark.parametrize("src", list(RestorePhase))
@pytest.mark.parametrize("dst", list(RestorePhase))
def test_only_the_table_is_allowed(src: RestorePhase, dst: RestorePhase) -> None:
    if dst in TRANSITIONS[src]:
        assert transition(record(src), dst, NOW).phase is dst
    else:
        with pytest.raises(IllegalTransition, match=f"{src.value} → {dst.value}"):
            transition(record(src), dst, NOW)


def test_terminal_phases_never_move() -> None:
    assert {RestorePhase.COMPLETED, RestorePhase.FAILED} == FINAL
    assert all(not TRANSITIONS[p] for p in FINAL)


def test_a_fast_job_may_finish_before_it_was_seen_running() -> None:
    assert RestorePhase.COMPLETED in TRANSITIONS[RestorePhase.DISPATCHED]
