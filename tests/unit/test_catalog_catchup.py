"""Where a catalog starts, from its store's position and the stream's state (`catchup.py`)."""

from __future__ import annotations

from datetime import UTC, datetime
from types import SimpleNamespace
from typing import cast

import pytest
from nats.js.api import StreamInfo

from services.catalog.catchup import CatchingUp, CatchUp, CatchUpPhase, plan_start
from services.catalog.store import StreamPosition

MADE = datetime(2025, 1, 1, tzinfo=UTC)


def stream(first: int, last: int, created: datetime | None = MADE) -> StreamInfo:
    messages = 0 if first > last else last - first + 1
    state = SimpleNamespace(first_seq=first, last_seq=last, messages=messages)
    return cast(StreamInfo, SimpleNamespace(state=state, created=created))


@pytest.mark.parametrize(
    ("position", "empty", "info", "start", "rebuild"),
    [
        # The store is at 40 and the stream still holds 41: replay from there.
        (StreamPosition(40, MADE), False, stream(1, 100), 41, False),
        (StreamPosition(40, MADE), False, stream(41, 100), 41, False),
        # Up to date: nothing to replay, the next event is the first delivered.
        (StreamPosition(100, MADE), False, stream(1, 100), 101, False),
        # The stream begins after what the store lacks: rebuild, then replay after its last.
        (StreamPosition(40, MADE), False, stream(60, 100), 101, True),
        # An empty store on a stream that still holds its first event replays it all ...
        (None, True, stream(1, 100), 1, False),
        (None, True, stream(1, 0), 1, False),
        # ... and on one that was trimmed, rebuilds.
        (None, True, stream(30, 100), 101, True),
        # A purged stream holds nothing, and still not what the store lacks.
        (StreamPosition(40, MADE), False, stream(101, 100), 101, True),
        # No position but rows (an older release, `catalog rebuild`): all the stream holds.
        (None, False, stream(30, 100), 30, False),
        # A position in another stream of that name, or beyond this one's end: the same.
        (StreamPosition(40, datetime(2024, 1, 1, tzinfo=UTC)), False, stream(30, 100), 30, False),
        (StreamPosition(400, MADE), False, stream(30, 100), 30, False),
    ],
)
def test_the_start_is_where_the_store_says_or_earlier_never_later(
    position: StreamPosition | None, empty: bool, info: StreamInfo, start: int, rebuild: bool
) -> None:
    plan = plan_start(position, empty, info)
    assert (plan.start, plan.rebuild) == (start, rebuild), plan.reason
    assert plan.last == info.state.last_seq


def test_a_catalog_catching_up_refuses_to_answer_and_says_why() -> None:
    catchup = CatchUp(CatchUpPhase.REPLAYING, "the store is at 4: replaying from 5", left=12)
    with pytest.raises(CatchingUp, match=r"catching up: replaying, 12 events left"):
        catchup.refuse()
    catchup.phase = CatchUpPhase.CAUGHT_UP
    catchup.refuse()
    assert catchup.describe() == ""
