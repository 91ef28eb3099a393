"""Shared pieces of the bus tests: a message factory and a DLQ reader."""

from __future__ import annotations

import asyncio
import contextlib
import json
import uuid
from typing import Any

from nats.js import JetStreamContext
from nats.js.errors import NotFoundError

from schemas import DatabaseRef, DeadLetter, Engine, Envelope, envelope
from schemas.messages import BackupSpec, RunBackup
from services.bus.topology import topology_streams
from services.settings import BusSettings

DB = DatabaseRef(uid="orders", engine=Engine.POSTGRES, name="orders")

FAST = BusSettings(
    ack_wait_s=2.0, max_deliver=4, backoff_base_s=0.2, backoff_max_s=1.0, drain_timeout_s=5.0
)


def unique(prefix: str = "t") -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


def run_backup(backup_id: str = "b1") -> Envelope[RunBackup]:
    return envelope(
        RunBackup(job_id=uuid.uuid4(), backup_id=backup_id, spec=BackupSpec()),
        source="planner",
        database=DB,
    )


async def wait_for(predicate: Any, timeout: float = 10.0, interval: float = 0.05) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not predicate():
        if loop.time() > deadline:
            raise AssertionError(f"condition not met within {timeout}s")
        await asyncio.sleep(interval)


async def dead_letters(js: JetStreamContext, subject: str, timeout: float = 10.0) -> DeadLetter:
    """The last dead letter recorded for `subject`, waiting for it to appear."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        try:
            raw = await js.get_last_msg("TM_DLQ", f"tm.dlq.{subject}")
            return DeadLetter.model_validate(json.loads(raw.data or b"{}"))
        except NotFoundError:
            if loop.time() > deadline:
                raise AssertionError(f"no dead letter for {subject} within {timeout}s") from None
            await asyncio.sleep(0.1)


async def delete_topology(js: JetStreamContext) -> None:
    """A clean slate on a server shared by the session, where the topology's names are fixed:
    every TM_* stream and bucket, and with them their consumers."""
    for stream in topology_streams():
        with contextlib.suppress(NotFoundError):
            await js.delete_stream(stream)
