"""`KeyMirror` against a real nats-server: one watch for the life of the mirror, every key from
the start, and a missed update repaired by the next listing."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
from nats.aio.client import Client
from nats.js.kv import KeyValue

from services.bus.mirror import KeyMirror
from tests.integration.bus_helpers import unique, wait_for

pytestmark = pytest.mark.integration


@pytest.fixture
async def kv(nc: Client) -> AsyncIterator[KeyValue]:
    js = nc.jetstream()
    bucket = unique("mirror").replace("-", "_")
    store = await js.create_key_value(bucket=bucket, history=1)
    try:
        yield store
    finally:
        await js.delete_key_value(bucket)


async def _consumers(kv: KeyValue) -> int:
    info = await kv._js.stream_info(kv._stream)  # nats-py keeps both private
    return int(info.state.consumer_count)


async def test_a_mirror_holds_every_key_from_the_start_and_follows_puts_and_deletes(
    kv: KeyValue,
) -> None:
    for i in range(60):
        await kv.put(f"policy.db{i:02}", b"v1")
    await kv.put("slot.db00.full", b"not a policy")
    mirror = KeyMirror(kv, "policy.", resync_s=60)
    await mirror.start()
    try:
        assert mirror.ready
        assert mirror.values() == {f"policy.db{i:02}": b"v1" for i in range(60)}

        await kv.put("policy.db00", b"v2")
        await kv.delete("policy.db01")
        await kv.put("policy.new", b"v1")
        await wait_for(
            lambda: (
                mirror.values().get("policy.db00") == b"v2"
                and "policy.db01" not in mirror.values()
                and "policy.new" in mirror.values()
            )
        )
        # One watch for the mirror's life, however often it is read.
        assert await _consumers(kv) == 1
        for _ in range(20):
            assert len(mirror.values()) == 60
            await asyncio.sleep(0.01)
        assert await _consumers(kv) == 1
        assert mirror.repairs == 0
    finally:
        await mirror.stop()


async def test_an_update_the_watch_missed_is_repaired_by_the_next_listing(kv: KeyValue) -> None:
    await kv.put("policy.a", b"v1")
    mirror = KeyMirror(kv, "policy.", resync_s=0.3)
    await mirror.start()
    try:
        # The watch goes away silently (an ordered consumer lost with its server, and its
        # recreation failed): nothing arrives through it any more.
        await mirror._watcher._sub.unsubscribe()
        await kv.put("policy.b", b"v1")
        await kv.delete("policy.a")

        await wait_for(lambda: mirror.values() == {"policy.b": b"v1"}, timeout=5)
        assert mirror.repairs == 2
        # The watch was reopened: the next update arrives through it, not by listing.
        repairs = mirror.repairs
        await kv.put("policy.c", b"v1")
        await wait_for(lambda: "policy.c" in mirror.values(), timeout=0.25)
        assert mirror.repairs == repairs
    finally:
        await mirror.stop()
