"""The catalog's gauges: each database's restorable window as its index holds it now.

| name | kind | unit | attributes | meaning |
|---|---|---|---|---|
| tidemark.rpo | observable gauge | s | database | now minus the end of the newest window |
| tidemark.window.start_timestamp | observable gauge | s | database | first recoverability point |
| tidemark.window.end_timestamp | observable gauge | s | database | newest restorable time |
| tidemark.last_backup.timestamp | observable gauge | s | database | newest completed backup |
| tidemark.catalog.catching_up | observable gauge | | replica | 1 while catching up |
| tidemark.catalog.replay_left | observable gauge | {event} | replica | events left to replay |

Read from the index at each collection (the current lineage's windows, as `tidemark status`
shows them); a database without a window reports no window points, one without a backup no
backup point — "absent" is what an alert on a missing window must see, not a zero (1970).
A catalog catching up with its stream (`catchup.py`) refuses its queries meanwhile; the two
`tidemark.catalog.*` gauges say so per replica. The names are stable: dashboards and alerts
depend on them (`docs/observability.md`).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from functools import cache

from opentelemetry import metrics as otel_metrics
from opentelemetry.metrics import CallbackOptions, Meter, Observation

from schemas import utcnow
from services.catalog.catchup import CatchUp
from services.catalog.index import CatalogIndex


@dataclass(frozen=True, slots=True)
class WindowPoint:
    """One database's window, in seconds since the epoch."""

    database: str
    start: float | None
    end: float | None
    rpo_s: float | None
    last_backup: float | None


def window_points(index: CatalogIndex) -> list[WindowPoint]:
    now = utcnow()
    points = []
    for summary in index.summaries(now=now):
        uid = summary.database.uid
        backups = index.database(uid).backups.values()
        newest = max((b.completed_at for b in backups), default=None)
        points.append(
            WindowPoint(
                database=uid,
                start=summary.window_start_time.timestamp() if summary.window_start_time else None,
                end=summary.window_end_time.timestamp() if summary.window_end_time else None,
                rpo_s=summary.rpo_lag_s,
                last_backup=newest.timestamp() if newest else None,
            )
        )
    return points


#: One collection calls the four callbacks in a row: the index is read once for them.
_FRESH_S = 1.0


class CatalogMetrics:
    """The instruments, created once per meter; a catalog service `watch`es its index."""

    def __init__(self, meter: Meter | None = None) -> None:
        meter = meter or otel_metrics.get_meter("tidemark.catalog")
        self._indexes: list[CatalogIndex] = []
        self._read_at = -_FRESH_S
        self._points: list[WindowPoint] = []
        gauges: list[tuple[str, str, Callable[[WindowPoint], float | None]]] = [
            ("tidemark.rpo", "now minus the newest restorable time", lambda p: p.rpo_s),
            ("tidemark.window.start_timestamp", "first recoverability point", lambda p: p.start),
            ("tidemark.window.end_timestamp", "newest restorable time", lambda p: p.end),
            ("tidemark.last_backup.timestamp", "newest completed backup", lambda p: p.last_backup),
        ]
        for name, description, value in gauges:
            meter.create_observable_gauge(
                name, callbacks=[self._observer(value)], unit="s", description=description
            )
        self._catchups: dict[str, CatchUp] = {}
        meter.create_observable_gauge(
            "tidemark.catalog.catching_up",
            callbacks=[self._catching_up],
            # No unit: "1" would be exported as `..._ratio`, which a flag is not.
            unit="",
            description="1 while the catalog catches up with its stream; queries are refused",
        )
        meter.create_observable_gauge(
            "tidemark.catalog.replay_left",
            callbacks=[self._replay_left],
            unit="{event}",
            description="events still to replay while the catalog catches up",
        )

    def watch_catchup(self, replica: str, catchup: CatchUp) -> None:
        self._catchups[replica] = catchup

    def unwatch_catchup(self, replica: str) -> None:
        self._catchups.pop(replica, None)

    def _catching_up(self, options: CallbackOptions) -> Iterable[Observation]:
        return [
            Observation(int(not c.caught_up), {"replica": replica})
            for replica, c in list(self._catchups.items())
        ]

    def _replay_left(self, options: CallbackOptions) -> Iterable[Observation]:
        return [
            Observation(c.left or 0, {"replica": replica})
            for replica, c in list(self._catchups.items())
        ]

    def watch(self, index: CatalogIndex) -> None:
        self._indexes.append(index)

    def unwatch(self, index: CatalogIndex) -> None:
        if index in self._indexes:
            self._indexes.remove(index)

    def _current(self) -> list[WindowPoint]:
        now = time.monotonic()
        if now - self._read_at >= _FRESH_S:
            self._points = [p for index in list(self._indexes) for p in window_points(index)]
            self._read_at = now
        return self._points

    def _observer(
        self, value: Callable[[WindowPoint], float | None]
    ) -> Callable[[CallbackOptions], Iterable[Observation]]:
        def observe(options: CallbackOptions) -> Iterable[Observation]:
            return [
                Observation(v, {"database": p.database})
                for p in self._current()
                if (v := value(p)) is not None
            ]

        return observe


@cache
def catalog_metrics() -> CatalogMetrics:
    """The process's instruments on the global meter provider."""
    return CatalogMetrics()
