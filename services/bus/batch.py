"""Consuming in batches: one handler call for up to `batch_size` messages.

For a handler whose cost is mostly per round trip — one committed transaction, one wait for a
stream's acknowledgement — handling messages one at a time caps throughput at the round trip.
A `BatchConsumer` fetches up to `batch_size` messages, hands them to its handler together, and
settles each message by what the handler says of it. The ack policy is the bus's
(`services/bus/consumer.py`), per message:

| outcome for one message of the batch                | action                                  |
|-----------------------------------------------------|-----------------------------------------|
| fails the contract, or no handler for its type      | dead letter, term (before the batch)    |
| the handler returned `None` for it (durable)        | ack; the server's confirmation of the   |
|                                                     | batch's last ack is awaited             |
| the handler returned a `TerminalError` for it       | dead letter, term: that message alone   |
| the handler returned any other exception for it     | nak(delay); dead letter on MaxDeliver   |
| the handler raised                                  | every message of the batch as that      |
|                                                     | exception: nak, one delay for all, so   |
|                                                     | the batch is redelivered in order       |

Nothing is acknowledged before the handler has returned, so nothing is acknowledged before it
is durable. The acks of a batch go out together and one confirmation is awaited, the last
one's: a connection's messages reach the server in order. Batches are handled one at a time,
in stream order; `in_progress()` is sent for every message of a batch while it runs. Metrics
count every message; the handler's duration is recorded once per batch and message type.

Messages are pulled through the consumer's own subscription (`_Puller`), a batch taken whole as
the connection reads it: nats.py's `fetch` spends a task and a timer on every message.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.js import JetStreamContext
from nats.js.api import ConsumerConfig
from opentelemetry import trace
from opentelemetry.trace import Link, SpanKind, Status, StatusCode

from services.bus.consumer import Consumer, Delivery, backoff_delay
from services.bus.errors import RetryableError, TerminalError
from services.telemetry import extract_context, tracer

log = logging.getLogger("tidemark.bus")

#: The header a JetStream status message (no messages, request expired, heartbeat) carries.
STATUS_HEADER = "Status"

BatchHandler = Callable[[Sequence[Delivery]], Awaitable[Sequence[Exception | None]]]
"""Handles deliveries together; returns, per delivery in order, `None` (done and durable) or
the exception that settles that one message."""


class BatchConsumer(Consumer):
    """A durable pull consumer whose handler takes a batch of messages at once.

    `handlers` still names the message types it accepts (any other is dead-lettered as
    unroutable); `batch` handles them all.
    """

    def __init__(
        self, js: JetStreamContext, *, batch: BatchHandler, batch_size: int, **kwargs: Any
    ) -> None:
        super().__init__(js, **kwargs)
        self.batch = batch
        self.batch_size = batch_size
        self._puller: _Puller | None = None

    def config(self) -> ConsumerConfig:
        config = super().config()
        # The server delivers no more than this unacknowledged: below a batch, batches shrink.
        config.max_ack_pending = max(config.max_ack_pending or 0, self.batch_size)
        return config

    async def _fetch(self, batch: int) -> list[Msg]:
        """Up to `batch` messages through this consumer's own `_Puller`; none after a quiet
        second or a failure (then a pause)."""
        try:
            if self._puller is None:
                self._puller = await _Puller.open(self.js, self.stream, self.durable)
            msgs = await self._puller.fetch(batch, timeout=1.0)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # disconnected, server restarting: wait and go on
            log.warning("fetch on %s failed: %s", self.durable, exc)
            await asyncio.sleep(self._pause)
            self._pause = min(self._pause * 2, 5.0)
            return []
        self._pause = 0.1
        return msgs

    async def stop(self, timeout: float | None = None) -> None:
        await super().stop(timeout)
        if self._puller is not None:
            await self._puller.close()

    async def _fetch_loop(self) -> None:
        while not self._stopping.is_set():
            msgs = await self._fetch(self.batch_size)
            if msgs:
                # Its own task, so `stop()` lets a batch in hand finish rather than cancel it.
                await asyncio.wait({self._track(self._process_batch(msgs))})

    async def _process_batch(self, msgs: list[Msg]) -> None:
        started = time.monotonic()
        deliveries = []
        for msg in msgs:
            message = await self._admit(msg, started)
            if message is not None:
                deliveries.append(self._delivery(message, msg))
        if not deliveries:
            return
        started_ns = time.time_ns()
        links = []
        for msg in msgs:
            sent = trace.get_current_span(extract_context(msg.headers)).get_span_context()
            if sent.is_valid:
                links.append(Link(sent))
        with tracer().start_as_current_span(
            f"process batch {self.durable}",
            kind=SpanKind.CONSUMER,
            links=links,
            attributes={
                "messaging.system": "nats",
                "messaging.batch.message_count": len(deliveries),
                "messaging.consumer.group.name": self.durable,
            },
        ) as span:
            beat = asyncio.create_task(self._heartbeat(*(d._msg for d in deliveries)))
            try:
                outcomes: Sequence[Exception | None] = await self.batch(deliveries)
                if len(outcomes) != len(deliveries):
                    raise RuntimeError(
                        f"batch handler of {self.durable} settled {len(outcomes)} of "
                        f"{len(deliveries)} messages"
                    )
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                span.record_exception(exc)
                span.set_status(Status(StatusCode.ERROR, str(exc)))
                outcomes = [self._whole_batch(exc, deliveries)] * len(deliveries)
            finally:
                beat.cancel()
            settled = list(zip(deliveries, outcomes, strict=True))
            _trace_each(settled, span, started_ns)
            await self._ack_all([d for d, outcome in settled if outcome is None], started)
            failed = [(d, outcome) for d, outcome in settled if outcome is not None]
            await asyncio.gather(*(self._settle(d, outcome, started) for d, outcome in failed))

    def _whole_batch(self, exc: Exception, deliveries: list[Delivery]) -> Exception:
        """What a failure of the whole batch means for each message: the same retry, with one
        delay for all, so the batch comes back together and in order (a jitter per message
        would shuffle it: a deletion could return before the fact it deletes)."""
        if isinstance(exc, TerminalError) or (
            isinstance(exc, RetryableError) and exc.delay is not None
        ):
            return exc
        attempt = max(d.attempt for d in deliveries)
        delay = backoff_delay(attempt, self.settings.backoff_base_s, self.settings.backoff_max_s)
        reason = getattr(exc, "reason", None) or f"{type(exc).__name__}: {exc}"
        log.warning(
            "a batch of %d on %s failed on delivery %d, retrying in %.1fs: %s",
            len(deliveries),
            self.durable,
            attempt,
            delay,
            reason,
        )
        return _BatchRetry(reason, delay=delay)

    async def _ack_all(self, deliveries: list[Delivery], started: float) -> None:
        """Ack every message, waiting once for the server to confirm: a connection's messages
        reach the server in order, so the confirmation of the last covers the others."""
        if not deliveries:
            return
        try:
            for delivery in deliveries[:-1]:
                await delivery._msg.ack()
        except Exception as exc:
            # Durable already; the server redelivers and the handler's idempotency absorbs it.
            log.warning(
                "acks of a batch on %s not sent (%s); expect redeliveries", self.durable, exc
            )
        last = deliveries[-1]
        await self._ack(last._msg, last.message)
        counts = Counter(d.message.type for d in deliveries)
        for message_type, count in counts.items():
            self._count(message_type, "ack", started, count)

    async def _settle(self, delivery: Delivery, outcome: Exception, started: float) -> None:
        msg, message = delivery._msg, delivery.message
        if isinstance(outcome, TerminalError):
            await self._give_up(
                msg, reason=outcome.reason, error="terminal", message_type=message.type
            )
            self._count(message.type, "term", started)
        else:
            await self._retry_or_give_up(
                msg,
                message.type,
                outcome,
                delivery.attempt,
                started,
                quiet=isinstance(outcome, _BatchRetry),
            )


def _trace_each(
    settled: list[tuple[Delivery, Exception | None]], batch: trace.Span, started_ns: int
) -> None:
    """One span per message, a child of the span that published it and linked to the batch.

    The batch span can only link to the traces of its messages (it has one parent and they have
    many); without these an operation's trace would end at the publish of each event the
    catalog ingests (a backup's `backup.completed`).
    """
    batch_context = batch.get_span_context()
    for delivery, outcome in settled:
        sent = extract_context(delivery._msg.headers)
        if not trace.get_current_span(sent).get_span_context().is_valid:
            continue
        span = tracer().start_span(
            f"process {delivery.message.type}",
            context=sent,
            kind=SpanKind.CONSUMER,
            links=[Link(batch_context)],
            start_time=started_ns,
            attributes={
                "messaging.system": "nats",
                "messaging.destination.name": delivery.subject,
                "messaging.message.id": str(delivery.message.id),
                "tidemark.attempt": delivery.attempt,
            },
        )
        if outcome is not None:
            span.set_status(Status(StatusCode.ERROR, str(outcome)))
        span.end()


class _BatchRetry(RetryableError):
    """The retry of every message of a failed batch (said once for the batch, not per message)."""


class _Puller:
    """Pull requests of one consumer, answered into one subscription with a callback.

    nats.py's `fetch` takes each message of a batch off its queue with a task and a timer of
    its own: for a batch of a thousand small events, that costs more than decoding them. Here
    messages are appended to a list as the connection reads them, and a batch is taken whole.

    Each request has its own reply subject (`<inbox>.<n>`), so the status that ends one (404
    no messages, 408 expired, 409) is told from a late one ending an older request. Messages
    are kept whichever request they answer, in the order they arrive (the stream's): one that
    answers an older, lingering request is the start of the next batch, never dropped.
    """

    def __init__(self, nc: Client, next_subject: str) -> None:
        self._nc = nc
        self._next_subject = next_subject
        self._inbox = nc.new_inbox()
        self._sub: Subscription | None = None
        self._msgs: list[Msg] = []
        self._request = 0
        self._wanted = 0
        self._answered = asyncio.Event()
        """Set when the current request is settled: enough messages, or its status came."""

    @classmethod
    async def open(cls, js: JetStreamContext, stream: str, durable: str) -> _Puller:
        # The JetStream context's connection and API prefix: nats.py keeps them private, and
        # its own pull subscription builds the same subject from them.
        puller = cls(js._nc, f"{js._prefix}.CONSUMER.MSG.NEXT.{stream}.{durable}")
        puller._sub = await puller._nc.subscribe(f"{puller._inbox}.*", cb=puller._received)
        return puller

    async def close(self) -> None:
        if self._sub is not None:
            with contextlib.suppress(Exception):
                await self._sub.unsubscribe()
            self._sub = None

    async def _received(self, msg: Msg) -> None:
        status = msg.headers.get(STATUS_HEADER) if msg.headers else None
        if status is None:
            self._msgs.append(msg)
            if len(self._msgs) >= self._wanted:
                self._answered.set()
        elif status != "100" and msg.subject == f"{self._inbox}.{self._request}":
            # 404 / 408 / 409 end the current request; 100 is an idle heartbeat.
            self._answered.set()

    async def _ask(self, request: dict[str, Any], wanted: int) -> None:
        self._request += 1
        self._wanted = wanted
        self._answered.clear()
        await self._nc.publish(
            self._next_subject,
            json.dumps(request).encode(),
            reply=f"{self._inbox}.{self._request}",
        )

    async def _wait(self, timeout: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._answered.wait(), timeout)

    async def fetch(self, batch: int, timeout: float) -> list[Msg]:
        """Up to `batch` messages: those available now, else the first to arrive within
        `timeout` (and whatever came with them); [] if none did."""
        if len(self._msgs) < batch:
            # What is there now, up to the batch; a 404 says there is no more.
            await self._ask({"batch": batch - len(self._msgs), "no_wait": True}, batch)
            await self._wait(timeout)
        if not self._msgs:
            # Nothing yet: a request that lingers until a message comes or it expires.
            expires = int(timeout * 1e9)
            await self._ask({"batch": batch, "expires": expires}, 1)
            await self._wait(timeout + 0.5)
            await asyncio.sleep(0)  # what was read with the first lands with it
        taken, self._msgs = self._msgs[:batch], self._msgs[batch:]
        return taken
