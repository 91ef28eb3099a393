"""Time, injected: the scheduler asks a `Clock`, so tests move time instead of waiting for it."""

from __future__ import annotations

import asyncio
from datetime import datetime, timedelta
from typing import Protocol

from schemas import utcnow


class Clock(Protocol):
    def now(self) -> datetime:
        """The current time, timezone-aware UTC."""
        ...


class SystemClock:
    def now(self) -> datetime:
        return utcnow()


class ManualClock:
    """A clock that moves only when told to. Shared by two planners, it makes them see the same
    minute at once: the hardest case for exactly-once scheduling."""

    def __init__(self, start: datetime) -> None:
        self._now = start

    def now(self) -> datetime:
        return self._now

    def set(self, at: datetime) -> None:
        self._now = at

    def advance(self, delta: timedelta) -> None:
        self._now += delta


async def sleep(seconds: float) -> None:
    await asyncio.sleep(seconds)
