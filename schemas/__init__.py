"""Tidemark's contract: every message, subject and stream, as pydantic v2 models.

This package imports nothing from `services/`. `python -m schemas.export` writes the JSON Schema
of every model to `schemas/json/` and the AsyncAPI 3 document to `schemas/asyncapi.json`; a test
fails when the checked-in files drift from the models.
"""

from schemas._base import (
    BackupTag,
    DatabaseUid,
    DbName,
    NodeName,
    ObjectKey,
    OracleIdentifier,
    StrictModel,
    UtcDateTime,
    node_from_token,
    node_token,
    utcnow,
    uuid7,
)
from schemas.database import DatabaseRef, Engine
from schemas.envelope import Command, Envelope, Event, Payload, envelope
from schemas.positions import (
    Incarnation,
    Lineage,
    Lsn,
    Position,
    Scn,
    Timeline,
    format_lsn,
    lineage_from_key,
    parse_lsn,
)
from schemas.records import DeadLetter, NodeHeartbeat, ServiceHealth, ServiceState
from schemas.subjects import (
    COMMANDS,
    EVENTS,
    MESSAGE_TYPES,
    STREAMS,
    ContractError,
    StreamSpec,
    decode,
    subject_for,
    wildcard,
)

__all__ = [
    "COMMANDS",
    "EVENTS",
    "MESSAGE_TYPES",
    "STREAMS",
    "BackupTag",
    "Command",
    "ContractError",
    "DatabaseRef",
    "DatabaseUid",
    "DbName",
    "DeadLetter",
    "Engine",
    "Envelope",
    "Event",
    "Incarnation",
    "Lineage",
    "Lsn",
    "NodeHeartbeat",
    "NodeName",
    "ObjectKey",
    "OracleIdentifier",
    "Payload",
    "Position",
    "Scn",
    "ServiceHealth",
    "ServiceState",
    "StreamSpec",
    "StrictModel",
    "Timeline",
    "UtcDateTime",
    "decode",
    "envelope",
    "format_lsn",
    "lineage_from_key",
    "node_from_token",
    "node_token",
    "parse_lsn",
    "subject_for",
    "utcnow",
    "uuid7",
    "wildcard",
]
