"""Publishing: every message carries its id as `Nats-Msg-Id` and the trace as `traceparent`."""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from collections.abc import Sequence
from typing import Any

import nats.errors
from nats.js import JetStreamContext
from nats.js.api import PubAck
from nats.js.errors import NoStreamResponseError
from opentelemetry.trace import SpanKind

from schemas import Envelope, Payload, envelope, subject_for
from schemas.database import DatabaseRef
from services.telemetry import inject_headers, metrics, tracer

log = logging.getLogger("tidemark.bus")

MSG_ID_HEADER = "Nats-Msg-Id"
TYPE_HEADER = "Tidemark-Type"

# Not acknowledged (yet): the stream is restarting or electing a leader. Sent again, same id.
_RETRIED = (nats.errors.TimeoutError, NoStreamResponseError, nats.errors.NoRespondersError)


class Publisher:
    """Publishes envelopes to JetStream and waits for the stream's acknowledgement.

    A publish that times out (NATS restarting, leader moving) is retried with the same id until
    `deadline_s`: the stream's duplicate window makes the retry safe, so the message is stored
    exactly once however often we send it.
    """

    def __init__(self, js: JetStreamContext, *, source: str, deadline_s: float = 30.0) -> None:
        self.js = js
        self.source = source
        self.deadline_s = deadline_s

    async def publish(self, message: Envelope[Any], *, node: str | None = None) -> PubAck:
        subject = subject_for(message, node=node)
        payload = message.model_dump_json().encode()
        with tracer().start_as_current_span(
            f"publish {message.type}",
            kind=SpanKind.PRODUCER,
            attributes={
                "messaging.system": "nats",
                "messaging.destination.name": subject,
                "messaging.message.id": str(message.id),
            },
        ):
            headers = inject_headers({MSG_ID_HEADER: str(message.id), TYPE_HEADER: message.type})
            ack = await self._publish_with_retry(subject, payload, headers)
        metrics().published.add(1, {"service": self.source, "type": message.type})
        return ack

    async def publish_all(
        self, messages: Sequence[Envelope[Any]], *, node: str | None = None
    ) -> list[PubAck]:
        """Publish several messages at once and wait until the stream has acknowledged every
        one: one round trip for the lot instead of one each.

        Each carries its id as `Nats-Msg-Id`; one producer span covers the lot, and its
        `traceparent` goes on every message. A message still unacknowledged is sent again under
        the same id, as `publish` does, until `deadline_s`.
        """
        if not messages:
            return []
        with tracer().start_as_current_span(
            f"publish {len(messages)} messages",
            kind=SpanKind.PRODUCER,
            attributes={"messaging.system": "nats", "messaging.batch.message_count": len(messages)},
        ):
            traced = inject_headers({})
            outgoing = [
                (
                    subject_for(m, node=node),
                    m.model_dump_json().encode(),
                    {**traced, MSG_ID_HEADER: str(m.id), TYPE_HEADER: m.type},
                )
                for m in messages
            ]
            acks = await self._publish_all_with_retry(outgoing)
        for message_type, count in Counter(m.type for m in messages).items():
            metrics().published.add(count, {"service": self.source, "type": message_type})
        return acks

    async def _publish_all_with_retry(
        self, outgoing: list[tuple[str, bytes, dict[str, str]]]
    ) -> list[PubAck]:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.deadline_s
        acks: dict[int, PubAck] = {}
        waiting = list(range(len(outgoing)))
        delay = 0.1
        while True:
            sent = {}
            for i in waiting:
                subject, payload, headers = outgoing[i]
                sent[i] = await self.js.publish_async(subject, payload, headers=headers)
            _, late = await asyncio.wait(sent.values(), timeout=2.0)
            for future in late:
                future.cancel()
            waiting = []
            for i, future in sent.items():
                error = None if future.cancelled() else future.exception()
                if future.cancelled() or isinstance(error, _RETRIED):
                    waiting.append(i)
                elif error is not None:
                    raise error
                else:
                    acks[i] = future.result()
            if not waiting:
                return [acks[i] for i in range(len(outgoing))]
            if loop.time() + delay > deadline:
                raise nats.errors.TimeoutError
            log.warning("%d publishes not acknowledged yet; retrying", len(waiting))
            await asyncio.sleep(delay)
            delay = min(delay * 2, 2.0)

    async def emit(
        self,
        data: Payload,
        *,
        database: DatabaseRef | None = None,
        cause: Envelope[Any] | None = None,
        node: str | None = None,
    ) -> Envelope[Any]:
        """Wrap `data` in an envelope from this source and publish it."""
        message = envelope(data, source=self.source, database=database, causation=cause)
        await self.publish(message, node=node)
        return message

    async def _publish_with_retry(
        self, subject: str, payload: bytes, headers: dict[str, str]
    ) -> PubAck:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.deadline_s
        delay = 0.1
        while True:
            try:
                return await self.js.publish(subject, payload, headers=headers, timeout=2.0)
            except _RETRIED:
                if loop.time() + delay > deadline:
                    raise
                log.warning("publish to %s not acknowledged yet; retrying", subject)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 2.0)
