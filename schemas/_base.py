"""Building blocks every Tidemark model shares: strict models, UTC times, validated names.

Identifiers are validated here, once, because they travel far: a database uid becomes an object
key prefix, a node name a NATS subject token, a tag part of an RMAN script. A name that passes
these patterns cannot carry a path separator, a quote, whitespace or a subject wildcard.
"""

from __future__ import annotations

import os
import time
import uuid
from datetime import UTC, datetime
from typing import Annotated, Any

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, StringConstraints


class StrictModel(BaseModel):
    """Base of every contract model: unknown fields are refused, instances are immutable."""

    model_config = ConfigDict(extra="forbid", frozen=True, validate_default=True)


def _require_utc(value: datetime) -> datetime:
    # A naive datetime is ambiguous across nodes in different zones; refuse rather than guess.
    if value.tzinfo is None or value.utcoffset() is None:
        raise ValueError(
            "timestamp must carry a timezone (UTC expected), e.g. 2026-01-31T12:00:00Z"
        )
    try:
        return value.astimezone(UTC)
    except OverflowError:
        # 9999-12-31T23:59-23:59 is past year 9999 in UTC; pydantic would let this escape.
        raise ValueError("timestamp is out of range once converted to UTC") from None


UtcDateTime = Annotated[datetime, AfterValidator(_require_utc)]
"""An aware datetime, normalised to UTC."""

DatabaseUid = Annotated[
    str,
    StringConstraints(pattern=r"^[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?$"),
]
"""Stable id of a protected database; the object-store prefix. DNS-label shaped."""

NodeName = Annotated[
    str,
    StringConstraints(
        max_length=253,
        pattern=r"^[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?(?:\.[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?)*$",
    ),
]
"""A Kubernetes node name (DNS subdomain). Use `node_token` to put it in a subject."""

DbName = Annotated[str, StringConstraints(pattern=r"^[A-Za-z][A-Za-z0-9_$#-]{0,62}$")]
"""Oracle DB_UNIQUE_NAME or a PostgreSQL cluster name: no quotes, spaces or separators."""

OracleIdentifier = Annotated[str, StringConstraints(pattern=r"^[A-Za-z][A-Za-z0-9_$#]{0,127}$")]
"""An unquoted Oracle identifier (tablespace, PDB, user)."""

BackupTag = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9_]{1,30}$")]
"""An RMAN tag (at most 30 characters) or a PostgreSQL backup label token."""

ServiceSource = Annotated[
    str, StringConstraints(pattern=r"^[a-z][a-z0-9-]{0,31}(@[A-Za-z0-9._-]{1,253})?$")
]
"""Who produced a message: `service` or `service@node`, e.g. `executor@db-node-1`."""

MessageType = Annotated[str, StringConstraints(pattern=r"^[a-z][a-z0-9_]*(\.[a-z][a-z0-9_]*)+$")]


def _check_key_segments(value: str) -> str:
    # A key with an empty, `.` or `..` segment could escape its prefix on the filesystem driver.
    # (Three membership tests on the list, not a generator: this runs for every message.)
    parts = value.split("/")
    if "" in parts or "." in parts or ".." in parts:
        raise ValueError("object key must be relative with no empty, '.' or '..' segments")
    return value


ObjectKey = Annotated[
    str,
    StringConstraints(min_length=1, max_length=1024, pattern=r"^[A-Za-z0-9._/=-]+$"),
    AfterValidator(_check_key_segments),
]
"""An object-store key: relative, no empty, `.` or `..` segments."""

Crc32c = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9+/]{6}==$")]
"""CRC32C as GCS reports it: base64 of the 4 big-endian bytes."""

NonNegative = Annotated[int, Field(ge=0)]


def node_token(node: str) -> str:
    """A node name as one NATS subject token: dots separate tokens, so they become `_`.

    `_` cannot appear in a DNS name, so the mapping is reversible (`node_from_token`).
    """
    return node.replace(".", "_")


def node_from_token(token: str) -> str:
    return token.replace("_", ".")


def utcnow() -> datetime:
    return datetime.now(UTC)


def uuid7(at_ms: int | None = None) -> uuid.UUID:
    """A UUIDv7 (RFC 9562): 48-bit Unix milliseconds, then random bits.

    Time-ordered ids keep dedupe windows and journals in arrival order.
    """
    ms = int(time.time() * 1000) if at_ms is None else at_ms
    rand = int.from_bytes(os.urandom(10), "big")
    value = (ms & ((1 << 48) - 1)) << 80
    value |= 0x7 << 76  # version
    value |= ((rand >> 62) & 0xFFF) << 64  # rand_a, 12 bits
    value |= 0b10 << 62  # variant
    value |= rand & ((1 << 62) - 1)  # rand_b, 62 bits
    return uuid.UUID(int=value)


def _require_v7(value: uuid.UUID) -> uuid.UUID:
    if value.version != 7:
        raise ValueError("message id must be a UUIDv7")
    return value


MessageId = Annotated[uuid.UUID, AfterValidator(_require_v7)]


def json_schema_extra_const(schema: dict[str, Any], name: str, value: Any) -> None:
    """Pin a property of an exported JSON Schema to one value (used for `type`/`schema_version`)."""
    prop = schema.setdefault("properties", {}).setdefault(name, {})
    prop.clear()
    prop["const"] = value
