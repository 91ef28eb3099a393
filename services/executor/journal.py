"""The executor's local job journal: one row per job id, so a job is never run twice and never
ends in silence, whatever kills the process.

SQLite in WAL mode with `synchronous=FULL`: a transition is on disk before the step after it
begins. The row also keeps the command envelope (so events written after a restart carry its
correlation) and, once the job is finished, the outcome envelopes themselves: a redelivered
command republishes exactly those bytes, with the same ids, which JetStream drops inside its
duplicate window and consumers dedupe by id after it.

| journal says | the world may be                       | when the command comes again / at start  |
|--------------|----------------------------------------|------------------------------------------|
| (no row)     | nothing happened                       | run it                                   |
| accepted     | job.accepted published; engine never   | run it (job.accepted again, same id)     |
|              | started (waiting its turn)             |                                          |
| running      | the engine did some, all or none       | at start: interrupted (below)            |
| succeeded    | outcome events published, or not yet   | publish the recorded events again, ack   |
| failed       | (same)                                 | (same); a refusal is dead-lettered again |
| cancelled    | (same)                                 | (same)                                   |
| interrupted  | the engine's effect is unknown         | publish the recorded failure again, ack  |

`published_at` is set once JetStream has acknowledged every outcome event; start-up publishes
whatever a crash left unconfirmed.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from pathlib import Path
from typing import Any

from schemas import Envelope, decode, utcnow
from schemas.messages import Failure, JobResult, Operation
from services.executor.operations import BY_RESULT_KIND
from services.runtime.phases import IllegalTransition, Transitions


class JobState(StrEnum):
    """Where one job is. The last four are final: a finished job's outcome is a fact already
    told to the planner, so nothing may rewrite it (a retry is a new job with a new id)."""

    ACCEPTED = "accepted"
    """Journaled and announced (`job.accepted`); waiting for its database and a slot. The engine
    has not been called, so a restart may simply run it."""

    RUNNING = "running"
    """The engine was called. Written before the call, so a crash from here on is known."""

    SUCCEEDED = "succeeded"
    """The engine returned a result; its effect is durable (engines make it so before returning)."""

    FAILED = "failed"
    """The engine failed or timed out, or the command was refused (see `errors.py`)."""

    CANCELLED = "cancelled"
    """A `job.cancel` stopped it; the engine was cancelled and cleaned up."""

    INTERRUPTED = "interrupted"
    """The executor stopped or died while the engine ran. Never a silent success: the outcome
    is unknown, so it is reported as a failure (`interrupted=true`)."""

    @property
    def finished(self) -> bool:
        return self in FINISHED


FINISHED = frozenset(
    {JobState.SUCCEEDED, JobState.FAILED, JobState.CANCELLED, JobState.INTERRUPTED}
)

_S = JobState
_TABLE: dict[JobState | None, frozenset[JobState]] = {
    None: frozenset({_S.ACCEPTED, _S.FAILED}),  # FAILED: refused before it was accepted
    _S.ACCEPTED: frozenset({_S.RUNNING, _S.CANCELLED, _S.FAILED}),
    _S.RUNNING: frozenset({_S.SUCCEEDED, _S.FAILED, _S.CANCELLED, _S.INTERRUPTED}),
    _S.SUCCEEDED: frozenset(),
    _S.FAILED: frozenset(),
    _S.CANCELLED: frozenset(),
    _S.INTERRUPTED: frozenset(),
}
"""The only moves a job can make. Anything else is a bug, refused by `Journal`."""
TRANSITIONS = Transitions(_TABLE)


_RESULTS = BY_RESULT_KIND


@dataclass(frozen=True, slots=True)
class JobRecord:
    """One journal row."""

    job_id: uuid.UUID
    command_id: uuid.UUID
    operation: Operation
    database: str
    command: Envelope[Any]
    state: JobState
    result: JobResult | None
    failure: Failure | None
    events: list[Envelope[Any]]
    accepted_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    published_at: datetime | None


_SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    job_id        TEXT PRIMARY KEY,
    command_id    TEXT NOT NULL,
    operation     TEXT NOT NULL,
    database      TEXT NOT NULL,
    command       TEXT NOT NULL,
    state         TEXT NOT NULL,
    result        TEXT,
    failure       TEXT,
    events        TEXT NOT NULL DEFAULT '[]',
    accepted_at   TEXT NOT NULL,
    started_at    TEXT,
    finished_at   TEXT,
    published_at  TEXT,
    updated_at    TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS jobs_by_state ON jobs (state);
"""

