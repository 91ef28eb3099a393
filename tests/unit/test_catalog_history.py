"""The recoverability rule, incremental, against a brute-force reference over random histories:
several threads, gaps, out-of-order arrival, duplicates, deletions, lineage branches, and bases
with fuzzy (consistent > start) ends."""

from __future__ import annotations

import itertools
import random
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from services.catalog.history import (
    BaseEntry,
    History,
    HistoryConflict,
    LineageEntry,
    LogEntry,
    Window,
)
from services.catalog.intervals import IntervalSet

pytestmark = pytest.mark.unit
T0 = datetime(2026, 1, 1, tzinfo=UTC)


# -- the reference: walks every log, no interval sets -------------------------------------------


def ref_chain_end(logs: list[LogEntry], lineage: str, point: int) -> int:
    threads = {log.thread for log in logs if log.lineage == lineage}
    if not threads:
        return point
    ends = []
    for thread in threads:
        mine = [log for log in logs if log.lineage == lineage and log.thread == thread]
        current = next((log for log in mine if log.first <= point < log.next), None)
        end = point
        while current is not None:
            end = current.next
            current = next((log for log in mine if log.first == end and log.next > end), None)
        ends.append(end)
    return min(ends)


def ref_restorable(
    logs: list[LogEntry],
    bases: list[BaseEntry],
    lineages: dict[str, LineageEntry],
    lineage: str,
    target: int,
) -> bool:
    for base in bases:
        path = [lineage]
        while path[-1] != base.lineage and lineages[path[-1]].parent is not None:
            path.append(lineages[path[-1]].parent or "")
        if path[-1] != base.lineage:
            continue
        path.reverse()
        point, lower, ok = base.start, base.consistent, True
        for i, key in enumerate(path):
            end = ref_chain_end(logs, key, point)
            if i == len(path) - 1:
                if lower < target <= end:
                    return True
                break
            branch = lineages[path[i + 1]].branch_at
            assert branch is not None
            child = [log for log in logs if log.lineage == path[i + 1]]
            starts = [
                min(
                    log.first for log in child if log.thread == t and log.first <= branch < log.next
                )
                for t in {log.thread for log in child}
                if any(log.thread == t and log.first <= branch < log.next for log in child)
            ]
            entry = min(branch, max(starts)) if starts else branch
            if lower >= branch or end < entry:
                ok = False
                break
            point = lower = branch
        if not ok:
            continue
    return False


# -- random histories -------------------------------------------------------------------------


def make_logs(
    rng: random.Random, lineage: str, threads: int, start: int, stop: int, drop: float
) -> list[LogEntry]:
    logs = []
    for thread in range(1, threads + 1):
        position = start + rng.randint(0, 3) if thread > 1 else start
        position = min(position, start)  # every thread has a log reaching the lineage start
        sequence = 1
        while position < stop:
            length = rng.randint(1, 12)
            if rng.random() >= drop:
                logs.append(
                    LogEntry(
                        lineage,
                        thread,
                        sequence,
                        position,
                        position + length,
                        T0 + timedelta(seconds=position),
                        T0 + timedelta(seconds=position + length),
                    )
                )
            position += length
            sequence += 1
    return logs


