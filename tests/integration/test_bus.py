"""The bus against a real nats-server: dedupe, ack policy, dead letters, redelivery, traces."""

from __future__ import annotations

import asyncio
import base64
import json
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

import pytest
from nats.aio.client import Client
from nats.js import JetStreamContext
from nats.js.errors import NotFoundError
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from schemas import Envelope, subject_for
from schemas.messages import RunBackup
from services.bus import (
    BatchConsumer,
    Consumer,
    Delivery,
    Publisher,
    RetryableError,
    TerminalError,
    ensure_topology,
)
from services.bus.keys import live_keys
from services.settings import BusSettings
from services.telemetry import tracer
from tests.integration.bus_helpers import FAST, dead_letters, run_backup, unique, wait_for

pytestmark = pytest.mark.integration


@pytest.fixture
async def js(nc: Client) -> AsyncIterator[JetStreamContext]:
    context = nc.jetstream()
    await ensure_topology(context, FAST)
    return context


class Harness:
    """One test's consumer on its own node subject, recording what its handler saw."""

    def __init__(self, js: JetStreamContext, settings: BusSettings = FAST) -> None:
        self.js = js
        self.node = unique("node")
        self.durable = unique("executor")
        self.settings = settings
        self.publisher = Publisher(js, source="planner")
        self.seen: list[tuple[Envelope[Any], Delivery, float]] = []
        self.consumers: list[Consumer] = []

    @property
    def subject(self) -> str:
        return f"tm.cmd.executor.{self.node}.backup"

    async def consume(self, handler: Any = None) -> Consumer:
        async def record(message: Envelope[Any], delivery: Delivery) -> None:
            self.seen.append((message, delivery, time.monotonic()))
            if handler is not None:
                await handler(message, delivery)

        consumer = Consumer(
            self.js,
            stream="TM_CMD",
            durable=self.durable,
            filter_subjects=[f"tm.cmd.executor.{self.node}.>"],
            handlers={RunBackup: record},
            settings=self.settings,
            publisher=Publisher(self.js, source="executor"),
        )
        await consumer.start()
        self.consumers.append(consumer)
        return consumer

    async def publish(self, message: Envelope[Any] | None = None) -> Envelope[Any]:
        message = message or run_backup()
        await self.publisher.publish(message, node=self.node)
        return message

    async def pending(self) -> int:
        info = await self.js.consumer_info("TM_CMD", self.durable)
        return int(info.num_pending or 0) + int(info.num_ack_pending or 0)

    async def close(self) -> None:
        for consumer in self.consumers:
            await consumer.stop(timeout=2)


@pytest.fixture
async def harness(js: JetStreamContext) -> AsyncIterator[Harness]:
    h = Harness(js)
    yield h
    await h.close()


async def test_duplicate_publish_is_delivered_once(harness: Harness) -> None:
    message = run_backup()
    first = await harness.js.publish(
        subject_for(message, node=harness.node),
        message.model_dump_json().encode(),
        headers={"Nats-Msg-Id": str(message.id)},
    )
    await harness.publish(message)  # same id through the Publisher
    second = await harness.js.publish(
        subject_for(message, node=harness.node),
        message.model_dump_json().encode(),
        headers={"Nats-Msg-Id": str(message.id)},
    )
    assert not first.duplicate
    assert second.duplicate
    await harness.consume()
    await wait_for(lambda: len(harness.seen) == 1)
    await asyncio.sleep(1.0)  # room for a second delivery, which must not come
    assert len(harness.seen) == 1
    assert harness.seen[0][0].id == message.id
    assert await harness.pending() == 0


async def test_retryable_error_is_redelivered_with_backoff(harness: Harness) -> None:
    async def flaky(message: Envelope[Any], delivery: Delivery) -> None:
        if delivery.attempt < 3:
            raise RetryableError("store busy")

    await harness.consume(flaky)
    await harness.publish()
    await wait_for(lambda: len(harness.seen) == 3)
    attempts = [d.attempt for _, d, _ in harness.seen]
    assert attempts == [1, 2, 3]
    gaps = [b[2] - a[2] for a, b in zip(harness.seen, harness.seen[1:], strict=False)]
    # delay ≥ half the exponential ceiling: 0.2·2^(n-1)/2 → at least 0.1 s, then 0.2 s.
    assert gaps[0] >= 0.1
    assert gaps[1] >= 0.2
    await asyncio.sleep(0.5)
    assert await harness.pending() == 0  # acked after the third attempt


