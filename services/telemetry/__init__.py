"""Traces, metrics and structured logs.

Quiet by default: with no OTLP endpoint configured nothing is exported, but spans still carry
trace ids into logs and into NATS headers (W3C `traceparent`), so one operation is one trace
across planner → executor → archiver/catalog as soon as a collector is configured.
"""

from services.telemetry.logs import configure_logging, get_logger
from services.telemetry.metrics import Metrics, metrics
from services.telemetry.tracing import (
    extract_context,
    inject_headers,
    setup_telemetry,
    tracer,
)

__all__ = [
    "Metrics",
    "configure_logging",
    "extract_context",
    "get_logger",
    "inject_headers",
    "metrics",
    "setup_telemetry",
    "tracer",
]
