"""Tracer set-up and trace-context propagation through NATS headers."""

from __future__ import annotations

from collections.abc import Mapping

from opentelemetry import metrics as otel_metrics
from opentelemetry import propagate, trace
from opentelemetry.context import Context
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import MetricReader, PeriodicExportingMetricReader
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor

from services.telemetry import prometheus
from services.telemetry.settings import TelemetrySettings

_configured: set[str] = set()


def setup_telemetry(service: str, settings: TelemetrySettings, *, version: str = "0") -> None:
    """Install tracer and meter providers once per process.

    If a provider is already installed (a test's in-memory exporter, or an embedding program),
    it is kept: replacing a global provider silently drops the spans of whoever installed it.
    """
    if service in _configured:
        return
    _configured.add(service)
    resource = Resource.create(
        {
            "service.name": f"tidemark-{service}",
            "service.namespace": settings.service_namespace,
            "service.version": version,
        }
    )
    provider = trace.get_tracer_provider()
    if not isinstance(provider, TracerProvider):
        provider = TracerProvider(resource=resource)
        trace.set_tracer_provider(provider)
    readers: list[MetricReader] = []
    if settings.prometheus:
        readers.append(prometheus.READER)
    if settings.otlp_endpoint:
        # Imported here: the exporter pulls in HTTP machinery a quiet process never needs.
        from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        endpoint = settings.otlp_endpoint.rstrip("/")
        provider.add_span_processor(
            BatchSpanProcessor(OTLPSpanExporter(endpoint=f"{endpoint}/v1/traces"))
        )
        readers.append(
            PeriodicExportingMetricReader(
                OTLPMetricExporter(endpoint=f"{endpoint}/v1/metrics"),
                export_interval_millis=int(settings.metrics_interval_s * 1000),
            )
        )
    if readers and not isinstance(otel_metrics.get_meter_provider(), MeterProvider):
        otel_metrics.set_meter_provider(MeterProvider(resource=resource, metric_readers=readers))
        if settings.prometheus:
            prometheus.mark_installed()


def tracer(name: str = "tidemark") -> trace.Tracer:
    return trace.get_tracer(name)


def inject_headers(headers: dict[str, str], context: Context | None = None) -> dict[str, str]:
    """Add `traceparent` (and `tracestate`) for the current span to outgoing NATS headers."""
    propagate.inject(headers, context=context)
    return headers


def extract_context(headers: Mapping[str, str] | None) -> Context:
    """The trace context a publisher sent, to continue its trace in a consumer."""
    return propagate.extract(dict(headers or {}))