async def test_terminal_error_is_dead_lettered_and_service_keeps_running(
    harness: Harness,
) -> None:
    async def refuse(message: Envelope[Any], delivery: Delivery) -> None:
        if message.data.backup_id == "poison":
            raise TerminalError("backup id refused by policy")

    await harness.consume(refuse)
    poison = await harness.publish(run_backup("poison"))
    letter = await dead_letters(harness.js, harness.subject)
    assert letter.error == "terminal"
    assert letter.reason == "backup id refused by policy"
    assert letter.message_id == str(poison.id)
    assert json.loads(base64.b64decode(letter.payload_b64))["id"] == str(poison.id)
    assert letter.headers["Nats-Msg-Id"] == str(poison.id)
    good = await harness.publish(run_backup("good"))
    await wait_for(lambda: any(m.id == good.id for m, _, _ in harness.seen))
    await asyncio.sleep(0.5)
    assert [m.data.backup_id for m, _, _ in harness.seen] == ["poison", "good"]
    assert await harness.pending() == 0


@pytest.mark.parametrize(
    ("mutate", "expected"),
    [
        (lambda doc: b"{not json", "payload is not JSON"),
        (lambda doc: json.dumps({**doc, "surprise": 1}).encode(), "surprise"),
        (
            lambda doc: json.dumps({**doc, "schema_version": 99}).encode(),
            "schema_version 99 of 'backup.run' is not supported",
        ),
        (
            lambda doc: json.dumps({**doc, "data": {**doc["data"], "extra": True}}).encode(),
            "data.extra",
        ),
    ],
    ids=["bad-json", "unknown-field", "wrong-schema-version", "unknown-data-field"],
)
async def test_malformed_payload_is_dead_lettered_not_redelivered(
    harness: Harness, mutate: Any, expected: str
) -> None:
    await harness.consume()
    doc = json.loads(run_backup().model_dump_json())
    payload = mutate(doc)
    await harness.js.publish(harness.subject, payload)
    letter = await dead_letters(harness.js, harness.subject)
    assert letter.error == "validation"
    assert expected in letter.reason
    assert base64.b64decode(letter.payload_b64) == payload
    assert letter.deliveries == 1
    await asyncio.sleep(0.5)
    assert harness.seen == []  # the handler never saw it
    assert await harness.pending() == 0
    # ...and the consumer is still serving
    good = await harness.publish()
    await wait_for(lambda: any(m.id == good.id for m, _, _ in harness.seen))


async def test_max_deliver_exhausted_goes_to_dead_letter(js: JetStreamContext) -> None:
    settings = FAST.model_copy(update={"max_deliver": 3, "backoff_base_s": 0.05})
    harness = Harness(js, settings)

    async def always_fails(message: Envelope[Any], delivery: Delivery) -> None:
        raise RetryableError("object store unavailable")

    try:
        await harness.consume(always_fails)
        await harness.publish()
        letter = await dead_letters(js, harness.subject)
        assert letter.error == "max_deliveries"
        assert "after 3 deliveries" in letter.reason
        assert "object store unavailable" in letter.reason
        await asyncio.sleep(0.5)
        assert len(harness.seen) == 3
        assert await harness.pending() == 0
    finally:
        await harness.close()


async def test_in_progress_heartbeats_keep_a_long_handler_from_redelivery(
    js: JetStreamContext,
) -> None:
    settings = FAST.model_copy(update={"ack_wait_s": 1.0, "heartbeat_s": 0.25})
    harness = Harness(js, settings)

    async def slow(message: Envelope[Any], delivery: Delivery) -> None:
        await asyncio.sleep(3.0)  # three ack_waits

    try:
        await harness.consume(slow)
        await harness.publish()
        await wait_for(lambda: len(harness.seen) == 1)
        await asyncio.sleep(4.0)
        assert len(harness.seen) == 1
        assert await harness.pending() == 0
    finally:
        await harness.close()


def _spawn_stuck_consumer(
    url: str, durable: str, subject: str, max_deliver: int, ready: Path
) -> subprocess.Popen[bytes]:
    script = Path(__file__).with_name("stuck_consumer.py")
    return subprocess.Popen(
        [sys.executable, str(script), url, durable, subject, str(max_deliver), str(ready)],
        cwd=Path(__file__).parents[2],
    )


async def _wait_file(path: Path, timeout: float = 20.0) -> None:
    await wait_for(path.exists, timeout=timeout)


