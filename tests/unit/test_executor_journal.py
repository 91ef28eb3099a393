"""The job journal: its transition table, its durability settings, what it gives back, the
deterministic event ids, the engine registry and the node heartbeat value."""

from __future__ import annotations

import importlib.util
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from schemas import Engine, NodeHeartbeat
from schemas.messages import Failure, Operation
from services.engines.registry import EngineRegistry, EngineUnavailable
from services.executor import errors
from services.executor.events import Events, event_id
from services.executor.journal import (
    FINISHED,
    TRANSITIONS,
    IllegalTransition,
    JobState,
    Journal,
)
from services.executor.nodes import heartbeat
from services.executor.settings import ExecutorSettings
from tests.doubles.executor_rig import hosted, run_backup
from tests.doubles.fake_engine import FakeEngine

pytestmark = pytest.mark.unit

WHEN = datetime(2025, 1, 2, 3, 4, 5, tzinfo=UTC)


@pytest.fixture
def journal(tmp_path: Path) -> Iterator[Journal]:
    j = Journal(tmp_path / "executor" / "jobs.sqlite")
    yield j
    j.close()


def test_the_journal_is_wal_and_fsyncs_every_commit(journal: Journal) -> None:
    mode = journal._db.execute("PRAGMA journal_mode").fetchone()[0]
    sync = journal._db.execute("PRAGMA synchronous").fetchone()[0]
    assert (mode, sync) == ("wal", 2)  # 2 = FULL


def test_final_states_have_no_way_out() -> None:
    for state in FINISHED:
        assert TRANSITIONS[state] == frozenset()
        assert state.finished
    assert not JobState.RUNNING.finished
    assert set(TRANSITIONS) == {None, *JobState}


def test_a_job_goes_accepted_running_succeeded_and_keeps_its_events(journal: Journal) -> None:
    command = run_backup()
    job_id = command.data.job_id
    record = journal.accept(job_id, Operation.BACKUP, command)
    assert record.state is JobState.ACCEPTED
    assert journal.accept(job_id, Operation.BACKUP, command) == record  # idempotent
    journal.running(job_id)
    events = Events(command, source="executor@n").failed(Failure(reason="boom"), finished_at=WHEN)
    record = journal.finish(
        job_id, JobState.FAILED, events=events, finished_at=WHEN, failure=Failure(reason="boom")
    )
    assert record.state is JobState.FAILED
    assert record.command == command
    assert [e.id for e in record.events] == [e.id for e in events]
    assert record.events == events
    assert journal.unpublished() == [record]
    journal.published(job_id)
    assert journal.unpublished() == []


def test_illegal_moves_are_refused(journal: Journal) -> None:
    command = run_backup()
    job_id = command.data.job_id
    with pytest.raises(IllegalTransition):
        journal.running(job_id)  # never accepted
    journal.accept(job_id, Operation.BACKUP, command)
    journal.running(job_id)
    with pytest.raises(IllegalTransition):
        journal.accept(job_id, Operation.BACKUP, command)  # running is not re-accepted
    journal.finish(
        job_id, JobState.INTERRUPTED, events=[], finished_at=WHEN, failure=Failure(reason="x")
    )
    with pytest.raises(IllegalTransition):
        journal.finish(
            job_id, JobState.FAILED, events=[], finished_at=WHEN, failure=Failure(reason="y")
        )
    with pytest.raises(IllegalTransition, match="never accepted"):
        journal.finish(
            uuid.uuid4(), JobState.FAILED, events=[], finished_at=WHEN, failure=Failure(reason="z")
        )


def test_a_success_needs_a_result_and_a_failure_a_failure(journal: Journal) -> None:
    command = run_backup()
    journal.accept(command.data.job_id, Operation.BACKUP, command)
    journal.running(command.data.job_id)
    with pytest.raises(ValueError, match="a success has a result"):
        journal.finish(command.data.job_id, JobState.SUCCEEDED, events=[], finished_at=WHEN)


def test_prune_forgets_only_old_published_jobs(journal: Journal) -> None:
    old, recent = run_backup(), run_backup()
    for command, when in ((old, WHEN), (recent, WHEN + timedelta(days=40))):
        journal.finish(
            command.data.job_id,
            JobState.FAILED,
            events=[],
            finished_at=when,
            failure=Failure(reason="refused", code=errors.NOT_HOSTED),
            refused=(Operation.BACKUP, command),
        )
        journal.published(command.data.job_id)
    assert journal.prune(WHEN + timedelta(days=10)) == 1
    assert journal.get(old.data.job_id) is None
    assert journal.get(recent.data.job_id) is not None


def test_event_ids_are_deterministic_uuid7_ordered_by_time() -> None:
    job = uuid.uuid4()
    first = event_id(job, "job.succeeded", WHEN)
    assert first == event_id(job, "job.succeeded", WHEN)
    assert first.version == 7
    assert first != event_id(job, "job.failed", WHEN)
    assert first != event_id(uuid.uuid4(), "job.succeeded", WHEN)
    assert event_id(job, "job.succeeded", WHEN + timedelta(seconds=1)) > first


def test_registry_uses_given_drivers_and_explains_missing_ones() -> None:
    settings = ExecutorSettings()
    fake = FakeEngine()
    assert EngineRegistry(settings, drivers={Engine.POSTGRES: fake}).get(Engine.POSTGRES) is fake
    with pytest.raises(EngineUnavailable, match="no oracle engine on this node"):
        EngineRegistry(settings, loadable={}).get(Engine.ORACLE)
    assert type(EngineRegistry(settings).get(Engine.ORACLE)).__name__ == "OracleEngine"


def test_registry_loads_the_postgres_driver_lazily_or_says_why_not() -> None:
    registry = EngineRegistry(ExecutorSettings())
    if importlib.util.find_spec("services.engines.postgres.engine") is None:
        # The driver is not in this build yet: the executor still imports and says why.
        with pytest.raises(EngineUnavailable, match=r"services\.engines\.postgres\.engine"):
            registry.get(Engine.POSTGRES)
        return
    driver = registry.get(Engine.POSTGRES)
    assert type(driver).__name__ == "PostgresEngine"
    assert registry.get(Engine.POSTGRES) is driver  # one instance per engine


def test_node_heartbeat_lists_hosted_databases_and_load() -> None:
    settings = ExecutorSettings(concurrency=3, databases=[hosted("orders"), hosted("billing")])
    value = heartbeat("node-1", settings, running=1, waiting=2)
    again = NodeHeartbeat.model_validate_json(value.model_dump_json())
    assert again.node == "node-1"
    assert [d.uid for d in again.databases] == ["orders", "billing"]
    assert again.databases[0].engine is Engine.POSTGRES
    assert (again.capacity, again.running, again.waiting) == (3, 1, 2)
