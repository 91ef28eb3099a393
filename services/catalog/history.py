"""One database's redo history and the recoverability rule over it.

Positions are plain integers here (SCN or LSN; a database has one engine, so they never mix).

For a restore base B (start S_B, consistent point M_B) on lineage Lb, and a target lineage L
that is Lb or one of its descendants, walk the lineage path Lb → … → L:

- on each lineage, every thread's chain must run on from the point the walk enters it (S_B on
  Lb, the branch point on a child): E = min over threads of the end of the covered interval that
  reaches that point. A thread disabled on a stretch (Oracle: DISABLE THREAD) has no redo
  there, so the stretch counts as covered: from its disable (or the end of its last log before
  it, once that log is indexed) to where it was enabled again or last seen still disabled, and
  never past a log of it that begins inside;
- to continue into a child that branched at P, the parent's chain must reach P and B must be
  consistent before it (M_B < P);
- on L the window is (max(M_B, P_L), E_L].

The windows of L are the union over bases. Each thread's coverage is an `IntervalSet`, updated
per log, so a query costs a few binary searches per base instead of a scan of every log. The
same goes for what the views need besides windows: each lineage's earliest and latest log time
is a sorted list updated per log, and a time is placed on a thread by binary search.
"""

from __future__ import annotations

from bisect import bisect_left, bisect_right, insort
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime
from typing import NamedTuple

from services.catalog.intervals import IntervalSet


class HistoryConflict(ValueError):
    """The same log (lineage, thread, sequence) arrived twice with different ranges."""


class LogEntry(NamedTuple):
    """One log in the chain. A named tuple, immutable like the rest: there is one per log, a
    million of them built at start-up, and a tuple is built three times faster than a frozen
    dataclass and is half its size."""

    lineage: str
    thread: int
    sequence: int
    first: int
    next: int
    first_time: datetime | None = None
    next_time: datetime | None = None


@dataclass(frozen=True)
class BaseEntry:
    """A backup as a restore base. An incremental (RMAN level 1) is a base only with its whole
    chain: `parent` names the backup it applies to, down to a full one."""

    backup_id: str
    lineage: str
    start: int
    consistent: int
    completed_at: datetime
    incremental: bool = False
    parent: str | None = None


@dataclass(frozen=True)
class LineageEntry:
    key: str
    parent: str | None = None
    branch_at: int | None = None  # where the child starts, as a position on the parent


@dataclass(frozen=True)
class Window:
    """Targets T with `start < T <= end` are restorable on `lineage`."""

    lineage: str
    start: int
    end: int
    start_time: datetime | None
    end_time: datetime | None
    bases: tuple[str, ...]


@dataclass(frozen=True)
class Gap:
    lineage: str
    thread: int
    after_sequence: int | None
    before_sequence: int | None
    start: int
    end: int | None

    def describe(self, position_text: Callable[[int], str] = str) -> str:
        """In words; `position_text` writes a position as the engine does (`0/8000000`)."""
        if self.after_sequence is not None and self.before_sequence is not None:
            missing = f"sequences {self.after_sequence + 1}..{self.before_sequence - 1}"
            if self.before_sequence - self.after_sequence == 2:
                missing = f"sequence {self.after_sequence + 1}"
        elif self.after_sequence is not None:
            missing = f"logs after sequence {self.after_sequence}"
        else:
            missing = "logs"
        return f"gap at thread {self.thread} {missing} (from position {position_text(self.start)})"


@dataclass(frozen=True)
class Verdict:
    restorable: bool
    # ok | unknown_lineage | no_backup | before_lineage | before_first_backup | gap
    # | beyond_last_log
    code: str
    reason: str
    base: str | None = None
    window: Window | None = None
    gap: Gap | None = None
    nearest_before: int | None = None
    nearest_after: int | None = None


_Contribution = tuple[int, int, BaseEntry, int | None]
"""What one base gives a lineage: targets in (lower, E], and the thread whose chain ends at E."""


@dataclass
class _Thread:
    cover: IntervalSet = field(default_factory=IntervalSet)
    firsts: list[int] = field(default_factory=list)
    by_first: dict[int, LogEntry] = field(default_factory=dict)
    by_next: dict[int, LogEntry] = field(default_factory=dict)
    by_seq: dict[int, LogEntry] = field(default_factory=dict)


