"""What an engine tells the executor while it works: the executor's `JobContext`.

An engine may report progress as often as it likes (every block copied, say); what reaches the
bus is bounded: a `job.progress` (and, for a restore, a `restore.progress`) for every new phase,
and within a phase at most one per `progress_interval_s`, the latest. Publishing happens in a
background pump, so an engine is never slowed by the bus, nor stopped by it: a progress event
that cannot be published is logged and dropped (the outcome events are what count, and those
are journaled). `flush()` lets the pump empty before the outcome is published, so a job's events
stay in order: accepted, progress…, succeeded|failed.

Every report also extends the command's ack deadline (`in_progress()`), at most once a second,
on top of the consumer's own timer.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from schemas import Envelope
from schemas.messages import JobProgress, RestoreProgress, RunRestore
from schemas.messages.common import ProgressUnit
from services.executor.events import Events, operation_of

log = logging.getLogger("tidemark.executor")

Publish = Callable[[Envelope[Any]], Awaitable[object]]
KeepAlive = Callable[[], Awaitable[None]]

_KEEPALIVE_EVERY_S = 1.0


@dataclass(frozen=True)
class _Report:
    phase: str
    done: int | None
    total: int | None
    unit: ProgressUnit | None
    message: str


class JobReporter:
    """One job's `JobContext`."""

    def __init__(
        self,
        events: Events,
        *,
        publish: Publish,
        keepalive: KeepAlive,
        interval_s: float,
    ) -> None:
        self._events = events
        self._publish = publish
        self._keepalive = keepalive
        self._interval_s = interval_s
        self._last_phase: str | None = None
        self._last_sent = float("-inf")
        self._last_keepalive = float("-inf")
        self._queue: deque[_Report] = deque()
        self._pump: asyncio.Task[None] | None = None
        self.phase: str | None = None

    @property
    def job_id(self) -> uuid.UUID:
        return self._events.data.job_id

    async def progress(
        self,
        phase: str,
        *,
        done: int | None = None,
        total: int | None = None,
        unit: ProgressUnit | None = None,
        message: str = "",
    ) -> None:
        now = time.monotonic()
        if now - self._last_keepalive >= _KEEPALIVE_EVERY_S:
            self._last_keepalive = now
            try:
                await self._keepalive()
            except Exception as exc:  # the consumer's own timer keeps trying
                log.debug("in_progress for job %s failed: %s", self.job_id, exc)
        self.phase = phase
        report = _Report(phase, done, total, unit, message[:500])
        if phase != self._last_phase:
            self._queue.append(report)  # every phase change is told
        elif now - self._last_sent >= self._interval_s:
            if self._queue and self._queue[-1].phase == phase:
                self._queue[-1] = report  # still waiting to go: send the latest instead
            else:
                self._queue.append(report)
        else:
            return
        self._last_phase = phase
        self._last_sent = now
        if self._pump is None or self._pump.done():
            self._pump = asyncio.create_task(self._drain(), name=f"progress {self.job_id}")

    async def _drain(self) -> None:
        while self._queue:
            report = self._queue.popleft()
            for message in self._messages(report):
                try:
                    await self._publish(message)
                except asyncio.CancelledError:
                    raise
                except Exception as exc:
                    log.warning("job %s: progress not published: %s", self.job_id, exc)

    def _messages(self, report: _Report) -> list[Envelope[Any]]:
        percent = None
        if report.done is not None and report.total:
            percent = min(100.0, 100.0 * report.done / report.total)
        command = self._events.data
        job = JobProgress(
            job_id=command.job_id,
            operation=operation_of(command),
            phase=report.phase,
            done=report.done,
            total=report.total,
            unit=report.unit,
            percent=percent,
            message=report.message,
        )
        messages = [self._events.wrap(job)]
        if isinstance(command, RunRestore):
            restore = RestoreProgress(
                restore_id=command.restore_id,
                phase=report.phase,
                percent=percent,
                message=report.message,
            )
            messages.append(self._events.wrap(restore))
        return messages

    async def flush(self, timeout: float = 5.0) -> None:
        """Let queued progress go out (bounded), then stop the pump."""
        pump = self._pump
        if pump is None:
            return
        await asyncio.wait({pump}, timeout=timeout)
        if not pump.done():
            pump.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await pump
        self._queue.clear()
