"""Metric instruments with stable names (dashboards depend on them; renaming is a breaking change).

| name | kind | attributes |
|---|---|---|
| tidemark.messages.handled | counter | service, type, outcome (ack, nak, term) |
| tidemark.messages.dead_lettered | counter | service, type, error |
| tidemark.handler.duration | histogram (s) | service, type, outcome |
| tidemark.messages.published | counter | service, type |
"""

from __future__ import annotations

from functools import cache

from opentelemetry import metrics as otel_metrics


class Metrics:
    def __init__(self) -> None:
        meter = otel_metrics.get_meter("tidemark")
        self.handled = meter.create_counter(
            "tidemark.messages.handled", unit="1", description="messages a consumer finished"
        )
        self.dead_lettered = meter.create_counter(
            "tidemark.messages.dead_lettered", unit="1", description="messages sent to TM_DLQ"
        )
        self.handler_duration = meter.create_histogram(
            "tidemark.handler.duration", unit="s", description="time a handler took"
        )
        self.published = meter.create_counter(
            "tidemark.messages.published", unit="1", description="messages published"
        )


@cache
def metrics() -> Metrics:
    return Metrics()
