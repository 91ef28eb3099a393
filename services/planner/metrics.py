"""The planner's gauge: when each database's backups were last proven restorable.

| name | kind | unit | attributes | meaning |
|---|---|---|---|---|
| tidemark.last_verification.timestamp | observable gauge | s | database | newest good verdict |

The planner keeps the newest verdict per database in `verify.<uid>` and reads them at start, so
a restarted planner reports what it knew (unless the newest verdict was a failure: then the
point comes back with the next good one, and the overdue alert sees the time pass meanwhile).
The name is stable: dashboards and alerts depend on it (`docs/observability.md`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from functools import cache

from opentelemetry import metrics as otel_metrics
from opentelemetry.metrics import CallbackOptions, Meter, Observation

#: database uid → seconds since the epoch of its last good verification.
VerifiedView = Callable[[], dict[str, float]]


class PlannerMetrics:
    def __init__(self, meter: Meter | None = None) -> None:
        meter = meter or otel_metrics.get_meter("tidemark.planner")
        self._views: list[VerifiedView] = []
        meter.create_observable_gauge(
            "tidemark.last_verification.timestamp",
            callbacks=[self._observe],
            unit="s",
            description="the newest verification that proved a backup restorable",
        )

    def watch(self, view: VerifiedView) -> None:
        self._views.append(view)

    def unwatch(self, view: VerifiedView) -> None:
        if view in self._views:
            self._views.remove(view)

    def _observe(self, options: CallbackOptions) -> Iterable[Observation]:
        newest: dict[str, float] = {}
        for view in list(self._views):  # replicas in one process: the newest of each
            for uid, at in view().items():
                newest[uid] = max(at, newest.get(uid, at))
        return [Observation(at, {"database": uid}) for uid, at in sorted(newest.items())]


@cache
def planner_metrics() -> PlannerMetrics:
    """The process's instruments on the global meter provider."""
    return PlannerMetrics()
