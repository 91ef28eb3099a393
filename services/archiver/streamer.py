"""The streaming loop: discover → store (verified) → publish `log.archived` → release on indexed.

    wake (notify.sock datagram, a finished upload, or the safety rescan every `rescan_s`)
      └─ claim each database's prefix (owner.py) once; a foreign prefix blocks that database
      └─ discover: new complete logs are journaled `discovered` in one transaction
      └─ dispatch: up to `parallelism` logs in flight, oldest first; each runs on its own:
           store_log (hash, upload, verify) → journal `stored` → publish → journal `published`

A failing log never holds up the others: its task ends, its next attempt is scheduled with
exponential backoff (`retry_base_s` doubling to `retry_max_s`), and the slot goes to the next
log. `log.indexed` (handlers.py) calls `release`, which gives up the local copy only when the
journal holds the log as stored with the same crc32c.

Read-ahead (a source that finds logs before their writer hands them over: PostgreSQL's pg_wal,
see postgres.py): once such a log is journaled `stored`, the source is told (`stored`: it writes
the marker walpush acknowledges PostgreSQL by). A read-ahead log that cannot be stored as found
is declined rather than rejected: the writer copies it into the spool the usual way and that
copy gets the checks and alarms. A store failure withdraws the offer to read ahead (so the
writer copies at once instead of waiting); the next stored log renews it.

Alarms (`archive.alarm`) are raised once per problem, when a log enters `conflict` or
`unreadable`, when a stray file appears, or when a database's prefix is refused; the journal
remembers, so a restart does not repeat them.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import uuid
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any, Protocol

from schemas import Envelope, utcnow
from schemas.messages import AlarmReason
from services.archiver.errors import (
    ChecksumConflict,
    ForeignArchive,
    LogNotReady,
    LogRejected,
    LogUnreadable,
)
from services.archiver.events import archive_alarm, log_archived, log_message_id
from services.archiver.journal import Entry, Journal, LogState
from services.archiver.keys import log_key
from services.archiver.metrics import ArchiverMetrics, Backlog, archiver_metrics
from services.archiver.notify import NotifyListener
from services.archiver.settings import ArchiverSettings
from services.archiver.sources import Discovery, LoggedFile, LogSource, Problem
from services.archiver.upload import Stored, store_log
from services.blobstore import BlobStore
from services.blobstore.owner import claim_prefix
from services.engines.postgres.walpush import WAITING

log = logging.getLogger("tidemark.archiver")

#: How long a refused or unreachable prefix waits before it is checked again.
RECLAIM_S = 30.0
#: How often released journal rows older than `journal_keep_days` are pruned.
PRUNE_EVERY_S = 3600.0
_ACTIVE = (LogState.DISCOVERED, LogState.STORED)
_REOPENABLE = (LogState.RELEASED, LogState.CONFLICT, LogState.UNREADABLE)


class EventSink(Protocol):
    """Where events go: `services.bus.Publisher` in the service, a list in unit tests."""

    async def publish(self, message: Envelope[Any]) -> object: ...


class NotReleasable(Exception):
    """`log.indexed` arrived for a log that cannot be released yet (not stored, in flight)."""


@dataclass
class _Target:
    """One database being archived."""

    source: LogSource
    backlog: Backlog = field(default_factory=Backlog)
    claimed: bool = False
    retry_claim_at: float = 0.0
    alarmed: str | None = None
    listener: NotifyListener | None = None
    #: File names the last discovery found, so a notification naming only these needs no scan.
    known_names: frozenset[str] = frozenset()

    @property
    def uid(self) -> str:
        return self.source.database.uid


class Streamer:
    def __init__(
        self,
        *,
        sources: Sequence[LogSource],
        journal: Journal,
        store: BlobStore,
        events: EventSink,
        settings: ArchiverSettings,
        node: str,
        source_name: str,
        metrics: ArchiverMetrics | None = None,
    ) -> None:
        self.journal = journal
        self.store = store
        self.events = events
        self.settings = settings
        self.node = node
        self.source_name = source_name
        self.metrics = metrics or archiver_metrics()
        self._targets = {s.database.uid: _Target(s) for s in sources}
        self._cache: dict[str, Entry] = {}
        #: Keys with work to do (discovered or stored), and keys not yet released.
        self._pending: set[str] = set()
        self._open: set[str] = set()
        #: `_pending` in dispatch order; rebuilt only when a log is added, so draining a big
        #: backlog costs O(parallelism) per dispatch, not a sort of the whole backlog.
        self._order: deque[str] | None = None
        self._alarms: set[asyncio.Task[None]] = set()
        self._next_try: dict[str, float] = {}
        self._inflight: dict[str, asyncio.Task[None]] = {}
        self._wake = asyncio.Event()
        self._scan_now = True
        self._stopping = False

    # -- what status and the gauges read -------------------------------------------------------

    def backlogs(self) -> dict[str, Backlog]:
        return {uid: t.backlog for uid, t in self._targets.items()}

    def entry(self, key: str) -> Entry | None:
        return self._cache.get(key)

    def _remember(self, entry: Entry) -> Entry:
        self._cache[entry.key] = entry
        if entry.state in _ACTIVE:
            if entry.key not in self._pending:
                self._pending.add(entry.key)
                self._order = None
        else:
            self._pending.discard(entry.key)
            self._next_try.pop(entry.key, None)
        if entry.state is LogState.RELEASED:
            self._open.discard(entry.key)
        else:
            self._open.add(entry.key)
        return entry

    # -- the loop ------------------------------------------------------------------------------

    async def run(self) -> None:
        """Archive until `stop` is called."""
        loop = asyncio.get_running_loop()
        for entry in await asyncio.to_thread(self.journal.entries):
            self._remember(entry)
        self.metrics.watch(self.backlogs)
        next_scan = next_prune = 0.0
        try:
            while not self._stopping:
                now = loop.time()
                try:
                    if now >= next_prune:
                        next_prune = now + PRUNE_EVERY_S
                        await self._prune()
                    await self._claim_all(now)
                    if self._scan_now or now >= next_scan:
                        self._scan_now = False
                        next_scan = now + self.settings.rescan_s
                        for target in self._targets.values():
                            if target.claimed:
                                await self._scan(target)
                        self._refresh_backlogs()
                    self._dispatch(loop.time())
                except Exception:  # the journal's disk, say: keep trying, loudly
                    log.exception("archiver loop failed; retrying")
                    next_scan = loop.time() + self.settings.retry_max_s
                now = loop.time()
                # Only future times: a log that is due but has no free slot waits for a slot
                # (a finished task wakes us), not in a busy loop.
                later = [*self._next_try.values()]
                later += [t.retry_claim_at for t in self._targets.values() if not t.claimed]
                wake_at = min([next_scan, *(t for t in later if t > now)])
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), max(0.0, wake_at - now))
                self._wake.clear()
        finally:
            self.metrics.unwatch(self.backlogs)
            for target in self._targets.values():
                target.source.close()
                if target.listener is not None:
                    target.listener.close()

    async def stop(self, timeout: float = 10.0) -> None:
        """Stop starting work; let logs in flight finish (or cancel them after `timeout`)."""
        self._stopping = True
        self._wake.set()
        tasks = [*self._inflight.values(), *self._alarms]
        if tasks:
            _done, pending = await asyncio.wait(tasks, timeout=timeout)
            for task in pending:
                task.cancel()  # the journal is a step behind at worst: resumed on restart
            if pending:
                await asyncio.wait(pending)

    def poke(self) -> None:
        """Look at the sources now (a notify datagram, or a test)."""
        self._scan_now = True
        self._wake.set()

    def _notified(self, target: _Target, names: list[str]) -> None:
        """Datagrams from the writer: look now, unless they only say walpush is waiting for
        files the last discovery found already (`?<file>`: the streamer has them in hand)."""
        waiting = {n[len(WAITING) :] for n in names if n.startswith(WAITING)}
        others = [n for n in names if not n.startswith(WAITING)]
        if others or not waiting <= target.known_names:
            self.poke()

    # -- claiming prefixes ---------------------------------------------------------------------

    async def _claim_all(self, now: float) -> None:
        for target in self._targets.values():
            if not target.claimed and now >= target.retry_claim_at:
                await self._claim(target, now)

    async def _claim(self, target: _Target, now: float) -> None:
        database = target.source.database
        try:
            target.source.open()
            await claim_prefix(self.store, self.settings.prefix, database.ref)
        except ForeignArchive as exc:
            await self._block(target, exc, now)
            return
        except Exception as exc:  # store down, spool not there yet: say so and try again
            target.backlog.blocked = f"cannot start archiving: {exc}"
            target.retry_claim_at = now + min(RECLAIM_S, self.settings.retry_max_s)
            log.warning("%s: %s", database.uid, target.backlog.blocked)
            return
        target.claimed = True
        target.backlog.blocked = None
        target.alarmed = None
        await asyncio.to_thread(target.source.offer_readahead, True)
        if target.listener is None:
            try:
                sock = target.source.bind_notify()
            except Exception as exc:  # the rescan still finds everything, only later
                log.warning("%s: no notify socket (%s); relying on rescans", target.uid, exc)
            else:
                if sock is not None:
                    target.listener = NotifyListener(
                        sock, lambda names: self._notified(target, names)
                    )
        log.info("archiving %s (%s)", database.uid, database.engine.value)

    async def _block(self, target: _Target, exc: ForeignArchive, now: float) -> None:
        target.claimed = False
        target.backlog.blocked = exc.reason
        target.retry_claim_at = now + RECLAIM_S
        log.error("%s: %s", target.uid, exc.reason)
        if target.alarmed != exc.reason:
            target.alarmed = exc.reason
            await self._alarm(
                target,
                AlarmReason.FOREIGN_ARCHIVE,
                exc.reason,
                owner_system_id=exc.owner_system_id,
            )

    # -- discovery -----------------------------------------------------------------------------

    async def _scan(self, target: _Target) -> None:
        try:
            found = await target.source.discover()
        except ForeignArchive as exc:
            await self._block(target, exc, asyncio.get_running_loop().time())
            return
        except Exception as exc:
            log.warning("%s: discovery failed: %s", target.uid, exc)
            return
        target.known_names = frozenset(logged.name for logged in found.logs)
        fresh = []
        for logged in found.logs:
            key = log_key(self.settings.prefix, logged)
            known = self._cache.get(key)
            if known is None or (
                known.fingerprint != logged.fingerprint
                and (known.state in _REOPENABLE or known.state is LogState.DISCOVERED)
                and key not in self._inflight
            ):
                fresh.append((key, logged, str(log_message_id(logged))))
        if fresh:
            for entry in await asyncio.to_thread(self.journal.discovered, fresh):
                self._next_try.pop(entry.key, None)
                self._remember(entry)
        await self._report_problems(target, found)
        target.backlog.strays = await asyncio.to_thread(self.journal.problem_count, target.uid)
        target.backlog.not_ready = found.not_ready

    async def _report_problems(self, target: _Target, found: Discovery) -> None:
        strays = set()
        for problem in found.problems:
            if problem.log is None:
                strays.add(problem.path)
                await self._report_stray(target, problem)
                continue
            key = log_key(self.settings.prefix, problem.log)
            known = self._cache.get(key)
            if key in self._inflight or not (
                known is None
                or known.state is LogState.DISCOVERED
                # A rejected file that changed and is still bad: report the new trouble.
                or (
                    known.state is LogState.UNREADABLE
                    and known.fingerprint != problem.log.fingerprint
                )
            ):
                continue  # stored already (the file no longer matters), or reported already
            message_id = str(log_message_id(problem.log))
            await self._reject(target, key, problem.log, problem.error, message_id)
        await asyncio.to_thread(self.journal.forget_problems, target.uid, strays)

    async def _report_stray(self, target: _Target, problem: Problem) -> None:
        reason = problem.error.alarm
        is_new = await asyncio.to_thread(
            self.journal.problem_is_new,
            problem.path,
            target.uid,
            problem.fingerprint,
            reason.value,
            problem.error.reason,
        )
        if is_new:
            log.error("%s: %s", target.uid, problem.error.reason)
            await self._alarm(target, reason, problem.error.reason, path=str(problem.path))

    # -- moving logs along ---------------------------------------------------------------------

    def _dispatch(self, now: float) -> None:
        free = self.settings.parallelism - len(self._inflight)
        if free <= 0 or self._stopping:
            return
        if self._order is None:
            # Publishing a stored log first is cheap and unblocks the catalog; then oldest first.
            self._order = deque(
                sorted(
                    self._pending,
                    key=lambda k: (
                        self._cache[k].state is not LogState.STORED,
                        self._cache[k].log.archived_at,
                        k,
                    ),
                )
            )
        while self._order and self._order[0] not in self._pending:
            self._order.popleft()  # done; keys finished further back are skipped below
        for key in self._order:
            if free <= 0:
                break
            entry = self._cache[key]
            if (
                key not in self._pending
                or key in self._inflight
                or self._next_try.get(key, 0.0) > now
                or not self._claimed(entry.database)
            ):
                continue
            target = self._targets[entry.database]
            task = asyncio.create_task(self._advance(target, entry), name=f"archive {key}")
            self._inflight[key] = task
            free -= 1

    def _claimed(self, database: str) -> bool:
        target = self._targets.get(database)
        return target is not None and target.claimed

    async def _advance(self, target: _Target, entry: Entry) -> None:
        key = entry.key
        storing = entry.state is LogState.DISCOVERED
        try:
            if entry.state is LogState.DISCOVERED:
                entry = await self._store(target, entry)
            storing = False
            if entry.state is LogState.STORED:
                entry = await self._publish(entry)
        except (LogNotReady, LogRejected, ChecksumConflict) as exc:
            await self._settle_failure(target, entry, exc)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # store or bus trouble: back off, other logs carry on
            if storing:  # walpush must not wait on a store that fails: it copies instead
                await asyncio.to_thread(target.source.offer_readahead, False)
            await self._retry_later(target, key, f"{type(exc).__name__}: {exc}", count=True)
        finally:
            self._inflight.pop(key, None)
            self._wake.set()

    async def _settle_failure(
        self, target: _Target, entry: Entry, exc: LogNotReady | LogRejected | ChecksumConflict
    ) -> None:
        key = entry.key
        source = target.source
        if source.ahead(entry.log):
            if await asyncio.to_thread(source.decline, entry.log, exc.reason):
                # The writer copies it into the spool; that copy is found, reopens this log
                # and gets the usual checks and alarms. Until then the log waits here.
                log.info("%s: not read ahead (%s); left to the spool", key, exc.reason)
                self._next_try[key] = math.inf
                return
            if isinstance(exc, LogNotReady):
                # Nobody waits for it any more and it was never spooled: report it.
                exc = LogUnreadable(f"{exc.reason}, and it never reached the spool")
        if isinstance(exc, LogNotReady):
            log.info("%s: %s; trying again shortly", key, exc.reason)
            await self._retry_later(target, key, exc.reason, count=False)
        elif isinstance(exc, LogRejected):
            await self._reject(target, key, entry.log, exc, entry.message_id)
        else:
            await self._conflict(target, entry, exc)

    async def _store(self, target: _Target, entry: Entry) -> Entry:
        stored = await store_log(
            self.store,
            entry.key,
            entry.log,
            target.source.check_header,
            compression=self.settings.compression,
            zstd_level=self.settings.zstd_level,
        )
        entry = await asyncio.to_thread(
            self.journal.stored,
            entry.key,
            crc32c=stored.log_digest.crc32c,
            size=stored.log_digest.size,
            compression=stored.compression,
            stored_crc32c=stored.info.crc32c,
        )
        self._remember(entry)
        # Only now, with the object verified and the journal durable, may a writer hear of it.
        await asyncio.to_thread(_tell_source, target.source, entry, stored)
        labels = {"database": target.uid}
        self.metrics.logs.add(1, {**labels, "outcome": "existed" if stored.existed else "stored"})
        if not stored.existed:
            lag = (utcnow() - entry.log.archived_at).total_seconds()
            target.backlog.last_lag_s = lag
            self.metrics.lag.record(max(0.0, lag), {**labels, "kind": entry.log.kind})
            self.metrics.bytes.add(stored.info.size, {**labels, "compression": stored.compression})
        return entry

    async def _publish(self, entry: Entry) -> Entry:
        assert entry.crc32c is not None
        assert entry.size is not None
        message = log_archived(
            entry.log,
            key=entry.key,
            crc32c=entry.crc32c,
            size=entry.size,
            compression=entry.compression or "none",
            node=self.node,
            stored_at=entry.stored_at or utcnow(),
            source=self.source_name,
            message_id=uuid.UUID(entry.message_id),
        )
        await self.events.publish(message)
        return self._remember(await asyncio.to_thread(self.journal.published, entry.key))

    async def _retry_later(self, target: _Target, key: str, error: str, *, count: bool) -> None:
        attempts = await asyncio.to_thread(self.journal.failed_attempt, key, error)
        if count:
            self.metrics.retries.add(1, {"database": target.uid, "error": error.split(":")[0]})
            log.warning("%s: attempt %d failed: %s", key, attempts, error)
        base, cap = self.settings.retry_base_s, self.settings.retry_max_s
        delay = min(cap, base * 2.0 ** max(0, attempts - 1)) if count else base
        self._next_try[key] = asyncio.get_running_loop().time() + delay

    async def _reject(
        self, target: _Target, key: str, logged: LoggedFile, error: LogRejected, message_id: str
    ) -> None:
        entry = await asyncio.to_thread(
            self.journal.rejected,
            key,
            logged,
            LogState.UNREADABLE,
            error.reason,
            message_id=message_id,
        )
        self._remember(entry)
        log.error("%s: %s", key, error.reason)
        await self._alarm(target, error.alarm, error.reason, key=key, path=str(logged.path))

    async def _conflict(self, target: _Target, entry: Entry, exc: ChecksumConflict) -> None:
        updated = await asyncio.to_thread(
            self.journal.rejected,
            entry.key,
            entry.log,
            LogState.CONFLICT,
            exc.reason,
            message_id=entry.message_id,
            crc32c=exc.attempted_crc32c,
        )
        self._remember(updated)
        log.error("ALARM %s", exc.reason)
        await self._alarm(
            target,
            AlarmReason.CHECKSUM_CONFLICT,
            exc.reason,
            key=entry.key,
            path=str(entry.log.path),
            existing_crc32c=exc.existing_crc32c,
            attempted_crc32c=exc.attempted_crc32c,
        )

    async def _alarm(self, target: _Target, reason: AlarmReason, detail: str, **extra: Any) -> None:
        """Raise an alarm without waiting for it: with NATS down, publishing retries for a
        while, and that must not stall discovery or other logs."""
        self.metrics.alarms.add(1, {"database": target.uid, "reason": reason.value})
        message = archive_alarm(
            target.source.database.ref,
            reason,
            detail,
            node=self.node,
            source=self.source_name,
            **extra,
        )
        task = asyncio.create_task(self._send_alarm(message, target.uid))
        self._alarms.add(task)
        task.add_done_callback(self._alarms.discard)

    async def _send_alarm(self, message: Envelope[Any], uid: str) -> None:
        try:
            await self.events.publish(message)
        except Exception as exc:  # the journal, the status line and the log still carry it
            log.error("could not publish alarm for %s: %s", uid, exc)

    async def _prune(self) -> None:
        keep = timedelta(days=self.settings.journal_keep_days)
        pruned = await asyncio.to_thread(self.journal.prune_released, utcnow() - keep)
        for key in pruned:
            self._cache.pop(key, None)

    # -- release (log.indexed) -----------------------------------------------------------------

    async def release(self, key: str, crc32c: str) -> LogState | None:
        """Give up the local copy of `key` if the journal holds it stored with `crc32c`.

        Returns the log's state afterwards (None: not a log of this node). Raises
        `NotReleasable` while the log is not stored yet or still being published, and
        `ValueError` when the catalog names another checksum.
        """
        entry = self._cache.get(key) or await asyncio.to_thread(self.journal.get, key)
        if entry is None or entry.state is LogState.RELEASED:
            return None if entry is None else entry.state
        if entry.state in (LogState.CONFLICT, LogState.UNREADABLE):
            return entry.state  # not ours to release: an operator decides
        if entry.state is LogState.DISCOVERED or key in self._inflight:
            raise NotReleasable(f"{key} is not stored yet on this node")
        if entry.crc32c != crc32c:
            raise ValueError(
                f"{key}: the catalog indexed crc32c {crc32c}, this node stored {entry.crc32c}; "
                "the local copy is kept"
            )
        target = self._targets.get(entry.database)
        if target is not None:
            await target.source.release(entry.log)
        return self._remember(await asyncio.to_thread(self.journal.released, key)).state

    # -- backlog -------------------------------------------------------------------------------

    def _refresh_backlogs(self) -> None:
        now = utcnow()
        stats: dict[str, Backlog] = {uid: Backlog() for uid in self._targets}
        for key in self._open:
            entry = self._cache[key]
            b = stats.get(entry.database)
            if b is None:
                continue
            if entry.state is LogState.DISCOVERED:
                b.logs += 1
                b.bytes += entry.log.size
                wait = (now - entry.log.archived_at).total_seconds()
                b.oldest_wait_s = max(b.oldest_wait_s or 0.0, wait)
            elif entry.state is LogState.STORED:
                b.unpublished += 1
            elif entry.state is LogState.PUBLISHED:
                b.unreleased += 1
            elif entry.state is LogState.CONFLICT:
                b.conflicts += 1
            elif entry.state is LogState.UNREADABLE:
                b.unreadable += 1
        for uid, target in self._targets.items():
            fresh, kept = stats[uid], target.backlog
            kept.logs, kept.bytes, kept.oldest_wait_s = fresh.logs, fresh.bytes, fresh.oldest_wait_s
            kept.unpublished, kept.unreleased = fresh.unpublished, fresh.unreleased
            kept.conflicts, kept.unreadable = fresh.conflicts, fresh.unreadable


def _tell_source(source: LogSource, entry: Entry, stored: Stored) -> None:
    """After a log is stored and journaled (blocking): mark it for a waiting writer, and renew
    the offer to read ahead, since the store evidently works."""
    if source.ahead(entry.log):
        source.stored(entry.log, stored.identity, stored.log_digest.crc32c, entry.key)
    source.offer_readahead(True)
