"""The slot rule of migration programs (`services.planner.programs.schedule`) and what the
program's model refuses before it is sent: limits per node, list order, and a migration that
failed or paused holding only its own slot."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from schemas.messages import RequestMigrationProgram
from services.planner.programs import Seat, schedule
from tests.unit.program_examples import ENTRIES, PROGRAM, _entry

pytestmark = pytest.mark.unit


def waiting(position: int, source: str = "a", target: str = "t") -> Seat:
    return Seat(position, source, target, waits=True)


def running(position: int, source: str = "a", target: str = "t") -> Seat:
    return Seat(position, source, target, holds=True)


def ended(position: int, source: str = "a", target: str = "t") -> Seat:
    """Refused, or its migration final (completed, failed, aborted, rolled back)."""
    return Seat(position, source, target)


def test_entries_start_in_list_order_up_to_the_limit_of_each_node() -> None:
    plan = schedule(
        [waiting(1), waiting(2), waiting(3), waiting(4)],
        max_per_source_node=2,
        max_per_target_node=3,
    )
    assert plan.starts == [1, 2]
    assert plan.waiting == {
        3: "waiting for a slot: 2 of 2 migrations out of a running",
        4: "waiting for a slot: 2 of 2 migrations out of a running",
    }


def test_the_target_nodes_limit_counts_migrations_into_it_from_every_source() -> None:
    plan = schedule(
        [waiting(1, "a"), waiting(2, "b"), waiting(3, "c")],
        max_per_source_node=5,
        max_per_target_node=2,
    )
    assert plan.starts == [1, 2]
    assert plan.waiting == {3: "waiting for a slot: 2 of 2 migrations into t running"}


def test_an_entry_never_waits_for_a_node_it_does_not_use() -> None:
    plan = schedule(
        [running(1, "a"), waiting(2, "a"), waiting(3, "b"), waiting(4, "a")],
        max_per_source_node=1,
        max_per_target_node=9,
    )
    assert plan.starts == [3]
    assert set(plan.waiting) == {2, 4}


def test_a_failed_or_finished_migration_frees_its_slot_for_the_next_entry() -> None:
    plan = schedule(
        [ended(1), running(2), waiting(3), waiting(4)],
        max_per_source_node=2,
        max_per_target_node=2,
    )
    assert plan.starts == [3]
    assert list(plan.waiting) == [4]


def test_a_paused_or_held_migration_holds_only_its_own_slot() -> None:
    # Entry 1 is paused (or held failed after its point of no return): still running, so it
    # keeps its slot on a and t; the others go on in the slots left.
    plan = schedule(
        [running(1), waiting(2), waiting(3)],
        max_per_source_node=2,
        max_per_target_node=2,
    )
    assert plan.starts == [2]
    assert list(plan.waiting) == [3]


def test_nothing_starts_when_everything_is_started_or_ended() -> None:
    plan = schedule([ended(1), running(2)], max_per_source_node=1, max_per_target_node=1)
    assert plan.starts == []
    assert plan.waiting == {}


def test_a_program_moves_each_database_once_and_says_which_entries_collide() -> None:
    twice = [*ENTRIES, _entry(3, "orders-db")]
    with pytest.raises(ValidationError, match="entry 3: source orders-db is already in entry 1"):
        RequestMigrationProgram(program_id=PROGRAM, entries=twice)
    onto_a_source = ENTRIES[1].model_copy(
        update={
            "request": ENTRIES[1].request.model_copy(
                update={
                    "target_instance": ENTRIES[1].request.target_instance.model_copy(
                        update={"database": ENTRIES[0].source}
                    )
                }
            )
        }
    )
    with pytest.raises(ValidationError, match="entry 2: target orders-db is already in entry 1"):
        RequestMigrationProgram.model_validate(
            {
                "program_id": PROGRAM,
                "entries": [ENTRIES[0].model_dump(), onto_a_source.model_dump()],
            }
        )


def test_a_program_is_bounded_and_its_limits_are_at_least_one() -> None:
    with pytest.raises(ValidationError, match="at least 1 item"):
        RequestMigrationProgram(program_id=PROGRAM, entries=[])
    with pytest.raises(ValidationError, match="greater than or equal to 1"):
        RequestMigrationProgram(program_id=PROGRAM, entries=ENTRIES, max_per_source_node=0)
    with pytest.raises(ValidationError, match="at most 200 items"):
        RequestMigrationProgram(program_id=PROGRAM, entries=ENTRIES * 101)
    with pytest.raises(ValidationError, match="should match pattern"):
        RequestMigrationProgram(program_id="Wave 3", entries=ENTRIES)
