"""The service's own metrics in the Prometheus text format, for a scrape without a collector.

The health server's `/metrics` (`services/runtime/health.py`) appends `scrape_text()` to its
lifecycle lines when `[telemetry] prometheus = true` (the default): Prometheus scrapes each
service directly, and the dashboard's queries find the same names they find through an
OpenTelemetry collector. The names follow the collector's translation, as
`docs/observability.md` lists them: dots become underscores, a unit of `s` or `By` adds
`_seconds` or `_bytes`, counters end in `_total`, histograms give `_bucket{le}`, `_sum` and
`_count`. Attributes become labels (dots to underscores).

The reader is a pull reader: nothing is computed until a scrape asks, and the values are
cumulative (what Prometheus expects of counters and histograms).
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping
from typing import Any

from opentelemetry.sdk.metrics.export import (
    Gauge,
    Histogram,
    InMemoryMetricReader,
    MetricsData,
    Sum,
)

READER = InMemoryMetricReader()
"""The process's pull reader, installed on its meter provider by `setup_telemetry`."""

_installed = False

UNIT_SUFFIX = {"s": "seconds", "By": "bytes"}
_NOT_NAME = re.compile(r"[^a-zA-Z0-9_:]")
_NOT_LABEL = re.compile(r"[^a-zA-Z0-9_]")


def mark_installed() -> None:
    global _installed
    _installed = True


def metric_name(otel: str, unit: str, *, counter: bool) -> str:
    """The collector's name for an OpenTelemetry instrument."""
    name = _NOT_NAME.sub("_", otel.replace(".", "_"))
    suffix = UNIT_SUFFIX.get(unit)
    if suffix and not name.endswith(f"_{suffix}"):
        name += f"_{suffix}"
    return f"{name}_total" if counter and not name.endswith("_total") else name


def _escape(value: object) -> str:
    return str(value).replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _labels(attributes: Mapping[str, Any] | None, extra: Mapping[str, str] | None = None) -> str:
    pairs = {_NOT_LABEL.sub("_", k.replace(".", "_")): v for k, v in (attributes or {}).items()}
    pairs.update(extra or {})
    if not pairs:
        return ""
    return "{" + ",".join(f'{k}="{_escape(v)}"' for k, v in sorted(pairs.items())) + "}"


def _number(value: float) -> str:
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    return repr(float(value)) if isinstance(value, float) else str(value)


def render(data: MetricsData | None) -> str:
    """`data` as Prometheus text exposition (version 0.0.4)."""
    if data is None:
        return ""
    lines: list[str] = []
    seen: set[str] = set()
    for resource in data.resource_metrics:
        for scope in resource.scope_metrics:
            for metric in scope.metrics:
                lines.extend(_metric_lines(metric, seen))
    return "\n".join(lines) + ("\n" if lines else "")


def _metric_lines(metric: Any, seen: set[str]) -> Iterable[str]:
    points = metric.data
    if isinstance(points, Sum):
        counter = points.is_monotonic
        name = metric_name(metric.name, metric.unit or "", counter=counter)
        kind = "counter" if counter else "gauge"
    elif isinstance(points, Gauge):
        name = metric_name(metric.name, metric.unit or "", counter=False)
        kind = "gauge"
    elif isinstance(points, Histogram):
        name = metric_name(metric.name, metric.unit or "", counter=False)
        kind = "histogram"
    else:
        return []
    lines = []
    if name not in seen:
        seen.add(name)
        if metric.description:
            lines.append(f"# HELP {name} {_escape(metric.description)}")
        lines.append(f"# TYPE {name} {kind}")
    for point in points.data_points:
        if kind == "histogram":
            cumulative = 0
            for bound, count in zip(
                [*point.explicit_bounds, math.inf], point.bucket_counts, strict=True
            ):
                cumulative += count
                le = _number(float(bound))
                lines.append(f"{name}_bucket{_labels(point.attributes, {'le': le})} {cumulative}")
            lines.append(f"{name}_sum{_labels(point.attributes)} {_number(point.sum)}")
            lines.append(f"{name}_count{_labels(point.attributes)} {point.count}")
        else:
            lines.append(f"{name}{_labels(point.attributes)} {_number(point.value)}")
    return lines


def scrape_text() -> str:
    """This process's metrics now, or nothing when the pull reader is not installed."""
    if not _installed:
        return ""
    return render(READER.get_metrics_data())
