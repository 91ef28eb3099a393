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
    BackupCompleted,
    BackupFailed,
    BackupResult,
    BackupVerified,
    Failure,
    JobAccepted,
    JobFailed,
    JobResult,
    JobSucceeded,
    Operation,
    RestoreCompleted,
    RestoreFailed,
    RestoreResult,
    RunBackup,
    RunRestore,
    RunVerify,
    VerifyResult,
)
from services.engines.base import BackupOutcome

JobCommand = RunBackup | RunRestore | RunVerify


def operation_of(command: JobCommand) -> Operation:
    if isinstance(command, RunBackup):
        return Operation.BACKUP
    if isinstance(command, RunRestore):
        return Operation.RESTORE
    return Operation.VERIFY


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
        job = JobSucceeded(
            job_id=self.data.job_id,
            operation=operation_of(self.data),
            result=result,
            started_at=started_at,
            finished_at=finished_at,
        )
        return [self._wrap(domain, finished_at), self._wrap(job, finished_at)]

    def failed(
        self, failure: Failure, *, finished_at: datetime, interrupted: bool = False
    ) -> list[Envelope[Any]]:
        """The domain event (none for a verification that could not run: `backup.verified`
        reports a check, and nothing was checked), then `job.failed`."""
        events: list[Envelope[Any]] = []
        data = self.data
        if isinstance(data, RunBackup):
            events.append(
                self._wrap(
                    BackupFailed(backup_id=data.backup_id, job_id=data.job_id, failure=failure),
                    finished_at,
                )
            )
        elif isinstance(data, RunRestore):
            events.append(
                self._wrap(RestoreFailed(restore_id=data.restore_id, failure=failure), finished_at)
            )
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
    ) -> Payload:
        data = self.data
        if isinstance(data, RunBackup):
            if backup is None or not isinstance(result, BackupResult):
                raise TypeError("a backup succeeds with a BackupOutcome")
            return BackupCompleted(
                backup_id=backup.backup_id,
                job_id=data.job_id,
                spec=data.spec,
                parent_backup_id=data.parent_backup_id,
                lineage=backup.lineage,
                start=backup.start,
                consistent_at=backup.consistent_at,
                started_at=backup.started_at,
                completed_at=backup.completed_at,
                size_bytes=backup.size_bytes,
                piece_count=backup.piece_count,
                manifest_key=backup.manifest_key,
            )
        if isinstance(data, RunRestore):
            if not isinstance(result, RestoreResult):
                raise TypeError("a restore succeeds with a RestoreResult")
            return RestoreCompleted(
                restore_id=data.restore_id,
                target=data.target,
                reached=result.reached,
                reached_time=result.reached_time,
                lineage=result.lineage,
            )
        if not isinstance(result, VerifyResult):
            raise TypeError("a verification succeeds with a VerifyResult")
        return BackupVerified(
            backup_id=result.backup_id,
            job_id=data.job_id,
            ok=result.ok,
            checks=[c for c in result.checks if c],
            verified_at=finished_at,
        )


def backup_result(outcome: BackupOutcome) -> BackupResult:
    return BackupResult(
        backup_id=outcome.backup_id,
        manifest_key=outcome.manifest_key,
        size_bytes=outcome.size_bytes,
        consistent_at=outcome.consistent_at,
    )
