"""The pull-consumer loop and its ack policy.

| outcome of one delivery                         | action                                   |
|-------------------------------------------------|------------------------------------------|
| handler returned (its effect is durable)        | ack, and wait for the server to confirm  |
| payload fails the contract (JSON, fields, type, | dead letter (reason "validation"), term  |
|   schema_version, wrong subject)                |                                          |
| `TerminalError`, or no handler for the type     | dead letter, term                        |
| `RetryableError` or any other exception         | nak(delay), delay doubling per delivery  |
| ... on the last allowed delivery (MaxDeliver)   | dead letter ("max_deliveries"), term     |
| consumer dies before acking                     | the server redelivers after ack_wait to  |
|                                                 | any consumer bound to the same durable   |
| consumer dies on the last allowed delivery      | MaxDeliver advisory (kept in TM_ADV) →   |
|                                                 | dead letter by the reaper, then removed  |

While a handler runs, `in_progress()` is sent every `heartbeat` seconds so a long RMAN run is
not redelivered to someone else. A dead letter is written (and acknowledged by its stream) before
the original is terminated, so a crash in between leaves the message, not a hole.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import random
import time
from collections.abc import Awaitable, Callable, Coroutine, Mapping
from dataclasses import dataclass
from typing import Any

import nats.errors
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy
from nats.js.errors import NotFoundError
from opentelemetry import trace
from opentelemetry.trace import SpanKind, Status, StatusCode

from schemas import ContractError, Envelope, Payload, decode
from services.bus.deadletter import dead_letter, dead_letter_msg
from services.bus.errors import RetryableError, TerminalError
from services.bus.publisher import Publisher
from services.bus.settings import BusSettings
from services.bus.topology import ADVISORY_STREAM, MAX_DELIVERIES_ADVISORY
from services.telemetry import extract_context, metrics, tracer

log = logging.getLogger("tidemark.bus")


@dataclass
class Delivery:
    """What a handler knows about the delivery it is handling."""

    message: Envelope[Any]
    subject: str
    attempt: int
    stream_sequence: int
    publisher: Publisher
    _msg: Msg

    @property
    def pending(self) -> int | None:
        """How many messages the consumer had left to deliver after this one (None: unknown)."""
        if self._msg is None or not self._msg.reply:
            return None
        return int(self._msg.metadata.num_pending)

    async def in_progress(self) -> None:
        """Extend the ack deadline now (the loop also does this on a timer)."""
        await self._msg.in_progress()

    async def emit(self, data: Payload, *, node: str | None = None) -> Envelope[Any]:
        """Publish a message caused by this one (same correlation id, same database)."""
        return await self.publisher.emit(data, cause=self.message, node=node)


Handler = Callable[[Envelope[Any], Delivery], Awaitable[None]]


def backoff_delay(attempt: int, base: float, cap: float) -> float:
    """Exponential backoff with jitter: about base·2^(attempt-1), never above cap."""
    ceiling: float = min(cap, base * 2.0 ** max(0, attempt - 1))
    jitter: float = random.uniform(0, ceiling / 2)  # noqa: S311 - jitter, not security
    return ceiling / 2 + jitter


class Consumer:
    """A durable pull consumer on one stream, dispatching each message type to its handler."""

    def __init__(
        self,
        js: JetStreamContext,
        *,
        stream: str,
        durable: str,
        filter_subjects: list[str],
        handlers: Mapping[type[Payload], Handler],
        settings: BusSettings,
        publisher: Publisher,
        concurrency: int = 1,
        deliver_new_only: bool = False,
        start_sequence: int | None = None,
        inactive_threshold_s: float | None = None,
    ) -> None:
        self.js = js
        self.stream = stream
        self.durable = durable
        self.filter_subjects = filter_subjects
        self.handlers = dict(handlers)
        self.settings = settings
        self.publisher = publisher
        self.concurrency = concurrency
        self.deliver_new_only = deliver_new_only
        self.start_sequence = start_sequence
        self.inactive_threshold_s = inactive_threshold_s
        self.heartbeat_s = settings.heartbeat_s or settings.ack_wait_s / 3
        self._stopping = asyncio.Event()
        self._inflight: set[asyncio.Task[None]] = set()
        self._tasks: list[asyncio.Task[None]] = []
        self._pause = 0.1

    @property
    def source(self) -> str:
        return self.publisher.source

    def config(self) -> ConsumerConfig:
        subjects = self.filter_subjects
        policy = DeliverPolicy.NEW if self.deliver_new_only else DeliverPolicy.ALL
        if self.start_sequence is not None:
            policy = DeliverPolicy.BY_START_SEQUENCE
        return ConsumerConfig(
            durable_name=self.durable,
            ack_policy=AckPolicy.EXPLICIT,
            ack_wait=self.settings.ack_wait_s,
            max_deliver=self.settings.max_deliver,
            deliver_policy=policy,
            opt_start_seq=self.start_sequence,
            inactive_threshold=self.inactive_threshold_s,
            filter_subject=subjects[0] if len(subjects) == 1 else None,
            filter_subjects=subjects if len(subjects) > 1 else None,
            max_ack_pending=max(self.concurrency * 4, 16),
        )

    async def start(self) -> None:
        if self.start_sequence is not None:
            # Where to start is the caller's to say (the catalog: what its store holds), not
            # the server's memory of an earlier consumer: that one goes, with its position.
            with contextlib.suppress(NotFoundError):
                await self.js.delete_consumer(self.stream, self.durable)
        await self.js.add_consumer(self.stream, self.config())
        self._sub = await self.js.pull_subscribe_bind(durable=self.durable, stream=self.stream)
        reaper = self.durable_for_advisories
        await self.js.add_consumer(
            ADVISORY_STREAM,
            ConsumerConfig(
                durable_name=reaper,
                ack_policy=AckPolicy.EXPLICIT,
                ack_wait=30,
                filter_subject=f"{MAX_DELIVERIES_ADVISORY}.{self.stream}.{self.durable}",
                inactive_threshold=self.inactive_threshold_s,
            ),
        )
        self._adv_sub = await self.js.pull_subscribe_bind(durable=reaper, stream=ADVISORY_STREAM)
        self._tasks = [
            asyncio.create_task(self._fetch_loop(), name=f"consume {self.durable}"),
            asyncio.create_task(self._reap_loop(), name=f"reap {self.durable}"),
        ]

    @property
    def durable_for_advisories(self) -> str:
        return f"{self.durable}-maxdeliver"

    async def stop(self, timeout: float | None = None) -> None:
        """Stop taking new messages and let the ones in hand finish (or time out)."""
        self._stopping.set()
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if self._inflight:
            _done, pending = await asyncio.wait(
                self._inflight, timeout=timeout or self.settings.drain_timeout_s
            )
            for task in pending:
                # Unacked: the server redelivers it after ack_wait. Nothing is lost.
                task.cancel()
        for sub in (getattr(self, "_sub", None), getattr(self, "_adv_sub", None)):
            if sub is not None:
                with contextlib.suppress(Exception):
                    await sub.unsubscribe()

    async def _fetch_loop(self) -> None:
        while not self._stopping.is_set():
            free = self.concurrency - len(self._inflight)
            if free <= 0:
                await asyncio.wait(self._inflight, return_when=asyncio.FIRST_COMPLETED)
                continue
            for msg in await self._fetch(min(free, self.settings.fetch_batch)):
                self._track(self._process(msg))

    async def _fetch(self, batch: int) -> list[Msg]:
        """Up to `batch` messages; none after a quiet second or a failure (then a pause)."""
        try:
            msgs = await self._sub.fetch(batch, timeout=1.0)
        except nats.errors.TimeoutError:
            return []
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # disconnected, server restarting: wait and go on
            log.warning("fetch on %s failed: %s", self.durable, exc)
            await asyncio.sleep(self._pause)
            self._pause = min(self._pause * 2, 5.0)
            return []
        self._pause = 0.1
        return msgs

    def _track(self, work: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        """Run `work` as a task that `stop()` lets finish."""
        task = asyncio.create_task(work)
        self._inflight.add(task)
        task.add_done_callback(self._inflight.discard)
        return task

    async def _heartbeat(self, *msgs: Msg) -> None:
        while True:
            await asyncio.sleep(self.heartbeat_s)
            for msg in msgs:
                with contextlib.suppress(Exception):
                    await msg.in_progress()

    async def _admit(self, msg: Msg, started: float) -> Envelope[Any] | None:
        """The message, if it satisfies the contract and has a handler; else dead-lettered."""
        try:
            message = decode(msg.data, subject=msg.subject)
        except ContractError as exc:
            await self._give_up(msg, reason=exc.reason, error="validation")
            self._count("invalid", "term", started)
            return None
        if type(message.data) not in self.handlers:
            reason = f"no handler for {message.type} on consumer {self.durable}"
            await self._give_up(msg, reason=reason, error="unroutable", message_type=message.type)
            self._count(message.type, "term", started)
            return None
        return message

    def _delivery(self, message: Envelope[Any], msg: Msg) -> Delivery:
        return Delivery(
            message=message,
            subject=msg.subject,
            attempt=msg.metadata.num_delivered,
            stream_sequence=msg.metadata.sequence.stream,
            publisher=self.publisher,
            _msg=msg,
        )

    async def _process(self, msg: Msg) -> None:
        started = time.monotonic()
        attempt = msg.metadata.num_delivered
        message = await self._admit(msg, started)
        if message is None:
            return
        handler = self.handlers[type(message.data)]
        context = extract_context(msg.headers)
        with tracer().start_as_current_span(
            f"process {message.type}",
            context=context,
            kind=SpanKind.CONSUMER,
            attributes={
                "messaging.system": "nats",
                "messaging.destination.name": msg.subject,
                "messaging.message.id": str(message.id),
                "messaging.consumer.group.name": self.durable,
                "tidemark.attempt": attempt,
            },
        ) as span:
            delivery = self._delivery(message, msg)
            beat = asyncio.create_task(self._heartbeat(msg))
            try:
                await handler(message, delivery)
            except TerminalError as exc:
                span.set_status(Status(StatusCode.ERROR, exc.reason))
                await self._give_up(
                    msg, reason=exc.reason, error="terminal", message_type=message.type
                )
                self._count(message.type, "term", started)
                return
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                span.record_exception(exc)
                span.set_status(Status(StatusCode.ERROR, str(exc)))
                await self._retry_or_give_up(msg, message.type, exc, attempt, started)
                return
            finally:
                beat.cancel()
            await self._ack(msg, message)
            self._count(message.type, "ack", started)

    async def _ack(self, msg: Msg, message: Envelope[Any]) -> None:
        try:
            await msg.ack_sync(timeout=5.0)
        except Exception as exc:
            # The effect is durable; the server will redeliver and the handler's own
            # idempotency turns the repeat into a no-op.
            log.warning("ack of %s not confirmed (%s); expect a redelivery", message.id, exc)

    async def _retry_or_give_up(
        self,
        msg: Msg,
        message_type: str,
        exc: Exception,
        attempt: int,
        started: float,
        *,
        quiet: bool = False,
    ) -> None:
        reason = getattr(exc, "reason", None) or f"{type(exc).__name__}: {exc}"
        if attempt >= self.settings.max_deliver:
            await self._give_up(
                msg,
                reason=f"gave up after {attempt} deliveries; last error: {reason}",
                error="max_deliveries",
                message_type=message_type,
            )
            self._count(message_type, "term", started)
            return
        delay = exc.delay if isinstance(exc, RetryableError) and exc.delay is not None else None
        if delay is None:
            delay = backoff_delay(
                attempt, self.settings.backoff_base_s, self.settings.backoff_max_s
            )
        if not quiet:
            log.warning(
                "%s failed on delivery %d, retrying in %.1fs: %s",
                message_type,
                attempt,
                delay,
                reason,
            )
        with contextlib.suppress(Exception):
            await msg.nak(delay=delay)
        self._count(message_type, "nak", started)

    async def _give_up(
        self, msg: Msg, *, reason: str, error: str, message_type: str = "unknown"
    ) -> None:
        await dead_letter_msg(
            self.js,
            msg,
            reason=reason,
            error=error,
            by=self.source,
            consumer=self.durable,
            message_type=message_type,
        )
        with contextlib.suppress(Exception):
            await msg.term()

    def _count(self, message_type: str, outcome: str, started: float, messages: int = 1) -> None:
        attrs = {"service": self.source, "type": message_type, "outcome": outcome}
        metrics().handled.add(messages, attrs)
        metrics().handler_duration.record(time.monotonic() - started, attrs)

    async def _reap_loop(self) -> None:
        """Dead-letter messages whose consumer died on their last allowed delivery."""
        while not self._stopping.is_set():
            try:
                advisories = await self._adv_sub.fetch(1, timeout=5.0)
            except nats.errors.TimeoutError:
                continue
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("advisory fetch on %s failed: %s", self.durable, exc)
                await asyncio.sleep(1.0)
                continue
            for advisory in advisories:
                await self._reap(advisory)

    async def _reap(self, advisory: Msg) -> None:
        try:
            body = json.loads(advisory.data)
            seq = int(body["stream_seq"])
            deliveries = int(body.get("deliveries", self.settings.max_deliver))
        except (ValueError, KeyError, TypeError):
            await advisory.term()
            return
        try:
            original = await self.js.get_msg(self.stream, seq)
        except NotFoundError:
            await advisory.ack()  # already settled (acked, termed, or reaped by a peer)
            return
        headers = dict(original.headers or {})
        await dead_letter(
            self.js,
            subject=original.subject or "unknown",
            data=original.data or b"",
            headers=headers,
            reason=(
                f"no acknowledgement after {deliveries} deliveries: the handler crashed or "
                "timed out every time"
            ),
            error="max_deliveries",
            by=self.source,
            stream=self.stream,
            consumer=self.durable,
            stream_sequence=seq,
            deliveries=deliveries,
            message_type=headers.get("Tidemark-Type", "unknown"),
        )
        if self.stream == "TM_CMD":
            with contextlib.suppress(NotFoundError):
                await self.js.delete_msg(self.stream, seq)
        await advisory.ack()


def current_trace_id() -> str | None:
    context = trace.get_current_span().get_span_context()
    return f"{context.trace_id:032x}" if context.is_valid else None