_COLUMNS = (
    "job_id, command_id, operation, database, command, state, result, failure, events, "
    "accepted_at, started_at, finished_at, published_at"
)


class Journal:
    """The journal file. Thread-safe (one lock), so async callers may use `asyncio.to_thread`."""

    def __init__(self, path: Path) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.executescript(_SCHEMA)

    def close(self) -> None:
        with self._lock:
            self._db.close()

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    # -- reads --------------------------------------------------------------------------------

    def get(self, job_id: uuid.UUID) -> JobRecord | None:
        with self._lock:
            row = self._db.execute(
                f"SELECT {_COLUMNS} FROM jobs WHERE job_id = ?",  # noqa: S608 - our columns
                (str(job_id),),
            ).fetchone()
        return _record(row) if row else None

    def in_state(self, *states: JobState) -> list[JobRecord]:
        marks = ", ".join("?" for _ in states)
        with self._lock:
            rows = self._db.execute(
                f"SELECT {_COLUMNS} FROM jobs WHERE state IN ({marks}) ORDER BY accepted_at",  # noqa: S608
                [s.value for s in states],
            ).fetchall()
        return [_record(r) for r in rows]

    def unpublished(self) -> list[JobRecord]:
        """Finished jobs whose outcome events JetStream has not confirmed."""
        marks = ", ".join("?" for _ in FINISHED)
        with self._lock:
            rows = self._db.execute(
                f"SELECT {_COLUMNS} FROM jobs WHERE published_at IS NULL "  # noqa: S608
                f"AND state IN ({marks}) ORDER BY finished_at",
                [s.value for s in FINISHED],
            ).fetchall()
        return [_record(r) for r in rows]

    # -- transitions --------------------------------------------------------------------------

    def accept(self, job_id: uuid.UUID, operation: Operation, command: Envelope[Any]) -> JobRecord:
        """Record a job taken from a command. Idempotent for a job still `accepted`."""
        database = _database_of(command)
        now = utcnow().isoformat()
        with self._tx() as db:
            current = _state(db, job_id)
            if current is JobState.ACCEPTED:
                pass
            else:
                _check(job_id, current, JobState.ACCEPTED)
                db.execute(
                    "INSERT INTO jobs (job_id, command_id, operation, database, command, state, "
                    "accepted_at, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                    (
                        str(job_id),
                        str(command.id),
                        operation.value,
                        database,
                        command.model_dump_json(),
                        JobState.ACCEPTED.value,
                        now,
                        now,
                    ),
                )
        return self._must(job_id)

    def running(self, job_id: uuid.UUID) -> JobRecord:
        now = utcnow().isoformat()
        with self._tx() as db:
            _check(job_id, _state(db, job_id), JobState.RUNNING)
            db.execute(
                "UPDATE jobs SET state = ?, started_at = ?, updated_at = ? WHERE job_id = ?",
                (JobState.RUNNING.value, now, now, str(job_id)),
            )
        return self._must(job_id)

    def finish(
        self,
        job_id: uuid.UUID,
        state: JobState,
        *,
        events: list[Envelope[Any]],
        finished_at: datetime,
        result: JobResult | None = None,
        failure: Failure | None = None,
        refused: tuple[Operation, Envelope[Any]] | None = None,
    ) -> JobRecord:
        """Record how a job ended and the events that say so, in one transaction.

        `refused` (operation, command) records a job refused before it was ever accepted.
        """
        if state not in FINISHED:
            raise IllegalTransition(f"{job_id}: {state} is not a final state")
        if (state is JobState.SUCCEEDED) != (result is not None) or (result is None) == (
            failure is None
        ):
            raise ValueError(f"{job_id}: a success has a result, anything else a failure")
        when = finished_at.isoformat()
        encoded_events = json.dumps([json.loads(e.model_dump_json()) for e in events])
        with self._tx() as db:
            current = _state(db, job_id)
            _check(job_id, current, state)
            if current is None:
                if refused is None:
                    raise IllegalTransition(f"{job_id}: finishing a job that was never accepted")
                operation, command = refused
                db.execute(
                    "INSERT INTO jobs (job_id, command_id, operation, database, command, state, "
                    "accepted_at, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                    (
                        str(job_id),
                        str(command.id),
                        operation.value,
                        _database_of(command),
                        command.model_dump_json(),
                        state.value,
                        when,
                        when,
                    ),
                )
            db.execute(
                "UPDATE jobs SET state = ?, result = ?, failure = ?, events = ?, finished_at = ?, "
                "updated_at = ? WHERE job_id = ?",
                (
                    state.value,
                    None if result is None else result.model_dump_json(),
                    None if failure is None else failure.model_dump_json(),
                    encoded_events,
                    when,
                    utcnow().isoformat(),
                    str(job_id),
                ),
            )
        return self._must(job_id)

    def published(self, job_id: uuid.UUID) -> None:
        """JetStream acknowledged every outcome event of the job."""
        now = utcnow().isoformat()
        with self._tx() as db:
            db.execute(
                "UPDATE jobs SET published_at = ?, updated_at = ? WHERE job_id = ?",
                (now, now, str(job_id)),
            )

    def prune(self, before: datetime) -> int:
        """Forget finished, published jobs that ended before `before`; returns how many.

        A command is acknowledged long before this (TM_CMD keeps nothing acknowledged), so only a
        planner re-sending a month-old job id could run it again; a bounded file matters more.
        """
        marks = ", ".join("?" for _ in FINISHED)
        with self._tx() as db:
            cursor = db.execute(
                f"DELETE FROM jobs WHERE published_at IS NOT NULL AND finished_at < ? "  # noqa: S608
                f"AND state IN ({marks})",
                [before.isoformat(), *(s.value for s in FINISHED)],
            )
        return int(cursor.rowcount)

    def _must(self, job_id: uuid.UUID) -> JobRecord:
        record = self.get(job_id)
        assert record is not None, job_id
        return record


