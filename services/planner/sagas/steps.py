"""The pieces a saga's steps are built from, as pure functions over its record: deterministic
ids, gates that must hold for a while, windows a step may run in, and repeated rounds.

None of these does I/O: a step asks the world (the catalog, a job's result), then asks these
what that means for the record, and the driver writes the answer with compare-and-set. So a
step done twice — a redelivery, a resume, a second replica — decides the same thing.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from pydantic import BaseModel, ConfigDict, model_validator

from schemas import UtcDateTime
from services.planner.keys import step_id
from services.planner.sagas.record import SagaRecord


def step_ref(saga_id: uuid.UUID, step: str, attempt: int = 0) -> uuid.UUID:
    """The id of (saga, step, attempt): the job id, command id and `Nats-Msg-Id` of what that
    step sends. The same step of the same attempt always sends under the same id, so JetStream
    and the executor's journal keep one copy; a retry is a new attempt with a new id."""
    return step_id(saga_id, f"{step}#{attempt}")


# -- gates -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class GateState:
    """A gate's verdict at one check: open once its condition has held for `hold` without a
    break. `changes` is what the record must remember (since when it has held)."""

    open: bool
    held_for: timedelta
    changes: dict[str, Any] = field(default_factory=dict)


def check_gate(
    record: SagaRecord[Any], name: str, *, holds: bool, hold: timedelta, now: datetime
) -> GateState:
    """A condition that must hold continuously for `hold` (lag under budget for ten minutes).
    Any check where it does not hold starts the clock again: a lag that dipped under budget
    for one sample is not a lag that stays there."""
    gates = dict(record.gates)
    if holds:
        since = gates.setdefault(name, now)
    else:
        gates.pop(name, None)
    changes: dict[str, Any] = {"gates": gates} if gates != record.gates else {}
    if not holds:
        return GateState(open=False, held_for=timedelta(0), changes=changes)
    held_for = max(now - since, timedelta(0))
    return GateState(open=held_for >= hold, held_for=held_for, changes=changes)


# -- windows -----------------------------------------------------------------------------------


class TimeWindow(BaseModel):
    """A stretch of time in which a step may act (a cutover window agreed with the owners)."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    start: UtcDateTime
    end: UtcDateTime

    @model_validator(mode="after")
    def _ordered(self) -> TimeWindow:
        if self.end <= self.start:
            raise ValueError("a window's end must come after its start")
        return self

    def contains(self, at: datetime) -> bool:
        return self.start <= at < self.end


@dataclass(frozen=True)
class WindowState:
    open: bool
    next_start: datetime | None
    """When the next window opens, if the saga must wait; None when none is left."""


def check_windows(windows: list[TimeWindow], now: datetime) -> WindowState:
    """Open inside any window; no windows at all means "any time". Outside them the saga waits
    for the next one, and says so; after the last one there is nothing to wait for."""
    if not windows or any(w.contains(now) for w in windows):
        return WindowState(open=True, next_start=None)
    later = sorted(w.start for w in windows if w.start > now)
    return WindowState(open=False, next_start=later[0] if later else None)


# -- repeat until ------------------------------------------------------------------------------


def rounds_done(record: SagaRecord[Any], step: str) -> int:
    return record.rounds.get(step, 0)


def round_ref(record: SagaRecord[Any], step: str) -> uuid.UUID:
    """The id of the current round of a repeated step (a roll-forward round): each round is
    its own job, and redoing a round reuses its id."""
    return step_ref(record.saga_id, step, rounds_done(record, step))


def round_finished(record: SagaRecord[Any], step: str) -> dict[str, Any]:
    """The record's changes once a round of `step` ended: the next round gets the next id."""
    return {"rounds": {**record.rounds, step: rounds_done(record, step) + 1}}
