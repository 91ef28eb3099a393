"""Running jobs: one engine operation per command, journaled before and after, reported always.

A command's way through `JobRunner.run`:

    journal has the job finished ──────────────▶ publish the recorded events again, ack
    journal has it running (nobody here runs it) ▶ interrupted: report, ack
    database not hosted / no engine ───────────▶ journal failed, report, dead-letter (terminal)
    otherwise: journal accepted ─▶ job.accepted ─▶ wait for the database, then a node slot
               ─▶ journal running ─▶ engine (timeout, cancel) ─▶ journal the outcome and its
               events in one transaction ─▶ publish them ─▶ ack

Order of waiting: first the database (one operation at a time per database, FIFO), then one of
`concurrency` node slots, so a job blocked on its database never holds a slot that a job of
another database could use. A waiting command is a handler still running, so the consumer's
`in_progress()` timer keeps its delivery alive; at most `queue_limit` commands are held at
once, the rest stay in the stream.

Journal writes are synchronous (one fsync, milliseconds, a few per job): a job's state on disk
then never lags behind what the event loop has already done, even when a cancellation lands in
the middle of a step.

Shutdown: when the consumer's drain timeout ends a handler, its job is cancelled (the engine
kills its children), journaled `interrupted` and reported, best effort; the unacknowledged
command comes back after the restart and finds the recorded failure. A job still waiting its
turn is left `accepted`: it never started, so the redelivery simply runs it.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

from schemas import Envelope, utcnow
from schemas.messages import Failure, JobResult, MigrationStep, Operation
from services.blobstore import BlobStore
from services.bus import RetryableError, TerminalError
from services.engines.base import BackupOutcome, EngineError
from services.engines.base import Engine as EngineDriver
from services.engines.registry import EngineRegistry, EngineUnavailable
from services.executor import errors
from services.executor.events import Events, JobCommand, operation_of
from services.executor.journal import JobRecord, JobState, Journal
from services.executor.operations import Call, can_run, spec_of
from services.executor.progress import JobReporter, KeepAlive
from services.executor.settings import ExecutorSettings, HostedDatabase
from services.telemetry import metrics, tracer

log = logging.getLogger("tidemark.executor")

Publish = Callable[[Envelope[Any]], Awaitable[object]]


def observe_job(record: JobRecord) -> JobRecord:
    """Count a job's end once, where it is journaled (a republished outcome is not counted)."""
    attributes = {"operation": record.operation.value, "outcome": record.state.value}
    if record.finished_at is not None:
        seconds = (record.finished_at - record.accepted_at).total_seconds()
        metrics().job_duration.record(max(0.0, seconds), attributes)
    if record.state is not JobState.SUCCEEDED:
        code = record.failure.code if record.failure is not None else "unknown"
        metrics().job_failures.add(1, {"operation": record.operation.value, "code": code})
    return record


@dataclass
class _Active:
    """A job in this process's hands, from the first delivery's arrival to its outcome."""

    job_id: uuid.UUID
    database: str
    done: asyncio.Future[None]
    work: asyncio.Task[tuple[JobResult, BackupOutcome | None]] | None = None
    cancel_reason: str | None = None
    started: bool = False


