"""Metric instruments with stable names (dashboards depend on them; renaming is a breaking change).

| name | kind | attributes |
|---|---|---|
| tidemark.messages.handled | counter | service, type, outcome (ack, nak, term) |
| tidemark.dead_letters | counter | service, type, error (validation, terminal, …) |
| tidemark.handler.duration | histogram (s) | service, type, outcome |
| tidemark.messages.published | counter | service, type |
| tidemark.job.duration | histogram (s) | operation, outcome (succeeded, failed, cancelled) |
| tidemark.job.failures | counter | operation, code (the failure's TM-… code) |

Counters count in curly-brace units (`{message}`): an exporter to Prometheus drops those, where
unit `1` would add `_ratio` to a gauge. All names, as Prometheus shows them: docs/observability.md.
"""

from __future__ import annotations

from functools import cache

from opentelemetry import metrics as otel_metrics


class Metrics:
    def __init__(self) -> None:
        meter = otel_metrics.get_meter("tidemark")
        self.handled = meter.create_counter(
            "tidemark.messages.handled",
            unit="{message}",
            description="messages a consumer finished",
        )
        self.dead_lettered = meter.create_counter(
            "tidemark.dead_letters", unit="{message}", description="messages sent to TM_DLQ"
        )
        self.handler_duration = meter.create_histogram(
            "tidemark.handler.duration", unit="s", description="time a handler took"
        )
        self.published = meter.create_counter(
            "tidemark.messages.published", unit="{message}", description="messages published"
        )
        self.job_duration = meter.create_histogram(
            "tidemark.job.duration", unit="s", description="a job's run, accepted to outcome"
        )
        self.job_failures = meter.create_counter(
            "tidemark.job.failures", unit="{job}", description="jobs that failed or were cancelled"
        )


@cache
def metrics() -> Metrics:
    return Metrics()
