"""Keeping the garbage collector off the index.

The index is millions of long-lived objects (a few per log). Left to the collector, every full
collection walks them all: a pause of up to a second, landing on whatever query is being
answered at the time. `gc.freeze()` moves every object alive at that moment out of the
collector's reach for good; refcounting still frees them when they are dropped, only a cycle
among them would outlive its last reference, so the heap is collected first.

Objects frozen are those alive when `freeze` runs: after the start-up load, and each time the
index has grown by `FREEZE_EVERY` logs since (a collection then walks only what came after).
"""

from __future__ import annotations

import gc
import logging
import time

log = logging.getLogger("tidemark.catalog")

#: Logs indexed between two freezes during ingest: a collection of the objects added since
#: costs ~0.1 s here, under a millisecond per thousand logs.
FREEZE_EVERY = 100_000


def freeze() -> None:
    """Collect, then freeze everything alive: the collector will not walk it again."""
    started = time.perf_counter()
    gc.collect()
    gc.freeze()
    log.debug(
        "heap frozen in %.3f s (%d objects frozen)",
        time.perf_counter() - started,
        gc.get_freeze_count(),
    )


class FreezeSchedule:
    """Freezes the heap each time `FREEZE_EVERY` more logs have been indexed."""

    def __init__(self, every: int = FREEZE_EVERY) -> None:
        self.every = every
        self._since = 0

    def indexed(self, logs: int) -> None:
        self._since += logs
        if self._since >= self.every:
            self._since = 0
            freeze()
