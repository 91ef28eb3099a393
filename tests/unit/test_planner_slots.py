"""Slot keys and deterministic ids: the same slot or step always gives the same UUIDv7, and
which slots a policy owes at a moment."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

import pytest

from schemas import DatabaseRef, Engine, uuid7
from schemas.messages import BackupPolicy
from services.planner.keys import backup_id_for, slot_command_id, slot_key, step_id
from services.planner.records import PolicyRecord
from services.planner.scheduler import due_slots

pytestmark = pytest.mark.unit
ONE = datetime(2026, 3, 2, 1, 0, tzinfo=UTC)
DB = DatabaseRef(uid="orders", engine=Engine.POSTGRES, name="orders")


def test_slot_key_and_id_are_functions_of_the_slot() -> None:
    assert slot_key("orders", "full", ONE) == "sched.orders.full.202603020100"
    first = slot_command_id("orders", "full", ONE)
    assert first == slot_command_id("orders", "full", ONE)
    assert first.version == 7
    assert first.int >> 80 == int(ONE.timestamp() * 1000)  # sorts by the slot's minute
    assert first != slot_command_id("orders", "incremental", ONE)
    assert first != slot_command_id("orders", "full", ONE + timedelta(minutes=1))
    assert first != slot_command_id("ledger", "full", ONE)


def test_step_ids_keep_the_cause_time_and_differ_per_step() -> None:
    cause = uuid7()
    run, answer = step_id(cause, "run"), step_id(cause, "answer")
    assert run == step_id(cause, "run")
    assert run != answer
    assert run.version == answer.version == 7
    assert run.int >> 80 == cause.int >> 80
    assert step_id(uuid.uuid4(), "run").version == 7


def test_backup_id_is_time_then_command() -> None:
    command = slot_command_id("orders", "full", ONE)
    assert backup_id_for(command, ONE) == f"20260302T010000-{command.hex[-8:]}"


def policy(since: datetime, **fields: object) -> PolicyRecord:
    return PolicyRecord(
        database=DB,
        policy=BackupPolicy.model_validate(fields),
        since=since,
        updated_at=since,
        command_id=uuid7(),
    )


def test_due_slots_per_kind_within_grace_and_after_the_policy_was_set() -> None:
    record = policy(
        ONE - timedelta(days=1),
        full_cron="0 1 * * *",
        incremental_cron="*/30 * * * *",
        verify_cron="0 3 * * *",
    )
    due = dict(due_slots(record, ONE + timedelta(minutes=40), timedelta(hours=1)))
    assert due == {"full": ONE, "incremental": ONE + timedelta(minutes=30)}
    late = dict(due_slots(record, ONE + timedelta(minutes=61), timedelta(hours=1)))
    assert "full" not in late  # missed by more than the grace
    fresh = policy(ONE + timedelta(minutes=10), full_cron="0 1 * * *", verify_cron=None)
    assert due_slots(fresh, ONE + timedelta(minutes=20), timedelta(hours=1)) == []
