"""The job runner without NATS: a `FakeEngine`, a temp journal, a recording sink.

What it must guarantee: a job id runs at most once, every job ends with an event (never a silent
success), one operation at a time per database, `concurrency` at once per node, cancel and
timeout stop the engine, refusals are terminal.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from schemas import Engine
from schemas.messages import (
    BackupCompleted,
    BackupVerified,
    Failure,
    JobFailed,
    JobProgress,
    JobSucceeded,
    Operation,
    RestoreCompleted,
)
from services.bus import RetryableError, TerminalError
from services.executor import errors
from services.executor.journal import JobState
from tests.doubles.executor_rig import (
    NODE,
    Rig,
    hosted,
    run_backup,
    run_restore,
    run_verify,
)
from tests.doubles.fake_engine import FakeEngine

pytestmark = pytest.mark.unit


@pytest.fixture
def rig(tmp_path: Path) -> Iterator[Rig]:
    r = Rig(tmp_path)
    yield r
    r.close()


def make_rig(tmp_path: Path, **kw: object) -> Rig:
    return Rig(tmp_path, **kw)  # type: ignore[arg-type]


async def wait_until(predicate: object, timeout: float = 5.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not predicate():  # type: ignore[operator]
        if loop.time() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.01)


def failure_of(rig: Rig, job_id: uuid.UUID) -> JobFailed:
    (failed,) = rig.sink.of(job_id, "job.failed")
    data: JobFailed = failed.data
    return data


# -- success ----------------------------------------------------------------------------------


async def test_a_backup_is_accepted_reports_progress_and_succeeds(rig: Rig) -> None:
    rig.engine.sleep_s = 0.1
    command = run_backup()
    await rig.run(command)

    job_id = command.data.job_id
    types = rig.sink.types(job_id)
    assert types[0] == "job.accepted"
    assert "job.progress" in types
    assert types[-2:] == ["backup.completed", "job.succeeded"]
    for message in rig.sink.messages:
        assert message.causation_id == command.id
        assert message.correlation_id == command.correlation_id
        assert message.database == command.database
    completed: BackupCompleted = rig.sink.of(job_id, "backup.completed")[0].data
    assert completed.backup_id == "b1"
    assert completed.manifest_key == "p/orders/backups/b1/manifest.json"
    assert await rig.store.head(completed.manifest_key) is not None
    succeeded: JobSucceeded = rig.sink.of(job_id, "job.succeeded")[0].data
    assert succeeded.result.kind == "backup"
    assert succeeded.started_at <= succeeded.finished_at
    assert rig.keepalive.calls >= 1  # progress also extends the delivery

    assert rig.journal is not None
    record = rig.journal.get(job_id)
    assert record is not None
    assert record.state is JobState.SUCCEEDED
    assert record.published_at is not None
    assert [e.id for e in record.events] == [m.id for m in rig.sink.messages[-2:]]


async def test_restore_reports_restore_events_with_the_commands_restore_id(rig: Rig) -> None:
    command = run_restore()
    await rig.run(command)
    types = rig.sink.types()
    assert "restore.progress" in types
    assert types[-2:] == ["restore.completed", "job.succeeded"]
    completed: RestoreCompleted = rig.sink.of(None, "restore.completed")[0].data
    assert completed.restore_id == command.data.restore_id
    assert completed.target == command.data.target
    assert all(
        m.data.restore_id == command.data.restore_id for m in rig.sink.of(None, "restore.progress")
    )


async def test_verify_reports_backup_verified_and_cleans_its_scratch(rig: Rig) -> None:
    rig.engine.verify_ok = False
    command = run_verify()
    await rig.run(command)
    verified: BackupVerified = rig.sink.of(command.data.job_id, "backup.verified")[0].data
    assert verified.ok is False  # a check that found a problem is still a finished job
    assert verified.checks == ["fake: manifest read"]
    assert rig.sink.types()[-1] == "job.succeeded"
    assert not (rig.tmp / "scratch" / str(command.data.job_id)).exists()


async def test_progress_is_rate_limited_but_every_phase_is_told(tmp_path: Path) -> None:
    rig = make_rig(tmp_path, options={"progress_interval_s": 10.0})
    rig.engine.sleep_s = 0.5  # ten "copying" reports
    command = run_backup()
    await rig.run(command)
    phases = [m.data.phase for m in rig.sink.of(command.data.job_id, "job.progress")]
    assert phases == ["starting", "copying", "finishing"]
    rig.close()


async def test_progress_percent_comes_from_done_and_total(rig: Rig) -> None:
    rig.engine.sleep_s = 0.1
    await rig.run(run_backup())
    copying: list[JobProgress] = [
        m.data for m in rig.sink.of(None, "job.progress") if m.data.phase == "copying"
    ]
    assert copying
    done, total = copying[0].done, copying[0].total
    assert done is not None
    assert total is not None
    assert copying[0].percent == pytest.approx(100.0 * done / total)


# -- never twice --------------------------------------------------------------------------------


async def test_a_redelivered_finished_job_is_reported_again_not_run_again(rig: Rig) -> None:
    command = run_backup()
    await rig.run(command)
    first = [m.id for m in rig.sink.of(command.data.job_id, "backup.completed", "job.succeeded")]
    rig.sink.messages.clear()

    await rig.run(command)  # redelivery
    await rig.run(run_backup(job_id=command.data.job_id))  # the planner re-sent it

    assert rig.engine.calls == [("backup", "orders")]
    again = [m.id for m in rig.sink.messages]
    assert again == first * 2  # same ids: JetStream drops them within its window


async def test_a_second_delivery_of_a_job_in_hand_waits_for_its_outcome(rig: Rig) -> None:
    rig.engine.gate = asyncio.Event()
    command = run_backup()
    first = asyncio.create_task(rig.run(command))
    await wait_until(lambda: rig.engine.calls)
    second = asyncio.create_task(rig.run(command))
    await asyncio.sleep(0.05)
    assert not second.done()
    rig.engine.gate.set()
    await asyncio.gather(first, second)
    assert rig.engine.calls == [("backup", "orders")]
    assert rig.sink.types(command.data.job_id).count("job.succeeded") == 2  # same id twice


async def test_a_job_left_running_is_reported_interrupted_at_start(rig: Rig) -> None:
    command = run_backup()
    assert rig.journal is not None
    rig.journal.accept(command.data.job_id, Operation.BACKUP, command)
    rig.journal.running(command.data.job_id)

    runner = rig.new_runner()  # the executor restarts
    await runner.recover()

    assert rig.sink.types(command.data.job_id) == ["backup.failed", "job.failed"]
    failed = failure_of(rig, command.data.job_id)
    assert failed.interrupted is True
    assert failed.failure.code == errors.INTERRUPTED
    assert rig.sink.messages[0].causation_id == command.id  # correlation survives the restart

    rig.sink.messages.clear()
    await runner.run(command, rig.keepalive)  # the unacked command comes back
    assert rig.engine.calls == []  # never run after an interruption: the planner decides
    assert rig.sink.types(command.data.job_id) == ["backup.failed", "job.failed"]


async def test_a_job_only_accepted_before_a_restart_runs_on_redelivery(rig: Rig) -> None:
    command = run_backup()
    assert rig.journal is not None
    rig.journal.accept(command.data.job_id, Operation.BACKUP, command)
    runner = rig.new_runner()
    await runner.recover()
    assert rig.sink.messages == []
    await runner.run(command, rig.keepalive)
    assert rig.engine.calls == [("backup", "orders")]
    assert rig.sink.types(command.data.job_id)[-1] == "job.succeeded"


async def test_an_unpublished_outcome_is_published_at_start(rig: Rig) -> None:
    command = run_backup()
    rig.sink.down = True
    with pytest.raises(RetryableError):
        await rig.run(command)  # NATS down: job.accepted cannot go out
    rig.sink.down = False
    await rig.run(command)  # redelivery: runs (it never started)
    assert rig.engine.calls == [("backup", "orders")]

    other = run_backup(job_id=uuid.uuid4(), backup_id="b2")
    rig.engine.gate = asyncio.Event()
    task = asyncio.create_task(rig.run(other))
    await wait_until(lambda: len(rig.engine.calls) == 2)
    rig.sink.down = True
    rig.engine.gate.set()
    with pytest.raises(RetryableError):
        await task  # outcome journaled, not published: nak
    assert rig.journal is not None
    record = rig.journal.get(other.data.job_id)
    assert record is not None
    assert record.state is JobState.SUCCEEDED
    assert record.published_at is None

    rig.sink.down = False
    runner = rig.new_runner()
    await runner.recover()
    assert rig.sink.types(other.data.job_id)[-2:] == ["backup.completed", "job.succeeded"]
    assert [m.id for m in rig.sink.messages[-2:]] == [e.id for e in record.events]


# -- refusals -------------------------------------------------------------------------------------


async def test_a_database_not_hosted_here_is_refused_terminally_and_reported(rig: Rig) -> None:
    command = run_backup("elsewhere")
    with pytest.raises(TerminalError, match="not hosted on node node-1") as caught:
        await rig.run(command)
    assert caught.value.code == errors.NOT_HOSTED
    assert rig.sink.types(command.data.job_id) == ["backup.failed", "job.failed"]
    assert failure_of(rig, command.data.job_id).failure.code == errors.NOT_HOSTED
    with pytest.raises(TerminalError):
        await rig.run(command)  # a redelivery is refused the same way
    assert rig.engine.calls == []


async def test_a_database_whose_engine_has_no_driver_is_refused(tmp_path: Path) -> None:
    rig = make_rig(tmp_path, databases=[hosted("ledger", Engine.ORACLE)])
    command = run_backup("ledger", engine=Engine.ORACLE)
    with pytest.raises(TerminalError, match="no oracle engine") as caught:
        await rig.run(command)
    assert caught.value.code == errors.NO_ENGINE
    assert failure_of(rig, command.data.job_id).failure.code == errors.NO_ENGINE
    rig.close()


class BackupsOnly:
    """An engine that declares describing and backups only: no restore, no verification."""

    def __init__(self, inner: FakeEngine) -> None:
        self.inner = inner

    async def describe(self, db: object) -> object:
        return await self.inner.describe(db)  # type: ignore[arg-type]

    async def backup(self, *args: object, **kwargs: object) -> object:
        return await self.inner.backup(*args, **kwargs)  # type: ignore[arg-type]


async def test_an_operation_the_engine_cannot_do_is_refused_before_it_is_accepted(
    rig: Rig,
) -> None:
    rig.engine = BackupsOnly(FakeEngine())  # type: ignore[assignment]
    runner = rig.new_runner()
    command = run_verify()
    with pytest.raises(TerminalError, match="cannot verify") as caught:
        await runner.run(command, rig.keepalive)
    assert caught.value.code == errors.UNSUPPORTED
    assert rig.sink.types(command.data.job_id) == ["job.failed"]  # never job.accepted
    assert failure_of(rig, command.data.job_id).failure.code == errors.UNSUPPORTED


async def test_a_job_id_reused_for_another_operation_is_refused(rig: Rig) -> None:
    command = run_backup()
    await rig.run(command)
    with pytest.raises(TerminalError, match="job ids are never reused"):
        await rig.run(run_verify(job_id=command.data.job_id))
    assert rig.engine.calls == [("backup", "orders")]


# -- failures, cancel, timeout --------------------------------------------------------------------


async def test_an_engine_failure_is_reported_with_its_own_code(rig: Rig) -> None:
    rig.engine.failure = Failure(reason="pg_basebackup exited 1", code="TM-PG-BASEBACKUP")
    command = run_backup()
    await rig.run(command)  # a failed job is still a handled command: ack
    assert rig.sink.types(command.data.job_id)[-2:] == ["backup.failed", "job.failed"]
    failed = failure_of(rig, command.data.job_id)
    assert failed.failure.code == "TM-PG-BASEBACKUP"
    assert failed.interrupted is False
    assert rig.journal is not None
    record = rig.journal.get(command.data.job_id)
    assert record is not None
    assert record.state is JobState.FAILED


async def test_cancel_stops_a_running_job(rig: Rig) -> None:
    rig.engine.gate = asyncio.Event()
    command = run_backup()
    task = asyncio.create_task(rig.run(command))
    await wait_until(lambda: rig.engine.calls)
    assert rig.runner.cancel(command.data.job_id, "operator asked") is True
    await task
    assert rig.engine.cancelled == [("backup", "orders")]
    failed = failure_of(rig, command.data.job_id)
    assert failed.failure.code == errors.CANCELLED
    assert "operator asked" in failed.failure.reason
    assert rig.journal is not None
    record = rig.journal.get(command.data.job_id)
    assert record is not None
    assert record.state is JobState.CANCELLED


async def test_cancel_of_a_waiting_job_never_starts_it(rig: Rig) -> None:
    rig.engine.gate = asyncio.Event()
    first, second = run_backup(), run_backup(backup_id="b2")
    one = asyncio.create_task(rig.run(first))
    await wait_until(lambda: rig.engine.calls)
    two = asyncio.create_task(rig.run(second))
    await wait_until(lambda: "job.accepted" in rig.sink.types(second.data.job_id))
    assert rig.runner.waiting == 1
    assert rig.runner.running == 1
    assert rig.runner.cancel(second.data.job_id, "not needed") is True
    await two
    rig.engine.gate.set()
    await one
    assert rig.engine.calls == [("backup", "orders")]
    assert failure_of(rig, second.data.job_id).failure.code == errors.CANCELLED


async def test_cancel_of_an_unknown_job_does_nothing(rig: Rig) -> None:
    assert rig.runner.cancel(uuid.uuid4(), "whatever") is False


async def test_a_job_past_its_timeout_is_stopped_and_failed(tmp_path: Path) -> None:
    rig = make_rig(tmp_path, options={"job_timeout_s": 0.2})
    rig.engine.gate = asyncio.Event()  # never set
    command = run_backup()
    await rig.run(command)
    assert rig.engine.cancelled == [("backup", "orders")]
    assert failure_of(rig, command.data.job_id).failure.code == errors.TIMEOUT
    rig.close()


async def test_a_stopping_executor_reports_its_running_job_interrupted(rig: Rig) -> None:
    rig.engine.gate = asyncio.Event()
    command = run_backup()
    handler = asyncio.create_task(rig.run(command))
    await wait_until(lambda: rig.engine.calls)
    handler.cancel()  # the consumer's drain timeout
    with pytest.raises(asyncio.CancelledError):
        await handler
    assert rig.engine.cancelled == [("backup", "orders")]
    failed = failure_of(rig, command.data.job_id)
    assert failed.interrupted is True
    assert rig.journal is not None
    record = rig.journal.get(command.data.job_id)
    assert record is not None
    assert record.state is JobState.INTERRUPTED


async def test_an_unexpected_engine_error_is_a_failure(rig: Rig) -> None:
    class Broken(FakeEngine):
        async def backup(self, *args: object, **kwargs: object) -> object:  # type: ignore[override]
            raise OSError("disk on fire")

    rig.engine = Broken()
    runner = rig.new_runner()
    command = run_backup()
    await runner.run(command, rig.keepalive)
    failed = failure_of(rig, command.data.job_id)
    assert failed.failure.code == errors.ERROR
    assert "disk on fire" in failed.failure.reason


# -- concurrency ----------------------------------------------------------------------------------


async def test_one_operation_at_a_time_per_database(rig: Rig) -> None:
    rig.engine.sleep_s = 0.1
    commands = [run_backup(backup_id=f"b{i}") for i in range(3)]
    await asyncio.gather(*(rig.run(c) for c in commands))
    assert rig.engine.max_active["orders"] == 1
    assert len(rig.engine.finished) == 3
    waited = [m for m in rig.sink.of(None, "job.progress") if m.data.phase == "waiting"]
    assert len(waited) == 2


async def test_different_databases_run_side_by_side_up_to_the_node_limit(tmp_path: Path) -> None:
    dbs = [hosted(f"db{i}") for i in range(4)]
    rig = make_rig(tmp_path, databases=dbs, options={"concurrency": 2})
    rig.engine.sleep_s = 0.1
    await asyncio.gather(*(rig.run(run_backup(f"db{i}")) for i in range(4)))
    assert rig.engine.max_active["*"] == 2
    assert len(rig.engine.finished) == 4
    rig.close()


async def test_accepted_names_this_node(rig: Rig) -> None:
    command = run_backup()
    await rig.run(command)
    accepted = rig.sink.of(command.data.job_id, "job.accepted")[0]
    assert accepted.data.node == NODE
    assert accepted.data.command_id == command.id


async def test_wait_idle_lets_a_cancelled_handler_finish_reporting(rig: Rig) -> None:
    rig.engine.gate = asyncio.Event()
    command = run_backup()
    handler = asyncio.create_task(rig.run(command))
    await wait_until(lambda: rig.engine.calls)
    handler.cancel()  # as Consumer.stop does past its drain timeout, without awaiting
    await rig.runner.wait_idle(5.0)
    assert rig.runner.running == 0
    assert failure_of(rig, command.data.job_id).interrupted is True
    with pytest.raises(asyncio.CancelledError):
        await handler
