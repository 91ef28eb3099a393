"""The saga machinery every planner workflow runs on.

    record.py   SagaRecord (phase, history, databases held, jobs by step, paused, waiting),
                SagaRef, transition()
    driver.py   SagaDriver: advance by outcomes (Move, Update, Wait, Idle), pause after a
                phase and resume, jobs mapped to their saga, resume every saga after restart
    steps.py    deterministic step ids, gates held for a duration, time windows, rounds
    store.py    the one retry loop around a conditional write

A new kind of saga is one module — its record (a `SagaRecord` subclass with its phase table),
its `step()` per phase, its `fail()` and `announce()` — plus one `register()` in the service.
"""

from services.planner.sagas.driver import Idle, Move, Outcome, SagaDriver, SagaKind, Update, Wait
from services.planner.sagas.record import PhaseStep, SagaRecord, SagaRef, Waiting, transition
from services.planner.sagas.steps import (
    GateState,
    TimeWindow,
    WindowState,
    check_gate,
    check_windows,
    round_finished,
    round_ref,
    rounds_done,
    step_ref,
)
from services.planner.sagas.store import until_written

__all__ = [
    "GateState",
    "Idle",
    "Move",
    "Outcome",
    "PhaseStep",
    "SagaDriver",
    "SagaKind",
    "SagaRecord",
    "SagaRef",
    "TimeWindow",
    "Update",
    "Wait",
    "Waiting",
    "WindowState",
    "check_gate",
    "check_windows",
    "round_finished",
    "round_ref",
    "rounds_done",
    "step_ref",
    "transition",
    "until_written",
]
