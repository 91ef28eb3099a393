"""Who may send which migration message, and how a team's credentials scope to its databases."""

from __future__ import annotations

import pytest

from schemas import envelope, subject_for, wildcard
from schemas.messages.migrations import (
    MIGRATION_COMMANDS,
    MIGRATION_EVENTS,
    MIGRATION_STEPS,
    MigrationCompleted,
    PauseMigration,
)
from services.bus.permissions import MATRIX, SENDS, Role
from tests.unit.migration_examples import MIGRATION, SOURCE, TARGET

pytestmark = pytest.mark.unit


def matches(pattern: str, subject: str) -> bool:
    want, got = pattern.split("."), subject.split(".")
    for i, token in enumerate(want):
        if token == ">":
            return len(got) > i
        if i >= len(got) or (token != "*" and token != got[i]):
            return False
    return len(want) == len(got)


def test_tools_send_migration_commands_and_never_an_engine_step() -> None:
    granted = MATRIX[Role.TOOL].publish_allow
    for model in MIGRATION_COMMANDS:
        assert wildcard(model) in granted
    for step in MIGRATION_STEPS:
        assert not any(matches(p, wildcard(step)) for p in granted), step.TYPE


def test_only_the_planner_sends_engine_steps_and_the_sagas_outcome() -> None:
    for role, models in SENDS.items():
        for step in MIGRATION_STEPS:
            assert (step in models) is (role is Role.PLANNER), (role, step.TYPE)
        assert (MigrationCompleted in models) is (role is Role.PLANNER), role
    assert set(MIGRATION_EVENTS) <= set(SENDS[Role.PLANNER])
    # A step reports through its job's events: no migration event is the executor's.
    assert not set(MIGRATION_EVENTS) & set(SENDS[Role.EXECUTOR])


def test_a_pattern_on_the_source_token_scopes_a_team_to_its_own_databases() -> None:
    team = "tm.cmd.planner.any.migration.*.orders-db.*"
    ours = envelope(
        PauseMigration(migration_id=MIGRATION, target=TARGET.uid), source="tool", database=SOURCE
    )
    assert matches(team, subject_for(ours))
    theirs = ours.model_copy(update={"database": SOURCE.model_copy(update={"uid": "billing"})})
    assert not matches(team, subject_for(theirs))
