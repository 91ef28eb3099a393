"""Half-open integer interval sets: the covered ranges of one thread's log chain.

Logs on a thread cover `[first, next)`; two logs chain when one's `next` equals the other's
`first`, so adjacent intervals merge and a missing log leaves a hole. Inserting or removing one
log touches only its neighbours (binary search), which is what lets the catalog keep windows up
to date per log instead of rescanning the history.
"""

from __future__ import annotations

from bisect import bisect_right


class IntervalSet:
    """Disjoint, non-adjacent `[start, end)` intervals kept sorted."""

    __slots__ = ("_ends", "_starts")

    def __init__(self) -> None:
        self._starts: list[int] = []
        self._ends: list[int] = []

    def __len__(self) -> int:
        return len(self._starts)

    def __iter__(self):  # type: ignore[no-untyped-def]
        return iter(zip(self._starts, self._ends, strict=True))

    def intervals(self) -> list[tuple[int, int]]:
        return list(zip(self._starts, self._ends, strict=True))

    def add(self, start: int, end: int) -> None:
        """Cover `[start, end)`, merging with every interval it touches or overlaps."""
        if end <= start:
            return
        # First interval whose end reaches start (touching counts: [a,b)+[b,c) chain).
        lo = bisect_right(self._ends, start - 1)
        # One past the last interval whose start is at or before end.
        hi = bisect_right(self._starts, end)
        if lo < hi:
            start = min(start, self._starts[lo])
            end = max(end, self._ends[hi - 1])
        self._starts[lo:hi] = [start]
        self._ends[lo:hi] = [end]

    def remove(self, start: int, end: int) -> None:
        """Uncover `[start, end)`, splitting an interval that spans it."""
        if end <= start:
            return
        lo = bisect_right(self._ends, start)
        hi = bisect_right(self._starts, end - 1)
        if lo >= hi:
            return
        keep_s: list[int] = []
        keep_e: list[int] = []
        if self._starts[lo] < start:
            keep_s.append(self._starts[lo])
            keep_e.append(start)
        if self._ends[hi - 1] > end:
            keep_s.append(end)
            keep_e.append(self._ends[hi - 1])
        self._starts[lo:hi] = keep_s
        self._ends[lo:hi] = keep_e

    def containing(self, point: int) -> tuple[int, int] | None:
        """The interval with `start <= point < end`, if any."""
        i = bisect_right(self._starts, point) - 1
        if i >= 0 and point < self._ends[i]:
            return self._starts[i], self._ends[i]
        return None

    def reaching(self, point: int) -> tuple[int, int] | None:
        """The interval containing `point` or ending exactly at it (a chain that reached it)."""
        i = bisect_right(self._starts, point) - 1
        if i >= 0 and point <= self._ends[i]:
            return self._starts[i], self._ends[i]
        return None

    def next_after(self, point: int) -> tuple[int, int] | None:
        """The first interval starting after `point`."""
        i = bisect_right(self._starts, point)
        if i < len(self._starts):
            return self._starts[i], self._ends[i]
        return None