def _database_of(command: Envelope[Any]) -> str:
    if command.database is None:
        raise ValueError(f"command {command.id} names no database")
    return command.database.uid


def _state(db: sqlite3.Connection, job_id: uuid.UUID) -> JobState | None:
    row = db.execute("SELECT state FROM jobs WHERE job_id = ?", (str(job_id),)).fetchone()
    return JobState(row[0]) if row else None


def _check(job_id: uuid.UUID, current: JobState | None, to: JobState) -> None:
    TRANSITIONS.check(f"job {job_id}", current, to)


def _result(text: str | None) -> JobResult | None:
    if text is None:
        return None
    kind = json.loads(text).get("kind")
    result: JobResult = _RESULTS[kind].model_validate_json(text)
    return result


def _time(value: object) -> datetime | None:
    return None if value is None else datetime.fromisoformat(str(value))


def _record(row: tuple[object, ...]) -> JobRecord:
    (job_id, command_id, operation, database, command, state, result, failure, events) = row[:9]
    accepted_at, started_at, finished_at, published_at = row[9:]
    return JobRecord(
        job_id=uuid.UUID(str(job_id)),
        command_id=uuid.UUID(str(command_id)),
        operation=Operation(str(operation)),
        database=str(database),
        command=decode(str(command).encode()),
        state=JobState(str(state)),
        result=_result(None if result is None else str(result)),
        failure=None if failure is None else Failure.model_validate_json(str(failure)),
        events=[decode(json.dumps(e).encode()) for e in json.loads(str(events))],
        accepted_at=datetime.fromisoformat(str(accepted_at)),
        started_at=_time(started_at),
        finished_at=_time(finished_at),
        published_at=_time(published_at),
    )
