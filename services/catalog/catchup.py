"""Catching up: a catalog whose store is behind its stream brings itself level before it answers.

The consumer's position on the server says nothing about a store that is new (an `emptyDir`, a
new PostgreSQL database), restored from an old copy, or shared with replicas that went further.
So the store records how far into TM_EVT it has applied (`stream_positions`, written with each
batch), and at start-up the catalog decides from that alone where its durable starts:

| the store                                 | the stream                    | start              |
|-------------------------------------------|-------------------------------|--------------------|
| at sequence S (its stream, same creation) | still holds S + 1             | replay from S + 1  |
| at S                                      | begins after S + 1 (trimmed)  | rebuild from the   |
|                                           |                               |   bucket, replay   |
|                                           |                               |   from its last + 1|
| empty, no position                        | holds sequence 1              | replay from 1      |
| empty, no position                        | begins later                  | rebuild, as above  |
| not empty, no position (older release,    | any                           | replay all it      |
|   `catalog rebuild`), or another stream's |                               |   holds            |

Replays and rebuilds only ever add what the bucket or the stream states: every write is
idempotent, so starting too early costs time, never a wrong answer; starting too late would
lose facts, so every doubt falls on the early side.

Phases (`CatchUpPhase`), one at a time: rebuilding → loading → replaying → caught up. Until it
is caught up the catalog says so: its health is `starting` with the phase and what is left in
`detail` (so `/readyz` is 503 and a Service sends no HTTP to it), the gauge
`tidemark.catalog.catching_up` is 1, and every query is refused with 503 `catching_up`
("unknown yet"), never answered "not restorable" from a half-built index.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum

from nats.js import JetStreamContext
from nats.js.api import StreamInfo

from services.catalog.store import StreamPosition

log = logging.getLogger("tidemark.catalog")

STREAM = "TM_EVT"


class CatchUpPhase(StrEnum):
    REBUILDING = "rebuilding"
    """The stream no longer holds what the store lacks: the store is refilled from the bucket."""
    LOADING = "loading"
    """The store is read into the in-memory index."""
    REPLAYING = "replaying"
    """The stream is replayed from the store's position to where it stood at start-up."""
    CAUGHT_UP = "caught_up"
    """The index holds every fact the stream held at start-up; queries are answered."""


class CatchingUp(Exception):
    """A query asked of a catalog that is not caught up: the answer is not known yet."""


@dataclass(frozen=True)
class StartPlan:
    """Where the catalog's durable starts, and whether the bucket must refill the store first."""

    start: int
    """The first stream sequence to deliver."""
    rebuild: bool
    reason: str
    stream_created: datetime | None
    last: int
    """The stream's last sequence when planned: a rebuild's listing starts after it was read,
    so the rebuilt store holds everything up to it."""


def first_held(info: StreamInfo) -> int:
    """The first sequence the stream still holds (the next to come, when it holds none)."""
    state = info.state
    return state.first_seq if state.messages else state.last_seq + 1


def plan_start(position: StreamPosition | None, empty: bool, info: StreamInfo) -> StartPlan:
    """Where to start, from the store's position and emptiness and the stream's state."""
    first, last, created = first_held(info), info.state.last_seq, info.created

    def plan(start: int, reason: str, *, rebuild: bool = False) -> StartPlan:
        return StartPlan(max(start, 1), rebuild, reason, created, last)

    if position is None and empty:
        position = StreamPosition(0, created)
    if position is None:
        return plan(first, "the store's position in the stream is unknown: replaying it all")
    if (
        position.stream_created is not None
        and created is not None
        and position.stream_created != created
    ) or position.sequence > last:
        return plan(first, f"the store's position is in another {STREAM}: replaying it all")
    wanted = position.sequence + 1
    if wanted < first:
        return plan(
            last + 1,
            f"the store is at {position.sequence} and {STREAM} begins at {first}: rebuilding "
            "from the bucket",
            rebuild=True,
        )
    return plan(wanted, f"the store is at {position.sequence}: replaying from {wanted}")


@dataclass
class CatchUp:
    """What a catalog is doing before it may answer, as its health, metrics and queries say."""

    phase: CatchUpPhase = CatchUpPhase.LOADING
    reason: str = ""
    left: int | None = None
    """Events still to replay, when known."""

    @property
    def caught_up(self) -> bool:
        return self.phase is CatchUpPhase.CAUGHT_UP

    def describe(self) -> str:
        if self.caught_up:
            return ""
        left = "" if self.left is None else f", {self.left} events left"
        return f"catching up: {self.phase.value}{left} ({self.reason})"

    def refuse(self) -> None:
        """Raise `CatchingUp` unless caught up: a query must not read a half-built index."""
        if not self.caught_up:
            raise CatchingUp(f"the catalog is {self.describe()}; ask again shortly")


async def follow_replay(
    js: JetStreamContext,
    durable: str,
    catchup: CatchUp,
    pending: Callable[[], int | None],
    *,
    every_s: float = 0.2,
) -> None:
    """Watch the replay until nothing the stream held is left to deliver, then mark caught up.

    `pending` is what the last handled delivery said was left after it (0: the consumer had
    delivered everything); the consumer's own numbers also count, for a replay with nothing to
    deliver at all."""
    asked = 0.0
    loop = asyncio.get_running_loop()
    while not catchup.caught_up:
        left = pending()
        if left is not None:
            catchup.left = left
        if left == 0:
            break
        if loop.time() - asked >= 1.0:
            asked = loop.time()
            try:
                info = await js.consumer_info(STREAM, durable)
            except Exception as exc:  # NATS restarting: the next round asks again
                log.debug("consumer info of %s: %s", durable, exc)
            else:
                catchup.left = info.num_pending + info.num_ack_pending
                if catchup.left == 0:
                    break
        await asyncio.sleep(every_s)
    catchup.phase, catchup.left = CatchUpPhase.CAUGHT_UP, 0
    log.info("catalog caught up with %s", STREAM)