async def test_consumer_killed_before_ack_redelivers_to_another(
    harness: Harness, nats_url: str, tmp_path: Path
) -> None:
    ready = tmp_path / "taken"
    filt = f"tm.cmd.executor.{harness.node}.>"
    proc = _spawn_stuck_consumer(nats_url, harness.durable, filt, 5, ready)
    try:
        message = await harness.publish()
        await _wait_file(ready)
        proc.kill()  # SIGKILL while the message is unacked
        proc.wait()
    finally:
        if proc.poll() is None:
            proc.kill()
    await harness.consume()  # a second consumer on the same durable
    await wait_for(lambda: len(harness.seen) == 1, timeout=15)
    got, delivery, _ = harness.seen[0]
    assert got.id == message.id
    assert delivery.attempt == 2


async def test_crash_on_last_delivery_is_dead_lettered_by_the_reaper(
    harness: Harness, nats_url: str, tmp_path: Path
) -> None:
    ready = tmp_path / "taken"
    filt = f"tm.cmd.executor.{harness.node}.>"
    proc = _spawn_stuck_consumer(nats_url, harness.durable, filt, 1, ready)
    try:
        message = await harness.publish()
        await _wait_file(ready)
        proc.kill()
        proc.wait()
    finally:
        if proc.poll() is None:
            proc.kill()
    # The survivor binds the same durable (its config must match: MaxDeliver 1).
    harness.settings = FAST.model_copy(update={"max_deliver": 1, "ack_wait_s": 1.5})
    await harness.consume()
    letter = await dead_letters(harness.js, harness.subject, timeout=20)
    assert letter.error == "max_deliveries"
    assert letter.message_id == str(message.id)
    assert harness.seen == []
    # ...and removed from the work queue, so it does not sit there unacknowledged forever.
    with pytest.raises(NotFoundError):
        await harness.js.get_msg("TM_CMD", letter.stream_sequence or 0)


async def test_trace_started_by_publisher_continues_in_consumer(
    harness: Harness, spans: InMemorySpanExporter
) -> None:
    seen_trace: list[int] = []

    async def note_trace(message: Envelope[Any], delivery: Delivery) -> None:
        from opentelemetry import trace

        seen_trace.append(trace.get_current_span().get_span_context().trace_id)

    await harness.consume(note_trace)
    with tracer("test").start_as_current_span("restore orders") as root:
        await harness.publish()
        trace_id = root.get_span_context().trace_id
    await wait_for(lambda: len(seen_trace) == 1)
    assert seen_trace == [trace_id]
    await wait_for(lambda: any(s.name == "process backup.run" for s in spans.get_finished_spans()))
    by_name = {s.name: s for s in spans.get_finished_spans()}
    publish, process = by_name["publish backup.run"], by_name["process backup.run"]
    assert process.context.trace_id == trace_id
    assert process.parent is not None
    assert process.parent.span_id == publish.context.span_id


async def test_stop_lets_the_running_handler_finish_and_ack(harness: Harness) -> None:
    finished = asyncio.Event()

    async def work(message: Envelope[Any], delivery: Delivery) -> None:
        await asyncio.sleep(1.0)
        finished.set()

    consumer = await harness.consume(work)
    await harness.publish()
    await wait_for(lambda: len(harness.seen) == 1)
    await consumer.stop(timeout=5)
    assert finished.is_set()
    assert await harness.pending() == 0


