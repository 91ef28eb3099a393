"""Records that are not bus messages but are still contract: dead letters and service health."""

from __future__ import annotations

import uuid
from enum import StrEnum
from typing import Annotated

from pydantic import Field, StringConstraints

from schemas._base import ServiceSource, StrictModel, UtcDateTime

DLQ_SUBJECT_PREFIX = "tm.dlq"


class DeadLetter(StrictModel):
    """A message Tidemark gave up on, kept whole with the reason so nothing is silently lost.

    Published on `tm.dlq.<original subject>` into the `TM_DLQ` stream.
    """

    reason: Annotated[str, StringConstraints(min_length=1, max_length=4000)]
    error: Annotated[str, StringConstraints(max_length=200)] = Field(
        description="the error class: validation, terminal, max_deliveries, …"
    )
    subject: str
    stream: str | None = None
    consumer: str | None = None
    stream_sequence: int | None = Field(default=None, ge=0)
    deliveries: int = Field(ge=0)
    headers: dict[str, str] = Field(default_factory=dict)
    payload_b64: str = Field(description="the original payload, base64")
    message_id: str | None = Field(default=None, description="Nats-Msg-Id of the original")
    dead_lettered_at: UtcDateTime
    by: ServiceSource


class ServiceState(StrEnum):
    STARTING = "starting"
    HEALTHY = "healthy"
    DRAINING = "draining"
    STOPPED = "stopped"


class ServiceHealth(StrictModel):
    """A service instance's heartbeat, kept in the `tm_health` KV bucket (key service.node)."""

    service: Annotated[str, StringConstraints(pattern=r"^[a-z][a-z0-9-]{0,31}$")]
    node: Annotated[str, StringConstraints(max_length=253)]
    instance: uuid.UUID
    pid: int = Field(ge=0)
    version: str
    state: ServiceState
    started_at: UtcDateTime
    updated_at: UtcDateTime
    consumers: list[str] = Field(default_factory=list)
    detail: str = ""
