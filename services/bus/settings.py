"""The bus's sections of the settings file (`[nats]`, `[bus]`): where NATS is, how to
authenticate, and how streams and consumers behave. Owned here, below every service, so the bus
reads its settings without importing the services that compose the whole file."""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class NatsSettings(_Section):
    url: str = Field(default="nats://127.0.0.1:4222", description="comma-separated server URLs")
    name: str | None = None
    credentials_file: Path | None = Field(default=None, description="a .creds file (reference)")
    user: str | None = None
    password_file: Path | None = Field(default=None, description="file holding the password")
    tls_ca: Path | None = None
    tls_cert: Path | None = None
    tls_key: Path | None = None
    connect_timeout_s: float = 5.0
    max_reconnect_attempts: int = Field(default=-1, description="-1: reconnect forever")
    reconnect_wait_s: float = 1.0

    def servers(self) -> list[str]:
        return [u.strip() for u in self.url.split(",") if u.strip()]


class BusSettings(_Section):
    replicas: int = Field(default=1, ge=1, le=5, description="stream replicas (3 in a cluster)")
    duplicate_window_s: float = Field(default=120.0, gt=0)
    event_max_age_days: float = Field(default=30.0, gt=0)
    dlq_max_age_days: float = Field(default=90.0, gt=0)
    ack_wait_s: float = Field(default=30.0, gt=0)
    max_deliver: int = Field(default=8, ge=1)
    backoff_base_s: float = Field(default=0.5, gt=0)
    backoff_max_s: float = Field(default=60.0, gt=0)
    heartbeat_s: float | None = Field(
        default=None, description="in_progress() interval; default ack_wait/3"
    )
    fetch_batch: int = Field(default=1, ge=1, le=256)
    drain_timeout_s: float = Field(default=30.0, gt=0)
