"""A live copy of a KV bucket's keys under a prefix, kept by one long-lived watch.

For a loop that reads the same keys every second (the planner's scheduler reads every policy
each tick), listing them each time costs a JetStream request per key and, after a server is
lost, a 5-second timeout on the first tick. A `KeyMirror` reads them once and then follows one
watch (an ordered push consumer), so a tick reads memory.

A watch alone is not trusted to be complete (`services/bus/keys.py`, nats-io/nats.py#842): its
initial replay can end early, and its ordered consumer is recreated by nats-py after a lost
server, which can fail and is retried only on the next missed heartbeats. So:

- **Catching up.** The watch is opened first, then the keys are listed from the server
  (`list_entries`, exact). Both feed one table merged by revision: an entry replaces what is
  known only if its revision is higher, so the order in which the replay and the listing
  arrive does not matter, and an old put replayed after a delete does not bring a key back
  (deletes are kept as tombstones with their revision).
- **Missing.** Every `resync_s` the listing is taken again and merged the same way. A key the
  listing lacks is dropped if what is known of it is not newer than the listing (`as_of`). An
  entry the listing had to correct means the watch missed it: the watch is reopened. A miss
  is therefore repaired within `resync_s`, and the planner's catch-up grace (a slot missed by
  less than `catchup_grace_s` is still emitted) absorbs that delay.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any, cast

from nats.js.kv import KeyValue

from services.bus.keys import list_entries

log = logging.getLogger("tidemark.bus")

_DELETED = ("DEL", "PURGE")


class KeyMirror:
    """`values()`: every live key under `prefix` → its value, as the bucket holds it (give or
    take the watch's latency, or `resync_s` after a miss)."""

    def __init__(self, kv: KeyValue, prefix: str = "", *, resync_s: float = 30.0) -> None:
        self.kv = kv
        self.prefix = prefix
        self.resync_s = resync_s
        bucket = cast(Any, kv)._name  # nats-py keeps the bucket's name private
        self.name = f"{bucket} {prefix}" if prefix else str(bucket)
        self.repairs = 0
        """Entries a resync had to correct: updates the watch missed (or had not yet shown)."""
        self._known: dict[str, tuple[int, bytes | None]] = {}
        self._watcher: Any = None
        self._reader: asyncio.Task[None] | None = None
        self._keeper: asyncio.Task[None] | None = None
        self.ready = False
        """True once a listing has been merged: before, `values()` may lack keys."""

    def values(self) -> dict[str, bytes]:
        return {k: v for k, (_, v) in self._known.items() if v is not None}

    async def start(self) -> None:
        """Open the watch, merge a listing; then keep both going until `stop`. Raises if NATS
        does not answer (the caller may fall back to listing)."""
        await self._open_watch()
        await self.resync()
        self._keeper = asyncio.create_task(self._keep(), name=f"kv mirror {self.prefix}")

    async def stop(self) -> None:
        for task in (self._keeper, self._reader):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
        self._keeper = self._reader = None
        await self._close_watch()

    async def resync(self) -> int:
        """Merge a fresh listing; returns how many entries it corrected."""
        listing = await list_entries(self.kv, self.prefix)
        corrected = 0
        listed = set()
        for entry in listing.entries:
            listed.add(entry.key)
            assert entry.revision is not None
            if self._merge(entry.key, entry.revision, entry.value):
                corrected += 1
        for key, (revision, value) in list(self._known.items()):
            if key not in listed and revision <= listing.as_of:
                if value is not None:
                    corrected += 1
                # A tombstone at the listing's sequence: nothing older brings the key back.
                self._known[key] = (listing.as_of, None)
        if self.ready and corrected:
            self.repairs += corrected
            log.warning(
                "kv mirror %s: the listing corrected %d entries the watch had not shown; "
                "reopening the watch",
                self.name,
                corrected,
            )
            await self._close_watch()
            await self._open_watch()
        self.ready = True
        return corrected

    def _merge(self, key: str, revision: int, value: bytes | None) -> bool:
        known = self._known.get(key)
        if known is not None and known[0] >= revision:
            return False
        self._known[key] = (revision, value)
        return known is None or known[1] != value

    async def _open_watch(self) -> None:
        # A watch closed (or lost) leaves its ephemeral consumer on the server until this long
        # without interest: a reopened watch must not leave them for nats-py's five minutes.
        self._watcher = await self.kv.watch(f"{self.prefix}>", inactive_threshold=30.0)
        self._reader = asyncio.create_task(self._read(self._watcher))

    async def _close_watch(self) -> None:
        if self._reader is not None:
            self._reader.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._reader
            self._reader = None
        if self._watcher is not None:
            with contextlib.suppress(Exception):
                await self._watcher.stop()
            self._watcher = None

    async def _read(self, watcher: Any) -> None:
        async for entry in watcher:
            if entry is None:  # "initial replay done": not trusted, see the module docstring
                continue
            value = None if entry.operation in _DELETED else entry.value
            self._merge(entry.key, entry.revision, value)

    async def _keep(self) -> None:
        while True:
            await asyncio.sleep(self.resync_s)
            try:
                if self._watcher is None or self._reader is None or self._reader.done():
                    await self._close_watch()
                    await self._open_watch()
                await self.resync()
            except Exception as exc:  # NATS away for a moment: the next round tries again
                log.warning("kv mirror %s: %r", self.name, exc)
