"""The events a job publishes, with ids that make a republish harmless.

Every event except `job.progress`/`restore.progress` gets a deterministic UUIDv7-shaped id:
the top 48 bits are the moment the journal recorded (acceptance, or the end of the job) in Unix
milliseconds, so ids still sort by time; the rest comes from a hash of the job id and the event
type. The outcome envelopes are journaled whole, so a redelivered command republishes the very
same bytes; `job.accepted` is rebuilt from the journal's `accepted_at`, which gives the same id.

Each event is caused by the command (`causation_id` = the command's id) and belongs to its
operation (`correlation_id` = the command's correlation id), and names the command's database.

On success the domain event comes before `job.succeeded`, on failure before `job.failed`: when
the planner sees the job end, the fact the catalog needs is already in the stream.
"""

from __future__ import annotations

import hashlib
import uuid
from datetime import datetime
from typing import Any

from schemas import Envelope, Payload, envelope
from schemas.messages import (
    Failure,
    JobAccepted,
    JobFailed,
    JobResult,
    JobSucceeded,
    MigrationStep,
    Operation,
    RunBackup,
    RunRestore,
    RunVerify,
)
from services.engines.base import BackupOutcome
from services.executor.operations import backup_result, spec_of

__all__ = ["Events", "JobCommand", "backup_result", "event_id", "operation_of"]

JobCommand = RunBackup | RunRestore | RunVerify | MigrationStep


def operation_of(command: JobCommand) -> Operation:
    return spec_of(command).operation


def event_id(job_id: uuid.UUID, event_type: str, at: datetime) -> uuid.UUID:
    """The id of `job_id`'s `event_type` event recorded at `at`: the same every time."""
    digest = int.from_bytes(hashlib.sha256(f"{job_id}|{event_type}".encode()).digest()[:10], "big")
    ms = int(at.timestamp() * 1000) & ((1 << 48) - 1)
    value = ms << 80
    value |= 0x7 << 76  # version 7
    value |= ((digest >> 62) & 0xFFF) << 64  # rand_a: 12 bits of the hash
    value |= 0b10 << 62  # RFC 9562 variant
    value |= digest & ((1 << 62) - 1)  # rand_b: 62 bits of the hash
    return uuid.UUID(int=value)


class Events:
    """Builds one job's envelopes from its command."""

    def __init__(self, command: Envelope[Any], *, source: str) -> None:
        self.command = command
        self.source = source
        self.data: JobCommand = command.data

    def _wrap(self, data: Payload, at: datetime | None) -> Envelope[Any]:
        mid = None if at is None else event_id(self.data.job_id, data.TYPE, at)
        return envelope(data, source=self.source, causation=self.command, message_id=mid)

    def wrap(self, data: Payload) -> Envelope[Any]:
        """A progress event: a fresh id (repeats are harmless and never republished)."""
        return self._wrap(data, None)

    def accepted(self, *, node: str, at: datetime) -> Envelope[JobAccepted]:
        data = JobAccepted(
            job_id=self.data.job_id,
            command_id=self.command.id,
            operation=operation_of(self.data),
            node=node,
        )
        return self._wrap(data, at)

    def succeeded(
        self,
        result: JobResult,
        *,
        started_at: datetime,
        finished_at: datetime,
        backup: BackupOutcome | None = None,
    ) -> list[Envelope[Any]]:
        """The domain event, then `job.succeeded`."""
        domain = self._domain_success(result, finished_at=finished_at, backup=backup)
        events = [] if domain is None else [self._wrap(domain, finished_at)]
        job = JobSucceeded(
            job_id=self.data.job_id,
            operation=operation_of(self.data),
            result=result,
            started_at=started_at,
            finished_at=finished_at,
        )
        return [*events, self._wrap(job, finished_at)]

    def failed(
        self, failure: Failure, *, finished_at: datetime, interrupted: bool = False
    ) -> list[Envelope[Any]]:
        """The domain event (none for a verification that could not run: `backup.verified`
        reports a check, and nothing was checked), then `job.failed`."""
        events: list[Envelope[Any]] = []
        data = self.data
        domain = spec_of(data).failed(data, failure)
        if domain is not None:
            events.append(self._wrap(domain, finished_at))
        job = JobFailed(
            job_id=data.job_id,
            operation=operation_of(data),
            failure=failure,
            interrupted=interrupted,
        )
        events.append(self._wrap(job, finished_at))
        return events

    def _domain_success(
        self, result: JobResult, *, finished_at: datetime, backup: BackupOutcome | None
    ) -> Payload | None:
        return spec_of(self.data).completed(self.data, result, finished_at, backup)
