"""The `[telemetry]` section of the settings file, owned by the telemetry package (below
every service)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class TelemetrySettings(_Section):
    otlp_endpoint: str | None = Field(
        default=None, description="OTLP/HTTP endpoint, e.g. http://collector:4318; off when unset"
    )
    service_namespace: str = "tidemark"
    log_format: Literal["json", "text"] = "json"
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    metrics_interval_s: float = Field(default=15.0, gt=0)
    prometheus: bool = Field(
        default=True,
        description="also serve the service's metrics on its health port's /metrics for a "
        "Prometheus scrape (names as a collector would translate them)",
    )
