"""The migration contract refuses bad requests with the reason, and its subjects carry both
databases as tokens."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
from pydantic import ValidationError

from schemas import ContractError, DatabaseRef, Engine, decode, envelope, subject_for, wildcard
from schemas.messages import (
    CutoverStep,
    CutoverWindow,
    LagBudget,
    MigrationMethod,
    MigrationPhase,
    MigrationPhaseChanged,
    MigrationRequestError,
    PauseMigration,
    RequestMigration,
    RunMigrationFence,
    TargetInstance,
)
from schemas.messages.migrations import (
    CUTOVER_STEPS,
    METHOD_ENGINE,
    POINT_OF_NO_RETURN,
    TERMINAL_PHASES,
    check_request,
)
from tests.unit.migration_examples import INSTANCE, LAG, MIGRATION, SOURCE, T0, TARGET

pytestmark = pytest.mark.unit


def request(**changes: Any) -> RequestMigration:
    fields: dict[str, Any] = {
        "migration_id": MIGRATION,
        "target_instance": INSTANCE,
        "method": MigrationMethod.PHYSICAL_STREAM,
        "downtime_budget_s": 5.0,
        "lag": LAG,
    }
    return RequestMigration(**(fields | changes))


def refusal(**changes: Any) -> str:
    with pytest.raises(ValidationError) as caught:
        request(**changes)
    return str(caught.value)


def test_a_method_of_another_engine_is_refused_naming_the_engines_methods() -> None:
    reason = refusal(method=MigrationMethod.DATAGUARD)
    assert "'dataguard' is not a postgres method" in reason
    assert "physical-stream" in reason


def test_an_unknown_method_is_refused() -> None:
    assert "physical-stream" in refusal(method="teleport")


def test_lag_budget_nonsense_is_refused() -> None:
    assert "needs max_bytes, max_seconds or both" in refusal(lag={"hold_s": 10})
    assert "greater than or equal to 0" in refusal(lag={"max_bytes": -1})
    assert "less than or equal to 86400" in refusal(lag={"max_seconds": 1, "hold_s": 90_000})
    reason = refusal(lag=LagBudget(max_seconds=30.0), downtime_budget_s=5.0)
    assert "lag budget of 30 s exceeds the downtime budget of 5 s" in reason
    assert "greater than 0" in refusal(downtime_budget_s=0)


def test_windows_that_end_before_they_start_or_overlap_are_refused() -> None:
    assert "before it starts" in refusal(windows=[{"start": T0, "end": T0}])
    overlapping = [
        CutoverWindow(start=T0, end=T0 + timedelta(hours=2)),
        CutoverWindow(start=T0 + timedelta(hours=1), end=T0 + timedelta(hours=3)),
    ]
    assert "overlap" in refusal(windows=overlapping)
    assert "at most 7 days" in refusal(windows=[{"start": T0, "end": T0 + timedelta(days=8)}])


def test_pausing_after_a_terminal_phase_and_repeated_participants_are_refused() -> None:
    assert "terminal" in refusal(pause_after=MigrationPhase.COMPLETED)
    assert "named once" in refusal(participants=["a", "a"])


def test_intake_refuses_same_source_and_target_a_past_window_and_unknown_databases() -> None:
    same = TargetInstance(database=SOURCE, node="db-node-2", data_dir="/x", port=5433)
    with pytest.raises(MigrationRequestError, match="same database") as caught:
        check_request(request(target_instance=same), SOURCE, now=T0)
    assert caught.value.code == "TM-MIG-SAME"
    past = [CutoverWindow(start=T0 - timedelta(hours=3), end=T0 - timedelta(hours=1))]
    with pytest.raises(MigrationRequestError, match="every cutover window is in the past"):
        check_request(request(windows=past), SOURCE, now=T0)
    with pytest.raises(MigrationRequestError, match="unknown source database 'orders-db'"):
        check_request(request(), SOURCE, now=T0, known=frozenset({"other"}))
    oracle = DatabaseRef(uid="erp", engine=Engine.ORACLE, name="ERP")
    with pytest.raises(MigrationRequestError, match="cross-engine"):
        check_request(request(), oracle, now=T0)
    with pytest.raises(MigrationRequestError, match="name its source"):
        check_request(request(), None, now=T0)


def test_a_sound_request_passes_intake_and_a_window_still_open_counts() -> None:
    window = CutoverWindow(start=T0 - timedelta(hours=1), end=T0 + timedelta(hours=1))
    check_request(request(windows=[window]), SOURCE, now=T0, known=frozenset({SOURCE.uid}))


def test_every_migration_subject_ends_with_source_then_target() -> None:
    message = envelope(request(), source="tool", database=SOURCE)
    assert subject_for(message) == "tm.cmd.planner.any.migration.request.orders-db.orders-db-new"
    step = RunMigrationFence(
        migration_id=MIGRATION,
        target=TARGET.uid,
        job_id=MIGRATION,
        source=SOURCE.uid,
        method=MigrationMethod.PHYSICAL_STREAM,
        target_instance=INSTANCE,
    )
    routed = subject_for(envelope(step, source="planner", database=SOURCE), node="db-node-1")
    assert routed == "tm.cmd.executor.db-node-1.migration.fence.orders-db.orders-db-new"
    assert wildcard(MigrationPhaseChanged) == "tm.evt.migration.phase.*.*"


def test_a_migration_message_on_another_pair_of_databases_subject_is_refused() -> None:
    message = envelope(
        PauseMigration(migration_id=MIGRATION, target=TARGET.uid), source="tool", database=SOURCE
    )
    raw = message.model_dump_json().encode()
    assert decode(raw, subject=subject_for(message)) == message
    with pytest.raises(ContractError, match="does not belong on subject"):
        decode(raw, subject="tm.cmd.planner.any.migration.pause.orders-db")


def test_phases_steps_and_methods_are_complete_tables() -> None:
    assert set(METHOD_ENGINE) == set(MigrationMethod)
    assert CUTOVER_STEPS[-1] is POINT_OF_NO_RETURN is CutoverStep.OPEN_TARGET
    assert CUTOVER_STEPS.index(CutoverStep.FENCE_SOURCE) < CUTOVER_STEPS.index(POINT_OF_NO_RETURN)
    assert MigrationPhase.READY not in TERMINAL_PHASES
