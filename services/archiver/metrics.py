"""The archiver's metrics. Names are stable: dashboards and alerts depend on them.

| name | kind | unit | attributes | meaning |
|---|---|---|---|---|
| tidemark.archive.lag | histogram | s | database, kind | log completed → stored, verified |
| tidemark.archive.backlog.logs | observable gauge | {log} | database | logs waiting to be stored |
| tidemark.archive.oldest_wait | observable gauge | s | database | age of the oldest waiting log |
| tidemark.archive.backlog.bytes | observable gauge | By | database | bytes of those logs |
| tidemark.archive.bytes | counter | By | database, compression | bytes written (as stored) |
| tidemark.archive.logs | counter | {log} | database, outcome | logs stored / existed already |
| tidemark.archive.retries | counter | {attempt} | database, error | failed attempts, retried |
| tidemark.archive.alarms | counter | {alarm} | database, reason | alarms raised |

The backlog gauges are read from `Backlog` records the streamer keeps current; bytes/s is the
rate of `tidemark.archive.bytes`. Counts are in curly-brace units: an exporter to Prometheus
drops them, where `1` would make the backlog gauge `…_ratio`. The Prometheus names:
docs/observability.md.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from functools import cache

from opentelemetry import metrics as otel_metrics
from opentelemetry.metrics import CallbackOptions, Meter, Observation


@dataclass(slots=True)
class Backlog:
    """One database's archiving position, as `tidemark status` and the gauges show it."""

    logs: int = 0
    bytes: int = 0
    #: Stored, waiting for JetStream to acknowledge log.archived.
    unpublished: int = 0
    #: Published, waiting for the catalog's log.indexed before the local copy is released.
    unreleased: int = 0
    conflicts: int = 0
    #: Logs that could not be read or are not valid logs of this database.
    unreadable: int = 0
    #: Files in the source that are no log at all (stray names).
    strays: int = 0
    #: Files still being written (Oracle: shorter than V$ARCHIVED_LOG says).
    not_ready: int = 0
    #: Seconds from completion to stored, for the last log stored.
    last_lag_s: float | None = None
    #: Age of the oldest log still waiting to be stored.
    oldest_wait_s: float | None = None
    #: Set when the database refuses its prefix (foreign archive) or cannot check it.
    blocked: str | None = None


BacklogView = Callable[[], dict[str, Backlog]]


class ArchiverMetrics:
    """The instruments, created once per meter. Streamers `watch` to feed the gauges."""

    def __init__(self, meter: Meter | None = None) -> None:
        meter = meter or otel_metrics.get_meter("tidemark.archiver")
        self._views: list[BacklogView] = []
        self.lag = meter.create_histogram(
            "tidemark.archive.lag", unit="s", description="log completed to stored and verified"
        )
        self.bytes = meter.create_counter(
            "tidemark.archive.bytes", unit="By", description="bytes written to the object store"
        )
        self.logs = meter.create_counter(
            "tidemark.archive.logs", unit="{log}", description="logs stored"
        )
        self.retries = meter.create_counter(
            "tidemark.archive.retries",
            unit="{attempt}",
            description="failed attempts to be retried",
        )
        self.alarms = meter.create_counter(
            "tidemark.archive.alarms", unit="{alarm}", description="archive alarms raised"
        )
        meter.create_observable_gauge(
            "tidemark.archive.backlog.logs",
            callbacks=[self._observe_logs],
            unit="{log}",
            description="logs waiting to be stored",
        )
        meter.create_observable_gauge(
            "tidemark.archive.backlog.bytes",
            callbacks=[self._observe_bytes],
            unit="By",
            description="bytes of logs waiting to be stored",
        )

        meter.create_observable_gauge(
            "tidemark.archive.oldest_wait",
            callbacks=[self._observe_oldest_wait],
            unit="s",
            description="age of the oldest log waiting to be stored",
        )

    def watch(self, view: BacklogView) -> None:
        self._views.append(view)

    def unwatch(self, view: BacklogView) -> None:
        if view in self._views:
            self._views.remove(view)

    def _backlogs(self) -> Iterable[tuple[str, Backlog]]:
        for view in list(self._views):
            yield from view().items()

    def _observe_logs(self, options: CallbackOptions) -> Iterable[Observation]:
        return [Observation(b.logs, {"database": db}) for db, b in self._backlogs()]

    def _observe_bytes(self, options: CallbackOptions) -> Iterable[Observation]:
        return [Observation(b.bytes, {"database": db}) for db, b in self._backlogs()]

    def _observe_oldest_wait(self, options: CallbackOptions) -> Iterable[Observation]:
        # Zero when nothing waits: "stalled" is an age that keeps growing, and an idle
        # database must not look like one that stopped reporting.
        return [Observation(b.oldest_wait_s or 0.0, {"database": db}) for db, b in self._backlogs()]


@cache
def archiver_metrics() -> ArchiverMetrics:
    """The process's instruments on the global meter provider (a provider installed later, by
    `setup_telemetry`, is picked up: the API's meters are proxies until then)."""
    return ArchiverMetrics()
