"""Hostile messages on the bus, against the real catalog service and a real nats-server.

A stream of hypothesis-generated malformed events (random bytes, random JSON, valid events with
hostile edits) is published interleaved with valid ones onto the catalog's own subjects. Each
bad one must end in TM_DLQ as a `validation` dead letter with a reason; every valid one must be
applied and announced (none lost or held up behind a bad one); the service must stay healthy.

The messages are drawn by hypothesis before the service starts (its `@given` does not drive
async tests); a failure names the message that broke it.
"""

from __future__ import annotations

import asyncio
import base64
import json
import uuid
from pathlib import Path
from typing import Any

import pytest
from hypothesis import assume, given
from hypothesis import strategies as st
from nats.aio.client import Client
from nats.js import JetStreamContext
from nats.js.errors import NotFoundError

from schemas import ContractError, DeadLetter, ServiceState, decode, envelope
from tests.fuzzing import HUGE, json_values, settings_for, strings
from tests.integration.bus_helpers import wait_for
from tests.integration.test_catalog_ingest import Rig, logs, open_rig

pytestmark = pytest.mark.integration

ROUTES = ("log.archived", "log.deleted", "backup.completed", "backup.deleted")
BAD_MESSAGES = 60
VALID_MESSAGES = 20


def places(value: Any, at: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    items = value.items() if isinstance(value, dict) else enumerate(value)
    found: list[tuple[Any, ...]] = []
    for key, child in items:
        found.append((*at, key))
        if isinstance(child, dict | list):
            found.extend(places(child, (*at, key)))
    return found


@st.composite
def damaged(draw: st.DrawFn, valid: bytes) -> bytes:
    """A valid event with one hostile edit: a field dropped, replaced, added or made huge."""
    doc = json.loads(valid)
    path = draw(st.sampled_from(places(doc)))
    container = doc
    for key in path[:-1]:
        container = container[key]
    key = path[-1]
    edit = draw(st.sampled_from(["drop", "replace", "extra", "huge"]))
    if edit == "drop":
        del container[key]
    elif edit == "replace":
        container[key] = draw(json_values())
    elif edit == "huge":
        container[key] = HUGE
    elif isinstance(container, dict):
        container[draw(strings())] = draw(json_values(max_leaves=2))
    else:
        container.append(draw(json_values(max_leaves=2)))
    return json.dumps(doc).encode()


def malformed(rig: Rig, count: int) -> list[tuple[str, bytes]]:
    """`count` (subject, payload) pairs on the catalog's subjects that break the contract."""
    valid = [m.model_dump_json().encode() for m in _envelopes(rig)]
    found: list[tuple[str, bytes]] = []

    @settings_for(count)
    @given(
        route=st.sampled_from(ROUTES),
        raw=st.one_of(
            st.binary(max_size=300),
            json_values(max_leaves=10).map(lambda v: json.dumps(v).encode()),
            st.sampled_from(valid).flatmap(damaged),
        ),
    )
    def collect(route: str, raw: bytes) -> None:
        subject = f"tm.evt.{route}.{rig.uid}"
        try:
            decode(raw, subject=subject)
        except ContractError:
            found.append((subject, raw))
            return
        assume(False)  # it happens to be valid: not what this test is about

    collect()
    # Ones the fuzzing found that escaped decode() before: retried to MaxDeliver, not refused.
    late = json.loads(valid[0])
    late["occurred_at"] = "9999-12-31T23:59:59-23:59"
    for raw in (b"[" * 100_000, json.dumps(late).encode()):
        found.insert(len(found) // 2, (f"tm.evt.log.archived.{rig.uid}", raw))
    return found


def _envelopes(rig: Rig) -> list[Any]:
    return [envelope(log, source="archiver@db-node-1", database=rig.db) for log in logs(rig, 1, 2)]


async def dead_letters_of(js: JetStreamContext, uid: str, want: int) -> list[DeadLetter]:
    """The dead letters of events about `uid`, waiting until there are `want` of them."""
    sub = await js.pull_subscribe(f"tm.dlq.tm.evt.*.*.{uid}", stream="TM_DLQ")
    letters: list[DeadLetter] = []
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 30
    try:
        while len(letters) < want and loop.time() < deadline:
            try:
                batch = await sub.fetch(want - len(letters), timeout=1.0)
            except (TimeoutError, NotFoundError):
                continue
            for msg in batch:
                letters.append(DeadLetter.model_validate_json(msg.data))
                await msg.ack()
    finally:
        await sub.unsubscribe()
    return letters


async def test_malformed_events_are_dead_lettered_and_the_valid_ones_all_applied(
    nc: Client, nats_url: str, tmp_path: Path
) -> None:
    async with open_rig(nc, nats_url, tmp_path / "state") as rig:
        bad = malformed(rig, BAD_MESSAGES)
        assert len(bad) >= BAD_MESSAGES // 2, "hypothesis drew too few malformed messages"
        service = await rig.start()
        js = nc.jetstream()
        valid = logs(rig, *range(1, VALID_MESSAGES + 1))
        ids: dict[str, bytes] = {}
        for n in range(max(len(bad), len(valid))):
            if n < len(bad):
                subject, raw = bad[n]
                message_id = f"fuzz-{uuid.uuid4()}"
                ids[message_id] = raw
                await js.publish(subject, raw, headers={"Nats-Msg-Id": message_id})
            if n < len(valid):
                await rig.publish(valid[n])

        # Every valid one applied, in order, none held up behind a bad one.
        await wait_for(lambda: len(rig.outbox.indexed()) == len(valid), timeout=30)
        indexed = [e.sequence for e in rig.outbox.indexed()]
        assert indexed == [log.sequence for log in valid]

        # Every bad one dead-lettered once, whole, as a contract violation with a reason.
        letters = await dead_letters_of(js, rig.uid, len(bad))
        assert sorted(str(letter.message_id) for letter in letters) == sorted(ids)
        for letter in letters:
            raw = ids[str(letter.message_id)]
            assert letter.error == "validation", (raw[:200], letter.reason)
            assert letter.reason.strip(), raw[:200]
            assert base64.b64decode(letter.payload_b64) == raw

        # Still healthy, still consuming.
        assert service.state is ServiceState.HEALTHY
        assert all(not task.done() for c in service._consumers for task in c._tasks)
        last = logs(rig, VALID_MESSAGES + 1)[0]
        await rig.publish(last)
        await wait_for(lambda: len(rig.outbox.indexed()) == len(valid) + 1, timeout=15)
