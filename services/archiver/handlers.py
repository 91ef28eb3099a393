"""The archiver's one consumer: `logs.indexed` (and the older `log.indexed`, one log each) for
this node's databases → release the local copies.

Ack policy (the bus's table in `services/bus/consumer.py` applies), per log of the message:

| the journal holds the log as                      | action                                   |
|---------------------------------------------------|------------------------------------------|
| stored or published, same crc32c                  | release the spool copy, journal it        |
| released already, or no such log on this node     | nothing (a redelivery, another node's)    |
| conflict / unreadable                             | nothing; the copy stays for a person      |
| discovered, or its upload is still in flight      | RetryableError: nak, retried with backoff |
| stored with another crc32c than the catalog's     | TerminalError: dead letter, copy kept     |

Every log of a message is tried before it is settled: one not releasable yet does not hold back
the others, and the message is retried (or dead-lettered) for the ones that remain; a retry
repeats the others' releases, which are idempotent (a file already gone is fine), as a crash
between a release and the ack does. Acked when every log is settled.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from schemas import Envelope, node_token, wildcard
from schemas.messages import LogIndexed, LogsIndexed
from services.archiver.settings import ArchiverSettings
from services.archiver.streamer import NotReleasable, Streamer
from services.bus import Delivery, RetryableError, TerminalError
from services.runtime import ConsumerSpec

log = logging.getLogger("tidemark.archiver")


#: Releases of one message under way at once (each a journal write and a file removal).
RELEASES_AT_ONCE = 4


def indexed_subjects(settings: ArchiverSettings) -> list[str]:
    """`tm.evt.logs.indexed.<uid>` and `tm.evt.log.indexed.<uid>` for every database this
    node archives."""
    return [
        f"{wildcard(model).removesuffix('*')}{database.uid}"
        for model in (LogsIndexed, LogIndexed)
        for database in settings.databases
    ]


async def release_all(streamer: Streamer, logs: list[tuple[str, str]]) -> None:
    """Release every (object key, crc32c) that can be; then raise for those that cannot."""
    gate = asyncio.Semaphore(RELEASES_AT_ONCE)
    later: list[str] = []
    refused: list[str] = []

    async def one(key: str, crc32c: str) -> None:
        async with gate:
            try:
                state = await streamer.release(key, crc32c)
            except NotReleasable as exc:
                later.append(str(exc))
                return
            except ValueError as exc:
                refused.append(str(exc))
                return
        log.debug("indexed %s → %s", key, state)

    await asyncio.gather(*(one(key, crc32c) for key, crc32c in logs))
    if later:
        more = f" (and {len(later) - 1} more)" if len(later) > 1 else ""
        raise RetryableError(later[0] + more)
    if refused:
        raise TerminalError("; ".join(refused))


def log_indexed_consumer(streamer: Streamer, settings: ArchiverSettings, node: str) -> ConsumerSpec:
    async def on_logs_indexed(message: Envelope[Any], delivery: Delivery) -> None:
        data: LogsIndexed = message.data
        await release_all(streamer, [(item.object_key, item.crc32c) for item in data.logs])

    async def on_log_indexed(message: Envelope[Any], delivery: Delivery) -> None:
        data: LogIndexed = message.data
        await release_all(streamer, [(data.object_key, data.crc32c)])

    return ConsumerSpec(
        stream="TM_EVT",
        durable=f"archiver-{node_token(node)}-indexed",
        filter_subjects=indexed_subjects(settings),
        handlers={LogsIndexed: on_logs_indexed, LogIndexed: on_log_indexed},
        concurrency=4,
    )
