"""The envelope every Tidemark message travels in.

The `id` is a UUIDv7 and is also sent as the `Nats-Msg-Id` header, so JetStream drops a second
publish of the same message inside the stream's duplicate window. `type` and `schema_version`
name the payload model exactly; a consumer refuses (dead-letters) a version it does not know.
"""

from __future__ import annotations

import uuid
from functools import cache
from typing import Any, ClassVar, Generic, Literal, TypeVar, cast

from pydantic import Field, model_validator

from schemas._base import (
    MessageId,
    MessageType,
    ServiceSource,
    StrictModel,
    UtcDateTime,
    utcnow,
    uuid7,
)
from schemas.database import DatabaseRef


class Payload(StrictModel):
    """Base of every command and event payload.

    Subclasses set `TYPE` (the envelope's `type`), `SCHEMA_VERSION`, `KIND` and `SUBJECT`, a
    template whose `{placeholders}` are filled from the envelope when publishing.
    """

    TYPE: ClassVar[str]
    SCHEMA_VERSION: ClassVar[int] = 1
    KIND: ClassVar[Literal["command", "event"]]
    SUBJECT: ClassVar[str]
    SUMMARY: ClassVar[str] = ""

    def subject_values(self) -> dict[str, str]:
        """Subject tokens the payload itself fills (beyond `{node}` and `{database}`), e.g. a
        migration's `{target}` database."""
        return {}


class Command(Payload):
    """Something a service is asked to do. Delivered once to one worker (work-queue stream)."""

    KIND: ClassVar[Literal["command", "event"]] = "command"


class Event(Payload):
    """Something that happened. Kept (limits stream) so any consumer can replay it."""

    KIND: ClassVar[Literal["command", "event"]] = "event"


P = TypeVar("P", bound=Payload)


class Envelope(StrictModel, Generic[P]):
    """One Tidemark message."""

    # Required on the wire: a default would give a message that arrives without an id a new one
    # on every delivery, and JetStream's dedupe would never recognise the repeat.
    id: MessageId = Field(description="UUIDv7; also the Nats-Msg-Id header")
    type: MessageType
    schema_version: int = Field(ge=1)
    occurred_at: UtcDateTime
    source: ServiceSource
    correlation_id: uuid.UUID = Field(description="the operation this message belongs to")
    causation_id: uuid.UUID | None = Field(
        default=None, description="id of the message that caused this one"
    )
    database: DatabaseRef | None = None
    data: P

    @model_validator(mode="after")
    def _type_matches_payload(self) -> Envelope[P]:
        model = type(self.data)
        if self.type != model.TYPE:
            raise ValueError(f"type {self.type!r} does not match payload {model.TYPE!r}")
        if self.schema_version != model.SCHEMA_VERSION:
            raise ValueError(
                f"schema_version {self.schema_version} of {self.type!r} is not supported "
                f"(this build speaks version {model.SCHEMA_VERSION})"
            )
        return self


@cache
def envelope_of(payload: type[P]) -> type[Envelope[P]]:
    """`Envelope[payload]`, held for the life of the process: pydantic keeps parametrized
    models only weakly, and building one again costs far more than validating a message."""
    return cast("type[Envelope[P]]", Envelope[payload])  # type: ignore[valid-type]


def envelope(
    data: P,
    *,
    source: str,
    database: DatabaseRef | None = None,
    correlation_id: uuid.UUID | None = None,
    causation: Envelope[Any] | None = None,
    message_id: uuid.UUID | None = None,
) -> Envelope[P]:
    """Wrap a payload. A message caused by another inherits its correlation id."""
    mid = message_id or uuid7()
    if correlation_id is None:
        correlation_id = causation.correlation_id if causation is not None else mid
    # Parametrise with the payload's own class so serialisation sees all of its fields.
    model = envelope_of(type(data))
    return model(
        id=mid,
        type=data.TYPE,
        schema_version=data.SCHEMA_VERSION,
        occurred_at=utcnow(),
        source=source,
        correlation_id=correlation_id,
        causation_id=causation.id if causation is not None else None,
        database=database if database is not None else (causation.database if causation else None),
        data=data,
    )