async def test_a_batch_is_settled_message_by_message(harness: Harness) -> None:
    batches: list[list[tuple[str, int]]] = []

    async def handle(deliveries: Sequence[Delivery]) -> list[Exception | None]:
        batches.append([(d.message.data.backup_id, d.attempt) for d in deliveries])
        outcomes: list[Exception | None] = []
        for delivery in deliveries:
            backup_id = delivery.message.data.backup_id
            if backup_id == "poison":
                outcomes.append(TerminalError("backup id refused by policy"))
            elif backup_id == "flaky" and delivery.attempt == 1:
                outcomes.append(RetryableError("store busy", delay=0.1))
            else:
                outcomes.append(None)
        return outcomes

    async def alone(message: Envelope[Any], delivery: Delivery) -> None:
        raise AssertionError("a batch consumer hands messages to its batch handler")

    # Published first, so the first fetch takes them together.
    await harness.js.publish(harness.subject, b"{not json")
    sent = {}
    for backup_id in ("a", "poison", "flaky", "b"):
        sent[backup_id] = await harness.publish(run_backup(backup_id))
    consumer = BatchConsumer(
        harness.js,
        batch=handle,
        batch_size=16,
        stream="TM_CMD",
        durable=harness.durable,
        filter_subjects=[f"tm.cmd.executor.{harness.node}.>"],
        handlers={RunBackup: alone},
        settings=FAST,
        publisher=Publisher(harness.js, source="executor"),
    )
    await consumer.start()
    harness.consumers.append(consumer)
    await wait_for(lambda: len(batches) == 2)
    # The malformed one never reaches the handler; the retried one comes back alone.
    assert batches == [[("a", 1), ("poison", 1), ("flaky", 1), ("b", 1)], [("flaky", 2)]]
    # Dead-lettered after the malformed one, which never reached the handler.
    letter = await dead_letters(harness.js, harness.subject)
    assert (letter.error, letter.message_id) == ("terminal", str(sent["poison"].id))
    state = await harness.js.stream_info("TM_DLQ", subjects_filter=f"tm.dlq.{harness.subject}")
    assert state.state.subjects == {f"tm.dlq.{harness.subject}": 2}
    await asyncio.sleep(0.5)
    assert len(batches) == 2
    assert await harness.pending() == 0


async def test_a_batch_whose_handler_raises_is_redelivered_whole(harness: Harness) -> None:
    batches: list[list[tuple[str, int]]] = []

    async def handle(deliveries: Sequence[Delivery]) -> list[Exception | None]:
        batches.append([(d.message.data.backup_id, d.attempt) for d in deliveries])
        if len(batches) == 1:
            raise ConnectionError("store unreachable")
        return [None] * len(deliveries)

    for backup_id in ("a", "b", "c"):
        await harness.publish(run_backup(backup_id))
    consumer = BatchConsumer(
        harness.js,
        batch=handle,
        batch_size=16,
        stream="TM_CMD",
        durable=harness.durable,
        filter_subjects=[f"tm.cmd.executor.{harness.node}.>"],
        handlers={RunBackup: handle},
        settings=FAST,
        publisher=Publisher(harness.js, source="executor"),
    )
    await consumer.start()
    harness.consumers.append(consumer)
    await wait_for(lambda: sum(len(b) for b in batches) >= 6)
    assert batches[0] == [("a", 1), ("b", 1), ("c", 1)]
    # One delay for the whole batch: it comes back in stream order, not shuffled by jitter.
    assert [m for b in batches[1:] for m in b] == [("a", 2), ("b", 2), ("c", 2)]
    await asyncio.sleep(0.5)
    assert await harness.pending() == 0


async def test_publish_all_waits_for_every_ack_and_stores_each_id_once(harness: Harness) -> None:
    messages = [run_backup(f"many-{i}") for i in range(50)]
    acks = await harness.publisher.publish_all(messages, node=harness.node)
    assert len({ack.seq for ack in acks}) == 50
    assert not any(ack.duplicate for ack in acks)
    again = await harness.publisher.publish_all(messages[:3], node=harness.node)
    assert [ack.duplicate for ack in again] == [True, True, True]  # same ids: stored once
    info = await harness.js.stream_info("TM_CMD", subjects_filter=harness.subject)
    assert info.state.subjects == {harness.subject: 50}


async def test_live_keys_lists_every_value_under_a_prefix_and_no_delete_marker(
    js: JetStreamContext,
) -> None:
    bucket = unique("keys")
    kv = await js.create_key_value(bucket=bucket, history=1)
    try:
        for i in range(40):
            await kv.put(f"node.n{i:02d}", b"{}")
        await kv.put("other.x", b"{}")
        await kv.delete("node.n03")
        await kv.purge("node.n04")
        want = [f"node.n{i:02d}" for i in range(40) if i not in (3, 4)]
        assert await live_keys(kv, "node.") == want
        assert await live_keys(kv) == sorted([*want, "other.x"])
        assert await live_keys(kv, "none.") == []

        # Listed while every key is being rewritten: each listing still holds every key (a
        # watch read to its first None can end the replay early and list fewer).
        stop = asyncio.Event()

        async def rewrite() -> None:
            while not stop.is_set():
                for key in want:
                    await kv.put(key, b"{}")

        writer = asyncio.create_task(rewrite())
        try:
            for _ in range(30):
                assert await live_keys(kv, "node.") == want
        finally:
            stop.set()
            await writer
    finally:
        await js.delete_key_value(bucket)