@st.composite
def histories(
    draw: st.DrawFn,
) -> tuple[list[LogEntry], list[BaseEntry], dict[str, LineageEntry], list[LogEntry]]:
    seed = draw(st.integers(0, 2**32 - 1))
    rng = random.Random(seed)
    threads = draw(st.integers(1, 3))
    drop = draw(st.sampled_from([0.0, 0.05, 0.2]))
    lineages = {"A": LineageEntry("A")}
    logs = make_logs(rng, "A", threads, 0, 160, drop)
    if draw(st.booleans()):
        branch = draw(st.integers(20, 140))
        lineages["B"] = LineageEntry("B", parent="A", branch_at=branch)
        # Oracle: the child's logs begin at the branch; PostgreSQL: at the segment boundary
        # before it, holding a copy of the parent's WAL up to the switch.
        entry = branch - rng.choice([0, 0, 3])
        if entry < branch and rng.random() < 0.5:
            # The parent's last (partial) segment is not in its chain: it ends at the boundary.
            logs = [log for log in logs if log.next <= entry]
        logs += make_logs(rng, "B", threads, entry, 220, drop)
    bases = []
    for i in range(draw(st.integers(0, 4))):
        lineage = rng.choice(sorted(lineages))
        low = lineages[lineage].branch_at or 0
        start = rng.randint(low, 150)
        bases.append(
            BaseEntry(
                f"b{i}", lineage, start, start + rng.randint(0, 15), T0 + timedelta(seconds=start)
            )
        )
    removed = [log for log in logs if rng.random() < 0.05]
    return logs, bases, lineages, removed


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(histories(), st.randoms(use_true_random=False))
def test_incremental_windows_equal_the_reference(
    case: tuple[list[LogEntry], list[BaseEntry], dict[str, LineageEntry], list[LogEntry]],
    rng: random.Random,
) -> None:
    logs, bases, lineages, removed = case
    history = History()
    for entry in lineages.values():
        history.add_lineage(entry)
    arrivals = logs + rng.sample(logs, k=min(len(logs), 5))  # duplicates
    rng.shuffle(arrivals)  # out-of-order arrival

    def ask_now_and_then() -> None:
        # Answers are remembered until the next change: asking between changes must not
        # leave a stale one behind.
        if rng.random() < 0.2:
            for lineage in lineages:
                history.windows(lineage)

    for log in arrivals:
        history.add_log(log)
        ask_now_and_then()
    for base in bases:
        history.add_base(base)
        ask_now_and_then()
    for log in removed:
        assert history.remove_log(log.lineage, log.thread, log.sequence)
        ask_now_and_then()
    kept = [log for log in logs if log not in removed]

    for lineage in lineages:
        windows = history.windows(lineage)
        for target in range(0, 230):
            expected = ref_restorable(kept, bases, lineages, lineage, target)
            in_window = any(w.start < target <= w.end for w in windows)
            verdict = history.check(lineage, target)
            assert in_window == expected, (lineage, target, windows)
            assert verdict.restorable == expected, (lineage, target, verdict)
            if expected:
                assert verdict.base is not None
                base = history.bases[verdict.base]
                plan = history.logs_for(base.backup_id, lineage, target)
                # the plan reads each needed log once, in order, and covers up to the target
                assert len(plan) == len(set(plan))
            else:
                assert verdict.code != "ok"
                assert verdict.reason
        assert_views_equal_the_scans(history, kept, lineage, windows)


def assert_views_equal_the_scans(
    history: History, kept: list[LogEntry], lineage: str, windows: list[Window]
) -> None:
    """What the views keep per log or find by bisection equals a scan of every log and base."""
    times = [
        t for log in kept if log.lineage == lineage for t in (log.first_time, log.next_time) if t
    ]
    assert history.time_span(lineage) == (min(times, default=None), max(times, default=None))
    # A window's bases are those whose own window lies inside it.
    own = {b: history.base_window(history.bases[b], lineage) for b in history.bases}
    for window in windows:
        inside = sorted(
            b
            for b, found in own.items()
            if found and window.start <= found[0] < found[1] <= window.end
        )
        assert list(window.bases) == inside
    # A time is placed on the first thread (in arrival order) that reached it, as a scan would.
    for seconds in range(-5, 235, 7):
        at = T0 + timedelta(seconds=seconds)
        scanned = None
        for thread in history.threads(lineage).values():
            ended = [log for log in thread.by_seq.values() if log.next_time and log.next_time >= at]
            if ended:
                scanned = min(ended, key=lambda log: log.first).next
                break
        assert history.reached_at(lineage, at) == scanned, (lineage, at)


def test_rac_gap_names_thread_and_sequence() -> None:
    history = History()
    for seq in range(1, 11):
        history.add_log(LogEntry("inc-1", 1, seq, seq * 100, (seq + 1) * 100))
        if seq != 6:
            history.add_log(LogEntry("inc-1", 2, seq, seq * 100 + 50, (seq + 1) * 100 + 50))
    history.add_base(BaseEntry("L0", "inc-1", 160, 250, T0))
    verdict = history.check("inc-1", 700)
    assert not verdict.restorable
    assert verdict.code == "gap"
    assert verdict.reason == "gap at thread 2 sequence 6 (from position 650)"
    assert verdict.nearest_before == 650
    assert [(w.start, w.end) for w in history.windows("inc-1")] == [(250, 650)]