@dataclass
class JobRunner:
    """Runs the jobs of one executor. `run` is the handler body; `cancel` serves `job.cancel`."""

    settings: ExecutorSettings
    journal: Journal
    engines: EngineRegistry
    store: BlobStore
    prefix: str
    publish: Publish
    node: str
    source: str
    scratch_dir: Path
    _active: dict[uuid.UUID, _Active] = field(default_factory=dict, init=False)
    _locks: dict[str, asyncio.Lock] = field(default_factory=dict, init=False)
    _slots: asyncio.Semaphore = field(init=False)

    def __post_init__(self) -> None:
        self._slots = asyncio.Semaphore(self.settings.concurrency)

    # -- what the node heartbeat reports ------------------------------------------------------

    @property
    def running(self) -> int:
        return sum(1 for a in self._active.values() if a.started)

    @property
    def waiting(self) -> int:
        return sum(1 for a in self._active.values() if not a.started)

    # -- start-up -----------------------------------------------------------------------------

    async def recover(self) -> None:
        """Report every job a previous process left running as interrupted, and publish any
        outcome a crash left unconfirmed. Never a silent success: the engine's effect is unknown,
        so the planner gets a failure and retries with a new job id."""
        for record in self.journal.in_state(JobState.RUNNING):
            log.warning("job %s was running when the executor stopped: interrupted", record.job_id)
            self._interrupt(record, "the executor restarted while the job ran")
        before = utcnow() - timedelta(days=self.settings.journal_keep_days)
        if pruned := self.journal.prune(before):
            log.info("forgot %d finished jobs older than %s", pruned, before)
        for record in self.journal.unpublished():
            try:
                await self._publish_outcome(record)
            except RetryableError as exc:  # NATS not there yet: the redelivery publishes it
                log.warning("%s", exc.reason)

    # -- commands -----------------------------------------------------------------------------

    async def run(self, message: Envelope[Any], keepalive: KeepAlive) -> None:
        """Handle one delivery of a job command (backup, restore, verify, migration step).
        Returns when the job's outcome is journaled and published (ack); raises
        `TerminalError` for a refusal and `RetryableError` when the outcome could not be
        published yet (nak: the redelivery publishes the recorded events)."""
        command: JobCommand = message.data
        if message.database is None:
            raise TerminalError(
                f"{message.type} {message.id} names no database: it cannot be run or reported"
            )
        job_id = command.job_id
        other = self._active.get(job_id)
        if other is not None:
            # The same job again (a redelivery, or the planner re-sent it) while it is in hand:
            # wait for its outcome (the consumer keeps this delivery alive), then answer with it.
            log.info("job %s is already in hand; waiting for its outcome", job_id)
            await asyncio.shield(other.done)
            await self.run(message, keepalive)
            return
        active = _Active(job_id, message.database.uid, asyncio.get_running_loop().create_future())
        self._active[job_id] = active
        operation = operation_of(command).value
        # The job's events are published inside this span (the progress pump and the engine
        # are tasks created in it and inherit it), so they continue the planner's trace.
        try:
            with tracer().start_as_current_span(
                f"job {operation}",
                attributes={
                    "tidemark.job_id": str(job_id),
                    "tidemark.operation": operation,
                    "tidemark.database": message.database.uid,
                },
            ):
                await self._run(message, command, active, keepalive)
        finally:
            del self._active[job_id]
            if not active.done.done():
                active.done.set_result(None)

    async def wait_idle(self, timeout: float) -> None:
        """Wait (bounded) until no job is in hand. The consumer cancels handlers past its drain
        timeout without waiting for them; their jobs are still being journaled and reported
        interrupted, so the journal must not be closed under them."""
        pending = [a.done for a in self._active.values()]
        if pending:
            await asyncio.wait(pending, timeout=timeout)

    def cancel(self, job_id: uuid.UUID, reason: str) -> bool:
        """Cancel a job in hand (running or waiting); False if there is none."""
        active = self._active.get(job_id)
        if active is None:
            return False
        active.cancel_reason = reason
        if active.work is not None:
            active.work.cancel()
        return True

    async def _run(
        self, message: Envelope[Any], command: JobCommand, active: _Active, keepalive: KeepAlive
    ) -> None:
        operation = operation_of(command)
        record = self.journal.get(command.job_id)
        if record is not None:
            _check_same_job(record, operation, message)
            if record.state.finished:
                log.info("job %s already %s; reporting it again", record.job_id, record.state)
                await self._publish_outcome(record)
                return
            if record.state is JobState.RUNNING:
                # Only a journal shared with a dead process gets here (start-up settles the rest).
                await self._publish_outcome(
                    self._interrupt(record, "no executor was running the job any more")
                )
                return
        db = self._hosted(command, active.database)
        if db is None:
            hosted = ", ".join(d.uid for d in self.settings.databases) or "none"
            await self._refuse(
                message,
                operation,
                errors.NOT_HOSTED,
                f"database {active.database} is not hosted on node {self.node} (hosted: {hosted})",
            )
            return
        try:
            driver = self.engines.get(db.engine)
        except EngineUnavailable as exc:
            await self._refuse(message, operation, errors.NO_ENGINE, exc.reason)
            return
        spec = spec_of(command)
        if not can_run(driver, spec):
            await self._refuse(
                message,
                operation,
                errors.UNSUPPORTED,
                f"the {db.engine.value} engine cannot {spec.action} "
                f"(it does not provide {spec.capability.__name__})",
            )
            return
        record = self.journal.accept(command.job_id, operation, message)
        events = Events(message, source=self.source)
        await self._publish_or_retry(
            [events.accepted(node=self.node, at=record.accepted_at)], job_id=command.job_id
        )
        reporter = JobReporter(
            events,
            publish=self.publish,
            keepalive=keepalive,
            interval_s=self.settings.progress_interval_s,
        )
        work = asyncio.create_task(
            self._work(active, db, driver, command, reporter), name=f"job {command.job_id}"
        )
        active.work = work
        if active.cancel_reason is not None:
            work.cancel()  # cancelled while job.accepted was being published
        try:
            await asyncio.wait({work})
        except asyncio.CancelledError:
            await self._shutdown(active, work, events)
            raise
        await reporter.flush()
        record = self._record_outcome(active, work, events)
        await self._publish_outcome(record)

    def _hosted(self, command: JobCommand, uid: str) -> HostedDatabase | None:
        """The database a job runs for: the envelope's. A migration step on the target's side
        runs for the target when this node declares it, else for the source when the target is
        built on the source's own node (the engine reads the target from the command)."""
        if isinstance(command, MigrationStep) and command.SIDE == "target":
            target = self.settings.database(command.target)
            if target is not None:
                return target
        return self.settings.database(uid)

    async def _work(
        self,
        active: _Active,
        db: HostedDatabase,
        driver: EngineDriver,
        command: JobCommand,
        reporter: JobReporter,
    ) -> tuple[JobResult, BackupOutcome | None]:
        # One job at a time per database; a migration's steps queue per migration instead (the
        # saga sends one at a time), so a lag reading never waits behind the source's backup.
        key = f"migration {command.migration_id}" if isinstance(command, MigrationStep) else db.uid
        lock = self._locks.setdefault(key, asyncio.Lock())
        if lock.locked():
            await reporter.progress("waiting", message=f"another job is running on {db.uid}")
        async with lock:
            if self._slots.locked():
                await reporter.progress("waiting", message=f"all job slots on {self.node} busy")
            async with self._slots:
                self.journal.running(command.job_id)
                active.started = True
                engine = asyncio.create_task(self._call(driver, db, command, reporter))
                try:
                    done, _ = await asyncio.wait({engine}, timeout=self.settings.job_timeout_s)
                except asyncio.CancelledError:
                    await self._stop_engine(engine, command.job_id)
                    raise
                if not done:
                    await self._stop_engine(engine, command.job_id)
                    raise errors.JobTimeout
                return engine.result()

    async def _call(
        self, driver: EngineDriver, db: HostedDatabase, command: JobCommand, ctx: JobReporter
    ) -> tuple[JobResult, BackupOutcome | None]:
        call = Call(store=self.store, prefix=self.prefix, scratch_dir=self.scratch_dir, ctx=ctx)
        return await spec_of(command).run(driver, db, command, call)

    async def _stop_engine(self, engine: asyncio.Task[Any], job_id: uuid.UUID) -> None:
        """Cancel the engine and give it `cancel_grace_s` to kill its children and clean up."""
        engine.cancel()
        await asyncio.wait({engine}, timeout=self.settings.cancel_grace_s)
        if not engine.done():
            log.error(
                "job %s: the engine ignored cancellation for %.0fs; its work may still be "
                "running and is abandoned",
                job_id,
                self.settings.cancel_grace_s,
            )
        elif not engine.cancelled() and engine.exception() is not None:
            log.info("job %s: the engine stopped with %r", job_id, engine.exception())

    # -- outcomes -----------------------------------------------------------------------------

    def _record_outcome(
        self,
        active: _Active,
        work: asyncio.Task[tuple[JobResult, BackupOutcome | None]],
        events: Events,
    ) -> JobRecord:
        """Journal how the job ended, with the events that say so, in one transaction."""
        job_id = active.job_id
        finished_at = utcnow()
        if work.cancelled():
            reason = active.cancel_reason or "cancelled"
            return self._fail(job_id, events, errors.cancelled(reason), JobState.CANCELLED)
        exc = work.exception()
        if isinstance(exc, errors.JobTimeout):
            return self._fail(job_id, events, errors.timed_out(self.settings.job_timeout_s))
        if isinstance(exc, EngineError):
            return self._fail(job_id, events, exc.failure)
        if exc is not None:
            log.error("job %s failed unexpectedly", job_id, exc_info=exc)
            return self._fail(job_id, events, errors.unexpected(exc))
        result, backup = work.result()
        record = self.journal.get(job_id)
        assert record is not None, job_id
        assert record.started_at is not None, job_id
        try:
            outcome = events.succeeded(
                result, started_at=record.started_at, finished_at=finished_at, backup=backup
            )
        except (TypeError, ValueError) as exc:  # pydantic's ValidationError is a ValueError
            # The engine says it succeeded with something the contract refuses: a bug to fix,
            # reported as a failure rather than a success nobody can use.
            failure = Failure(
                reason=f"the engine's result breaks the contract: {exc}"[:2000],
                code=errors.ERROR,
                retryable=False,
            )
            return self._fail(job_id, events, failure)
        return observe_job(
            self.journal.finish(
                job_id, JobState.SUCCEEDED, events=outcome, finished_at=finished_at, result=result
            )
        )

    def _fail(
        self,
        job_id: uuid.UUID,
        events: Events,
        failure: Failure,
        state: JobState = JobState.FAILED,
        *,
        interrupted: bool = False,
    ) -> JobRecord:
        finished_at = utcnow()
        outcome = events.failed(failure, finished_at=finished_at, interrupted=interrupted)
        log.warning("job %s %s: %s", job_id, state.value, failure.reason)
        return observe_job(
            self.journal.finish(
                job_id, state, events=outcome, finished_at=finished_at, failure=failure
            )
        )

    def _interrupt(self, record: JobRecord, why: str) -> JobRecord:
        events = Events(record.command, source=self.source)
        return self._fail(
            record.job_id,
            events,
            errors.interrupted(why),
            JobState.INTERRUPTED,
            interrupted=True,
        )

    async def _refuse(
        self, message: Envelope[Any], operation: Operation, code: str, reason: str
    ) -> None:
        failure = Failure(reason=reason, code=code, retryable=False)
        finished_at = utcnow()
        events = Events(message, source=self.source).failed(failure, finished_at=finished_at)
        record = observe_job(
            self.journal.finish(
                message.data.job_id,
                JobState.FAILED,
                events=events,
                finished_at=finished_at,
                failure=failure,
                refused=(operation, message),
            )
        )
        log.warning("job %s refused: %s", record.job_id, reason)
        await self._publish_outcome(record)

    async def _shutdown(
        self,
        active: _Active,
        work: asyncio.Task[tuple[JobResult, BackupOutcome | None]],
        events: Events,
    ) -> None:
        """The handler itself is being cancelled (service stopping): stop the job and, if the
        engine had started, journal and report it interrupted."""
        work.cancel()
        await asyncio.wait({work}, timeout=self.settings.cancel_grace_s)
        record = self.journal.get(active.job_id)
        if record is None or record.state is not JobState.RUNNING:
            return  # never started: stays accepted, and the redelivery runs it
        record = self._interrupt(record, "the executor stopped while the job ran")
        try:
            await self._publish_outcome(record)
        except (RetryableError, TerminalError) as exc:
            log.warning("job %s: %s", active.job_id, exc.reason)

    async def _publish_outcome(self, record: JobRecord) -> None:
        """Publish a finished job's recorded events (same ids every time) and note it; a refusal
        is then raised again as terminal, so the command is dead-lettered on every delivery."""
        await self._publish_or_retry(record.events, job_id=record.job_id)
        if record.published_at is None:
            self.journal.published(record.job_id)
        if errors.is_refusal(record.failure):
            assert record.failure is not None
            raise TerminalError(record.failure.reason, code=record.failure.code)

    async def _publish_or_retry(self, messages: list[Envelope[Any]], *, job_id: uuid.UUID) -> None:
        for message in messages:
            try:
                await self.publish(message)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                raise RetryableError(
                    f"job {job_id}: {message.type} not published yet ({exc}); the journal keeps "
                    "it and the redelivery publishes it"
                ) from exc


def _check_same_job(record: JobRecord, operation: Operation, message: Envelope[Any]) -> None:
    database = message.database.uid if message.database is not None else None
    if record.operation is not operation or record.database != database:
        raise TerminalError(
            f"job id {record.job_id} is journaled for a {record.operation.value} of "
            f"{record.database}, not a {operation.value} of {database}: job ids are never reused",
            code=errors.MISMATCH,
        )
