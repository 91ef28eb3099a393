"""The one retry loop around a conditional write.

Two planner replicas may work the same saga at the same moment (a redelivered command, a job
event, a resume after restart). Every write is conditional on the revision read; the loser
re-reads and decides again from what the winner wrote. Written once here, so no handler grows
its own loop with its own limit.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TypeVar

from services.bus import RetryableError
from services.planner.store import Conflict

T = TypeVar("T")

ATTEMPTS = 20
"""Conflicts in a row before giving up: the message is redelivered later rather than spinning
against a record that keeps changing (a storm means something else is badly wrong)."""


async def until_written(
    attempt: Callable[[], Awaitable[T]], what: str, *, attempts: int = ATTEMPTS
) -> T:
    """Run `attempt` — read, decide, write conditionally — again each time its write loses
    (`Conflict`), up to `attempts` times; then a `RetryableError` naming `what`."""
    for _ in range(attempts):
        try:
            return await attempt()
        except Conflict:
            continue
    raise RetryableError(f"{what} kept changing under us ({attempts} conflicting writes)")
