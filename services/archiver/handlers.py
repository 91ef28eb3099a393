"""The archiver's one consumer: `log.indexed` for this node's databases → release the local copy.

Ack policy (the bus's table in `services/bus/consumer.py` applies):

| the journal holds the log as                      | action                                   |
|---------------------------------------------------|------------------------------------------|
| stored or published, same crc32c                  | release the spool copy, journal it, ack   |
| released already, or no such log on this node     | ack (a redelivery, or another node's log) |
| conflict / unreadable                             | ack; the copy stays for a person          |
| discovered, or its upload is still in flight      | RetryableError: nak, retried with backoff |
| stored with another crc32c than the catalog's     | TerminalError: dead letter, copy kept     |

Releasing is idempotent (a file already gone is fine), so a crash between the release and the
ack only repeats a no-op.
"""

from __future__ import annotations

import logging
from typing import Any

from schemas import Envelope, node_token, wildcard
from schemas.messages import LogIndexed
from services.archiver.settings import ArchiverSettings
from services.archiver.streamer import NotReleasable, Streamer
from services.bus import Delivery, RetryableError, TerminalError
from services.runtime import ConsumerSpec

log = logging.getLogger("tidemark.archiver")


def indexed_subjects(settings: ArchiverSettings) -> list[str]:
    """`tm.evt.log.indexed.<uid>` for every database this node archives."""
    prefix = wildcard(LogIndexed).removesuffix("*")
    return [f"{prefix}{database.uid}" for database in settings.databases]


def log_indexed_consumer(streamer: Streamer, settings: ArchiverSettings, node: str) -> ConsumerSpec:
    async def on_log_indexed(message: Envelope[Any], delivery: Delivery) -> None:
        data: LogIndexed = message.data
        try:
            state = await streamer.release(data.object_key, data.crc32c)
        except NotReleasable as exc:
            raise RetryableError(str(exc)) from None
        except ValueError as exc:
            raise TerminalError(str(exc)) from None
        log.debug("log.indexed %s → %s", data.object_key, state)

    return ConsumerSpec(
        stream="TM_EVT",
        durable=f"archiver-{node_token(node)}-indexed",
        filter_subjects=indexed_subjects(settings),
        handlers={LogIndexed: on_log_indexed},
        concurrency=4,
    )