def test_before_first_backup_and_beyond_last_log_say_so() -> None:
    history = History()
    for seq in range(1, 5):
        history.add_log(LogEntry("tl-1", 1, seq, seq * 10, (seq + 1) * 10))
    history.add_base(BaseEntry("base", "tl-1", 10, 15, T0))
    assert history.check("tl-1", 15).code == "before_first_backup"
    assert history.check("tl-1", 16).restorable
    assert history.check("tl-1", 50).restorable
    beyond = history.check("tl-1", 51)
    assert beyond.code == "beyond_last_log"
    assert beyond.nearest_before == 50
    assert history.check("tl-9", 20).code == "unknown_lineage"


def test_child_lineage_continues_from_the_branch_point() -> None:
    history = History()
    for seq in range(1, 8):
        history.add_log(LogEntry("inc-1", 1, seq, seq * 10, (seq + 1) * 10))
    history.add_lineage(LineageEntry("inc-2", parent="inc-1", branch_at=45))
    for seq in range(1, 4):
        history.add_log(LogEntry("inc-2", 1, seq, 45 + (seq - 1) * 10, 45 + seq * 10))
    history.add_base(BaseEntry("L0", "inc-1", 10, 20, T0))
    assert [(w.start, w.end) for w in history.windows("inc-1")] == [(20, 80)]
    assert [(w.start, w.end) for w in history.windows("inc-2")] == [(45, 75)]
    assert history.check("inc-2", 45).code == "before_lineage"
    plan = history.logs_for("L0", "inc-2", 60)
    assert [(log.lineage, log.sequence) for log in plan] == [
        ("inc-1", 1),
        ("inc-1", 2),
        ("inc-1", 3),
        ("inc-1", 4),
        ("inc-2", 1),
        ("inc-2", 2),
    ]


def test_a_branch_without_log_times_reaches_back_in_time_to_its_bases() -> None:
    # PostgreSQL: segments carry no first time, and the only base is on the parent timeline.
    history = History()
    for seq in range(1, 8):
        history.add_log(LogEntry("tl-1", 1, seq, seq * 10, (seq + 1) * 10))
    history.add_lineage(LineageEntry("tl-2", parent="tl-1", branch_at=45))
    for seq in range(1, 4):
        at = T0 + timedelta(minutes=10 + seq)
        history.add_log(LogEntry("tl-2", 1, seq, 45 + (seq - 1) * 10, 45 + seq * 10, None, at))
    history.add_base(BaseEntry("L0", "tl-1", 10, 20, T0))
    (window,) = history.windows("tl-2")
    assert (window.start, window.end) == (45, 75)
    assert window.start_time == T0  # the base's completion, up on the parent
    assert window.end_time == T0 + timedelta(minutes=13)


def test_same_sequence_with_another_range_is_a_conflict() -> None:
    history = History()
    history.add_log(LogEntry("tl-1", 1, 7, 70, 80))
    assert history.add_log(LogEntry("tl-1", 1, 7, 70, 80)) is False
    with pytest.raises(HistoryConflict, match="sequence 7 already covers"):
        history.add_log(LogEntry("tl-1", 1, 7, 70, 90))


@given(st.lists(st.tuples(st.booleans(), st.integers(0, 60), st.integers(1, 10)), max_size=40))
def test_interval_set_matches_a_set_of_points(ops: list[tuple[bool, int, int]]) -> None:
    intervals = IntervalSet()
    points: set[int] = set()
    for add, start, length in ops:
        if add:
            intervals.add(start, start + length)
            points |= set(range(start, start + length))
        else:
            intervals.remove(start, start + length)
            points -= set(range(start, start + length))
    covered = {p for s, e in intervals.intervals() for p in range(s, e)}
    assert covered == points
    pairs = intervals.intervals()
    assert all(a[1] < b[0] for a, b in itertools.pairwise(pairs))  # disjoint, not adjacent