class History:
    """Logs, bases and lineages of one database, with incremental coverage per thread."""

    def __init__(self, position_text: Callable[[int], str] = str) -> None:
        self.position_text = position_text
        """How a reason writes a position: an LSN as `0/8000000`, an SCN as its number."""
        self.lineages: dict[str, LineageEntry] = {}
        self.bases: dict[str, BaseEntry] = {}
        self._threads: dict[str, dict[int, _Thread]] = {}
        # Every first and next time of each lineage's logs, sorted: its span is the two ends.
        # A min/max pair could not be kept when the oldest log is deleted without a rescan.
        self._times: dict[str, list[datetime]] = {}
        # Each lineage's windows and what every base contributes to them, as of the last
        # change: asked for by every query and after every ingested batch, and with hundreds of
        # bases worth remembering. Any change forgets them all.
        self._answers: dict[str, tuple[list[_Contribution], list[Window]]] = {}
        # The threads each lineage must have a chain on: those the archiver reported enabled
        # and those logs were seen on. Never forgotten when logs go: a thread whose every log
        # was deleted still has to be recovered, and knowing it only through its remaining
        # logs made a restart bring back windows a deletion had closed.
        self._reported: dict[str, set[int]] = {}
        self._seen: dict[str, set[int]] = {}
        # Per lineage, (thread, disabled at) -> (last sequence before, no redo up to): the
        # stretches threads were disabled on (`add_disable`). Kept when logs go, like threads.
        self._disabled: dict[str, dict[tuple[int, int], tuple[int, int]]] = {}

    # -- updates --------------------------------------------------------------------------------

    def add_lineage(self, entry: LineageEntry) -> None:
        self._answers.clear()
        self.lineages[entry.key] = entry

    def add_base(self, base: BaseEntry) -> None:
        self._answers.clear()
        self.lineages.setdefault(base.lineage, LineageEntry(base.lineage))
        self.bases[base.backup_id] = base

    def remove_base(self, backup_id: str) -> bool:
        self._answers.clear()
        return self.bases.pop(backup_id, None) is not None

    def add_threads(self, lineage: str, threads: Iterable[int], *, reported: bool) -> None:
        """Remember threads of `lineage`: `reported` by the archiver as enabled, or seen on a
        log. Knowledge only grows, so the answer is the same whatever order the facts came in."""
        known = (self._reported if reported else self._seen).setdefault(lineage, set())
        new = set(threads) - known
        if new:
            self._answers.clear()
            known.update(new)

    def known_threads(self, lineage: str) -> tuple[set[int], set[int]]:
        """(reported, seen) threads of `lineage`: what the store keeps of them."""
        return set(self._reported.get(lineage, ())), set(self._seen.get(lineage, ()))

    def required_threads(self, lineage: str) -> list[int]:
        """The threads whose chains bound a window on `lineage`, in order.

        Those the archiver reported enabled, and every thread a log was seen on; a lineage
        with no report at all (a producer that predates it) also takes its parent's, since a
        new incarnation of a two-thread database does not drop a thread by having logs on one.
        """
        required: set[int] = set()
        seen: set[str] = set()
        key: str | None = lineage
        while key is not None and key not in seen:
            seen.add(key)
            required |= self._seen.get(key, set()) | self._reported.get(key, set())
            if self._reported.get(key):
                break
            entry = self.lineages.get(key)
            key = entry.parent if entry is not None else None
        return sorted(required)

    def add_disable(
        self, lineage: str, thread: int, at: int, last_sequence: int, until: int
    ) -> None:
        """Remember that `thread` of `lineage` was disabled at `at`, after its log
        `last_sequence`, and has no redo up to `until`. Reports of one disable only extend it
        (the highest `until` and sequence), so the answer is the same whatever order they came
        in: an older report saw it disabled for less long, never for longer than it was."""
        stretches = self._disabled.setdefault(lineage, {})
        known = stretches.get((thread, at))
        merged = (
            (last_sequence, until)
            if known is None
            else (max(known[0], last_sequence), max(known[1], until))
        )
        if merged != known:
            self._answers.clear()
            stretches[(thread, at)] = merged

    def known_disables(self, lineage: str) -> dict[tuple[int, int], tuple[int, int]]:
        """(thread, disabled at) -> (last sequence, until) of `lineage`: what the store keeps."""
        return dict(self._disabled.get(lineage, {}))

    def absent(self, lineage: str, number: int) -> list[tuple[int, int]]:
        """The `[start, end)` stretches where thread `number` of `lineage` has no redo.

        A stretch starts at the disable, or at the end of the thread's last log before it when
        that log is indexed (nothing was written between them: the thread was closed, and
        only a closed thread can be disabled). Without that log it starts at the disable, so
        the missing log is still a gap. It ends where the thread was enabled again or was last
        seen still disabled, and before any log of the thread past the disable that begins
        inside it: that log is redo, whatever a report said.
        """
        stretches = []
        thread = self.threads(lineage).get(number)
        for (t, at), (last_sequence, until) in self._disabled.get(lineage, {}).items():
            if t != number:
                continue
            start, end = at, until
            if thread is not None:
                last = thread.by_seq.get(last_sequence)
                if last is not None:
                    start = min(start, last.next)
                i = bisect_left(thread.firsts, start)
                while i < len(thread.firsts) and thread.firsts[i] < end:
                    log = thread.by_first[thread.firsts[i]]
                    if log.sequence > last_sequence:
                        end = log.first
                        break
                    i += 1
            if end > start:
                stretches.append((start, end))
        return sorted(stretches)

    def add_log(self, log: LogEntry) -> bool:
        """Index a log; False if it was already there. Raises HistoryConflict on a mismatch."""
        self.lineages.setdefault(log.lineage, LineageEntry(log.lineage))
        self.add_threads(log.lineage, (log.thread,), reported=False)
        thread = self._threads.setdefault(log.lineage, {}).setdefault(log.thread, _Thread())
        known = thread.by_seq.get(log.sequence)
        if known is not None:
            if (known.first, known.next) != (log.first, log.next):
                raise HistoryConflict(
                    f"{log.lineage} thread {log.thread} sequence {log.sequence} already covers "
                    f"[{known.first}, {known.next}), not [{log.first}, {log.next})"
                )
            return False
        self._answers.clear()
        thread.by_seq[log.sequence] = log
        thread.by_first[log.first] = log
        thread.by_next[log.next] = log
        insort(thread.firsts, log.first)
        thread.cover.add(log.first, log.next)
        times = self._times.setdefault(log.lineage, [])
        for at in (log.first_time, log.next_time):
            if at is not None:
                insort(times, at)
        return True

    def remove_log(self, lineage: str, thread_no: int, sequence: int) -> bool:
        thread = self._threads.get(lineage, {}).get(thread_no)
        log = thread.by_seq.pop(sequence, None) if thread else None
        if thread is None or log is None:
            return False
        self._answers.clear()
        thread.by_first.pop(log.first, None)
        thread.by_next.pop(log.next, None)
        i = bisect_right(thread.firsts, log.first) - 1
        if i >= 0 and thread.firsts[i] == log.first:
            del thread.firsts[i]
        thread.cover.remove(log.first, log.next)
        times = self._times.get(lineage, [])
        for at in (log.first_time, log.next_time):
            if at is not None:
                j = bisect_left(times, at)
                if j < len(times) and times[j] == at:
                    del times[j]
        return True

    # -- what the views ask besides windows ------------------------------------------------------

    def time_span(self, lineage: str) -> tuple[datetime | None, datetime | None]:
        """The earliest and the latest time any log of `lineage` states."""
        times = self._times.get(lineage)
        return (times[0], times[-1]) if times else (None, None)

    def reached_at(self, lineage: str, at: datetime) -> int | None:
        """Where the chain has certainly passed time `at`: the end of the first log, in position
        order, whose end time is `at` or later, on the first thread (in arrival order) that has
        one.

        A binary search, since a thread's redo is written in order and its end times grow with
        its positions. Were they ever out of order, the search still returns a log that ends at
        or after `at`, at worst a later one than a scan would: a plan that reads more, never one
        that stops short.
        """
        for thread in self.threads(lineage).values():
            i = bisect_left(thread.firsts, True, key=_ends_by(thread, at))
            if i < len(thread.firsts):
                return thread.by_first[thread.firsts[i]].next
        return None

    # -- the rule ---------------------------------------------------------------------------------

    def threads(self, lineage: str) -> dict[int, _Thread]:
        return self._threads.get(lineage, {})

    def chain_end(self, lineage: str, point: int) -> tuple[int, int | None]:
        """How far every required thread's chain runs from `point`: (E, the thread that limits
        it). A required thread without a log there stops it at `point`."""
        threads = self.threads(lineage)
        required = self.required_threads(lineage)
        if not required:
            return point, None
        disabled = {t for t, _ in self._disabled.get(lineage, {})}
        end: int | None = None
        limiting: int | None = None
        for number in required:
            thread = threads.get(number)
            if number in disabled:
                thread_end = self._reach(thread, self.absent(lineage, number), point)
            else:
                reach = thread.cover.reaching(point) if thread is not None else None
                thread_end = reach[1] if reach is not None else point
            if end is None or thread_end < end:
                end, limiting = thread_end, number
        assert end is not None
        return end, limiting

    @staticmethod
    def _reach(thread: _Thread | None, absent: list[tuple[int, int]], point: int) -> int:
        """How far a thread's chain runs from `point` through its logs and the stretches it has
        no redo on, one after the other; `point` itself when neither reaches it."""
        stretches = IntervalSet()
        for start, end in absent:
            stretches.add(start, end)
        at = point
        while True:
            reached = [
                found[1]
                for found in (
                    thread.cover.reaching(at) if thread is not None else None,
                    stretches.reaching(at),
                )
                if found is not None
            ]
            if not reached or max(reached) <= at:
                return at
            at = max(reached)

    def entry_point(self, lineage: str, branch: int) -> int:
        """Where the parent's chain must reach to continue into `lineage`, branched at `branch`.

        Oracle logs of a new incarnation begin exactly at the resetlogs SCN. A PostgreSQL
        timeline's first segment begins at the segment boundary before the switch and holds a
        copy of the parent's WAL up to it, so the parent only has to reach that boundary.
        """
        starts = []
        for thread in self.threads(lineage).values():
            reach = thread.cover.containing(branch)
            if reach is not None:
                starts.append(reach[0])
        return min(branch, max(starts)) if starts else branch

    def path(self, ancestor: str, lineage: str) -> list[str] | None:
        """Lineage keys from `ancestor` down to `lineage`, or None if not a descendant."""
        chain = [lineage]
        seen = {lineage}
        current = self.lineages.get(lineage)
        while current is not None and current.key != ancestor:
            if current.parent is None or current.parent in seen:
                return None
            seen.add(current.parent)
            chain.append(current.parent)
            current = self.lineages.get(current.parent)
        if current is None:
            return None
        return list(reversed(chain))

    def chain_of(self, base: BaseEntry) -> list[BaseEntry] | None:
        """`base` and every backup it depends on, down to a full one; None when a link is
        missing (deleted, never seen, or an incremental that names no parent)."""
        chain = [base]
        seen = {base.backup_id}
        current = base
        while current.incremental:
            parent = self.bases.get(current.parent) if current.parent is not None else None
            if parent is None or parent.backup_id in seen:
                return None
            seen.add(parent.backup_id)
            chain.append(parent)
            current = parent
        return chain

    def has_whole_chain(self, base: BaseEntry) -> bool:
        return self.chain_of(base) is not None

    def base_window(self, base: BaseEntry, lineage: str) -> tuple[int, int, int | None] | None:
        """(lower, E, limiting thread) of base on lineage, or None when it cannot reach it."""
        path = self.path(base.lineage, lineage)
        if path is None:
            return None
        point, lower = base.start, base.consistent
        for i, key in enumerate(path):
            end, limiting = self.chain_end(key, point)
            if i == len(path) - 1:
                return (lower, end, limiting) if end > lower else None
            branch = self.lineages[path[i + 1]].branch_at
            if branch is None or lower >= branch or end < self.entry_point(path[i + 1], branch):
                return None
            point = lower = branch
        return None

    def contributions(self, lineage: str) -> list[_Contribution]:
        """(lower, E, base, limiting thread) of every base that reaches `lineage`."""
        return self._answer(lineage)[0]

    def windows(self, lineage: str) -> list[Window]:
        """The restorable windows of a lineage, oldest first."""
        return list(self._answer(lineage)[1])

    def _answer(self, lineage: str) -> tuple[list[_Contribution], list[Window]]:
        if lineage not in self._answers:
            contributions: list[_Contribution] = []
            for base in self.bases.values():
                if not self.has_whole_chain(base):
                    continue
                found = self.base_window(base, lineage)
                if found is not None:
                    lower, end, limiting = found
                    contributions.append((lower, end, base, limiting))
            self._answers[lineage] = (contributions, self._union(lineage, contributions))
        return self._answers[lineage]

    def _union(self, lineage: str, contributions: list[_Contribution]) -> list[Window]:
        union = IntervalSet()
        for lower, end, _, _ in contributions:
            union.add(lower + 1, end + 1)  # (lower, end] as a half-open integer interval
        # Each contribution lies inside exactly one window of the union: find it by the window
        # starts (a bisection) instead of testing every contribution against every window.
        spans = union.intervals()
        starts = [start_plus - 1 for start_plus, _ in spans]
        grouped: list[list[_Contribution]] = [[] for _ in spans]
        for contribution in contributions:
            grouped[bisect_right(starts, contribution[0]) - 1].append(contribution)
        windows = []
        for (start_plus, end_plus), inside in zip(spans, grouped, strict=True):
            start, end = start_plus - 1, end_plus - 1
            opening = [c for c in inside if c[0] == start]
            closing = [c for c in inside if c[1] == end]
            start_time = self._start_time(lineage, start, opening)
            end_time = self._end_time(lineage, end, closing)
            if start_time is not None and end_time is not None and end_time < start_time:
                # Just after a first backup its last log was archived before the backup
                # completed: by position the window is open, by time not yet (no moment is
                # known to lie after the base's completion and before the logs' end). An empty
                # time span says so; one that ends before it starts said nonsense.
                start_time = end_time
            windows.append(
                Window(
                    lineage=lineage,
                    start=start,
                    end=end,
                    start_time=start_time,
                    end_time=end_time,
                    bases=tuple(sorted(c[2].backup_id for c in inside)),
                )
            )
        return windows

    def _start_time(
        self, lineage: str, start: int, opening: list[_Contribution]
    ) -> datetime | None:
        own = [
            c[2].completed_at
            for c in opening
            if c[2].lineage == lineage and c[0] == c[2].consistent
        ]
        if own:
            # Conservative: a base is only a base once it completed.
            return min(own)
        for thread in self.threads(lineage).values():
            log = thread.by_first.get(start) or _containing(thread, start)
            if log is not None and log.first_time is not None:
                return log.first_time
        inherited = [c[2].completed_at for c in opening if c[2].lineage != lineage]
        if inherited:
            # The window opens at the branch from a parent lineage, and its bases are up there
            # (PostgreSQL segments carry no first time to read the branch moment from). In time,
            # the lineage's history is its parent's up to the branch: recovery along it to a
            # moment before the branch stops on the parent's part, at that moment. So the
            # window reaches back, in time, to where its bases became bases.
            return min(inherited)
        return None

    def _end_time(self, lineage: str, end: int, closing: list[_Contribution]) -> datetime | None:
        for _, _, _, limiting in closing:
            if limiting is None:
                continue
            thread = self.threads(lineage).get(limiting)
            log = thread.by_next.get(end) if thread is not None else None
            if log is not None:
                return log.next_time
        if closing and self._disabled.get(lineage):
            # The window ends where a disabled thread was last seen disabled, not at a log's
            # end: a log that holds `end` began before it, so its first time is not later.
            for thread in self.threads(lineage).values():
                log = thread.by_next.get(end) or _containing(thread, end)
                if log is not None:
                    return log.next_time if log.next == end else log.first_time
        return None

    def check(self, lineage: str, target: int) -> Verdict:
        """Is `target` restorable on `lineage`? If not, why, and what is nearest."""
        if lineage not in self.lineages:
            return Verdict(False, "unknown_lineage", f"no history on lineage {lineage}")
        windows = self.windows(lineage)
        for window in windows:
            if window.start < target <= window.end:
                base = self.best_base(lineage, target)
                return Verdict(True, "ok", "restorable", base=base, window=window)
        before = max((w.end for w in windows if w.end < target), default=None)
        after = min((w.start + 1 for w in windows if w.start >= target), default=None)

        def refuse(code: str, reason: str, gap: Gap | None = None) -> Verdict:
            return Verdict(False, code, reason, gap=gap, nearest_before=before, nearest_after=after)

        entry = self.lineages[lineage]
        if entry.branch_at is not None and target <= entry.branch_at:
            return refuse(
                "before_lineage",
                f"{lineage} starts at {entry.branch_at}; target the parent lineage "
                f"{entry.parent} instead",
            )
        usable = [
            b
            for b in self.bases.values()
            if self.path(b.lineage, lineage) is not None and self.has_whole_chain(b)
        ]
        if not usable:
            return refuse("no_backup", f"no backup on the path to {lineage}")
        if not windows or target <= windows[0].start:
            first = windows[0].start if windows else min(b.consistent for b in usable)
            return refuse(
                "before_first_backup",
                f"before the first restorable point: the oldest backup is consistent at {first}",
            )
        if target > windows[-1].end:
            gap = self._gap_after(lineage, windows[-1].end)
            if gap is not None and gap.before_sequence is not None:
                return refuse("gap", gap.describe(self.position_text), gap)
            return refuse(
                "beyond_last_log",
                "beyond the last archived log: restorable up to "
                + self.position_text(windows[-1].end),
            )
        gap = self._gap_after(lineage, before if before is not None else windows[0].end)
        reason = (
            gap.describe(self.position_text)
            if gap
            else "not covered by any retained backup and log chain"
        )
        return refuse("gap", reason, gap)

    def _gap_after(self, lineage: str, end: int) -> Gap | None:
        """The hole that stops the chain at `end`: the limiting thread and missing sequences."""
        _, limiting = self.chain_end(lineage, end)
        if limiting is None:
            return None
        thread = self.threads(lineage).get(limiting)
        if thread is None:
            # An enabled thread with no log left on this lineage: the whole thread is the gap.
            return Gap(lineage, limiting, None, None, end, None)
        last = thread.by_next.get(end)
        following = thread.cover.next_after(end)
        nxt = thread.by_first.get(following[0]) if following else None
        return Gap(
            lineage=lineage,
            thread=limiting,
            after_sequence=last.sequence if last else None,
            before_sequence=nxt.sequence if nxt else None,
            start=end,
            end=nxt.first if nxt else None,
        )

    def best_base(self, lineage: str, target: int) -> str | None:
        """The base needing the least redo: the latest consistent point still before target."""
        best: BaseEntry | None = None
        for lower, end, base, _ in self.contributions(lineage):
            if lower < target <= end and (best is None or base.consistent > best.consistent):
                best = base
        return best.backup_id if best else None

    def logs_for(self, backup_id: str, lineage: str, target: int) -> list[LogEntry]:
        """The logs a restore of `backup_id` to `target` on `lineage` reads, in apply order."""
        base = self.bases[backup_id]
        path = self.path(base.lineage, lineage)
        if path is None:
            return []
        needed: list[LogEntry] = []
        point = base.start
        for i, key in enumerate(path):
            stop = target if i == len(path) - 1 else self.lineages[path[i + 1]].branch_at
            assert stop is not None
            for number in sorted(self.threads(key)):
                thread = self.threads(key)[number]
                log = _containing(thread, point)
                while log is not None and log.first <= stop:
                    needed.append(log)
                    if log.next > stop:
                        break
                    log = thread.by_first.get(log.next)
            if i < len(path) - 1:
                point = stop
        needed.sort(key=lambda log: (path.index(log.lineage), log.first, log.thread))
        return needed


def _ends_by(thread: _Thread, at: datetime) -> Callable[[int], bool]:
    """Whether the log starting at a position of `thread` ends at or after `at`."""

    def ended(first: int) -> bool:
        end = thread.by_first[first].next_time
        return end is not None and end >= at

    return ended


def _containing(thread: _Thread, point: int) -> LogEntry | None:
    i = bisect_right(thread.firsts, point) - 1
    if i < 0:
        return None
    log = thread.by_first[thread.firsts[i]]
    return log if log.first <= point < log.next or (log.first == point == log.next) else None
