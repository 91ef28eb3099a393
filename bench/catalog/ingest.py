"""Ingest: every event of the workload through the catalog's real path, timed.

    TM_EVT (nats-server, file storage) ─▶ catalog service process (`catalog-ingest` consumer)
        ─▶ SQLite (WAL, synchronous=FULL) ─▶ in-memory index ─▶ log.indexed, window.changed
        ─▶ ack

The events are published first, untimed, as the archivers and the executor would have (an
envelope each, `Nats-Msg-Id` set). Then the catalog starts on an empty store, and the clock runs
from the moment its durable consumer exists (its first fetch follows at once) until the
consumer's ack floor reaches the last event: every log stored, indexed, announced and
acknowledged. The rate counts logs only; the backups' time is in it.
"""

from __future__ import annotations

import asyncio
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from nats.js import JetStreamContext

from bench.catalog.service import wait_acked, wait_bound
from bench.catalog.workload import DATABASE, Workload
from schemas import envelope, subject_for
from schemas.messages import LogArchived

#: Publishes in flight while filling the stream (untimed).
WINDOW = 512


@dataclass(frozen=True)
class IngestResult:
    logs: int
    events: int
    seconds: float
    startup_s: float
    """From the process start to its consumer existing (not in `seconds`)."""

    @property
    def logs_per_s(self) -> float:
        return self.logs / self.seconds


async def publish_events(
    js: JetStreamContext,
    workload: Workload,
    log: Callable[[str], None],
    on_log: Callable[[LogArchived], None],
) -> int:
    """Publish every event, showing each log to `on_log`; the stream sequence of the last."""
    last = 0
    started = time.perf_counter()
    pending: list[Any] = []

    async def flush() -> None:
        nonlocal last
        acks = await asyncio.gather(*pending)
        last = max(last, *(ack.seq for ack in acks))
        pending.clear()

    for sent, data in enumerate(workload.events(), start=1):
        if isinstance(data, LogArchived):
            on_log(data)
        message = envelope(data, source="archiver@bench-node", database=DATABASE)
        pending.append(
            js.publish(
                subject_for(message),
                message.model_dump_json().encode(),
                headers={"Nats-Msg-Id": str(message.id)},
                timeout=30,
            )
        )
        if len(pending) >= WINDOW:
            await flush()
        if sent % 100_000 == 0:
            log(f"  published {sent} events ({time.perf_counter() - started:.0f} s)")
    if pending:
        await flush()
    return last


async def time_ingest(
    js: JetStreamContext,
    proc: subprocess.Popen[bytes],
    work: Path,
    workload: Workload,
    last_seq: int,
    spawned: float,
) -> IngestResult:
    """Wait for the catalog started at `spawned` to bind, then to acknowledge `last_seq`."""
    bound = await wait_bound(js, proc, work)
    done = await wait_acked(js, last_seq, proc, work)
    return IngestResult(
        logs=workload.logs,
        events=workload.logs + workload.backups,
        seconds=done - bound,
        startup_s=bound - spawned,
    )
