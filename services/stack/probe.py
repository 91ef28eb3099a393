"""Read-only views of a running stack: service health, streams, consumers, dead letters."""

from __future__ import annotations

import base64
import contextlib
import json
from dataclasses import dataclass, field
from typing import Any

import nats
from nats.aio.client import Client
from nats.js.errors import BucketNotFoundError, NotFoundError

from schemas import STREAMS, DeadLetter
from services.bus import ADVISORY_STREAM, HEALTH_BUCKET
from services.bus.connection import credential_options
from services.bus.keys import live_entries
from services.settings import NatsSettings


async def _quiet(exc: Exception) -> None:
    """A probe reports failure by raising; nats-py's own error log would only repeat it."""


def as_settings(target: str | NatsSettings) -> NatsSettings:
    """A bare URL is a server without users (the test fixtures' and any unauthenticated one)."""
    return target if isinstance(target, NatsSettings) else NatsSettings(url=target)


async def connect_once(target: str | NatsSettings) -> Client:
    """Connect for one look, failing fast (nats-py would otherwise retry for two minutes)."""
    settings = as_settings(target)
    return await nats.connect(
        settings.servers(),
        **credential_options(settings),
        connect_timeout=2,
        allow_reconnect=False,
        max_reconnect_attempts=1,
        reconnect_time_wait=0.1,
        error_cb=_quiet,
    )


async def read_health(target: str | NatsSettings) -> dict[str, dict[str, Any]]:
    """Every live health record, keyed `service.node`. Empty if the bucket is not there yet."""
    nc = await connect_once(target)
    try:
        js = nc.jetstream()
        try:
            kv = await js.key_value(HEALTH_BUCKET.name)
            entries = await live_entries(kv)
        except (BucketNotFoundError, NotFoundError):
            return {}
        out: dict[str, dict[str, Any]] = {}
        for entry in entries:
            with contextlib.suppress(ValueError):  # a record that is not JSON is no health
                out[entry.key] = json.loads(entry.value or b"")
        return out
    finally:
        await nc.close()


@dataclass
class StreamView:
    name: str
    messages: int
    bytes: int
    consumers: list[dict[str, Any]] = field(default_factory=list)


@dataclass
class StackView:
    url: str
    health: dict[str, dict[str, Any]]
    streams: list[StreamView]
    dead_letters: list[DeadLetter]
    dead_letter_count: int


async def read_stack(target: str | NatsSettings, *, dead_letter_limit: int = 5) -> StackView:
    url = as_settings(target).url
    health = await read_health(target)
    nc = await connect_once(target)
    try:
        js = nc.jetstream()
        streams: list[StreamView] = []
        letters: list[DeadLetter] = []
        dlq_count = 0
        for name in [s.name for s in STREAMS] + [ADVISORY_STREAM]:
            try:
                info = await js.stream_info(name)
            except NotFoundError:
                continue
            view = StreamView(name, int(info.state.messages), int(info.state.bytes))
            for consumer in await js.consumers_info(name):
                view.consumers.append(
                    {
                        "name": consumer.name,
                        "pending": int(consumer.num_pending or 0),
                        "ack_pending": int(consumer.num_ack_pending or 0),
                        "redelivered": int(consumer.num_redelivered or 0),
                    }
                )
            streams.append(view)
            if name == "TM_DLQ":
                dlq_count = int(info.state.messages)
                last = int(info.state.last_seq or 0)
                first = int(info.state.first_seq or 0)
                seq = last
                while seq >= first and seq > 0 and len(letters) < dead_letter_limit:
                    with contextlib.suppress(NotFoundError, ValueError):
                        raw = await js.get_msg("TM_DLQ", seq)
                        letters.append(DeadLetter.model_validate_json(raw.data or b""))
                    seq -= 1
        return StackView(url, health, streams, letters, dlq_count)
    finally:
        await nc.close()


def payload_preview(letter: DeadLetter, limit: int = 80) -> str:
    raw = base64.b64decode(letter.payload_b64)
    text = raw.decode("utf-8", errors="replace")
    return text if len(text) <= limit else text[: limit - 1] + "…"
