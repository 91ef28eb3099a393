"""Records that are not bus messages but are still contract: dead letters, service health and
node heartbeats."""

from __future__ import annotations

import uuid
from enum import StrEnum
from typing import Annotated

from pydantic import Field, StringConstraints

from schemas._base import NodeName, ServiceSource, StrictModel, UtcDateTime
from schemas.database import DatabaseRef

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


class NodeHeartbeat(StrictModel):
    """An executor's heartbeat, kept in the `tm_nodes` KV bucket under the node's subject token
    (`node_token(node)`), rewritten every `executor.heartbeat_s`.

    The planner routes a database's commands to the node whose heartbeat lists it. The bucket's
    TTL drops the key of a node that stops beating, so a dead node is not chosen for long.
    """

    node: NodeName
    databases: list[DatabaseRef] = Field(
        default_factory=list, description="the databases this node runs operations for"
    )
    capacity: int = Field(ge=1, description="jobs this node runs at once (executor.concurrency)")
    running: int = Field(ge=0, description="jobs running now")
    waiting: int = Field(
        default=0, ge=0, description="jobs taken and journaled, waiting for their database or slot"
    )
    updated_at: UtcDateTime
