"""Subjects, streams and the registry of message types: where every message goes.

    tm.cmd.<service>.<node|any>.<action>   commands   stream TM_CMD (work queue)
    tm.evt.<domain>.<event>.<database>     events     stream TM_EVT (limits, replayable)
    tm.dlq.<original subject>              dead letters  stream TM_DLQ

A node name becomes one subject token with `node_token` (dots → `_`). Events end with the
database uid so a consumer can follow one database (`tm.evt.*.*.orders-db`). Migration
subjects end with two: the source, then the target (`tm.evt.migration.phase.<source>.<target>`,
`tm.cmd.planner.any.migration.pause.<source>.<target>`), so permissions can scope them.
A migration program's subjects end with the program's id instead (`tm.evt.program.accepted.
<program>`): a program names many databases (`schemas/messages/programs.py`).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from functools import cache
from typing import Any

from pydantic import ValidationError

from schemas._base import node_token
from schemas.envelope import Envelope, Payload, envelope_of
from schemas.messages import (
    ArchiveAlarm,
    BackupCompleted,
    BackupDeleted,
    BackupFailed,
    BackupRequested,
    BackupVerified,
    CancelJob,
    CancelRequest,
    JobAccepted,
    JobFailed,
    JobProgress,
    JobSucceeded,
    LogArchived,
    LogDeleted,
    LogIndexed,
    LogsIndexed,
    PolicyChanged,
    RequestAccepted,
    RequestBackup,
    RequestRejected,
    RequestRestore,
    RestoreCompleted,
    RestoreFailed,
    RestoreProgress,
    RestoreRequested,
    RunBackup,
    RunRestore,
    RunVerify,
    SetPolicy,
    WindowChanged,
)
from schemas.messages.migrations import MIGRATION_COMMANDS, MIGRATION_EVENTS, MIGRATION_STEPS
from schemas.messages.programs import PROGRAM_COMMANDS, PROGRAM_EVENTS
from schemas.records import DLQ_SUBJECT_PREFIX

TOKENS: tuple[str, ...] = ("node", "database", "target", "program")
"""Placeholders a subject template may hold; `target` is a migration's target database,
`program` a migration program's id."""

COMMAND_PREFIX = "tm.cmd"
EVENT_PREFIX = "tm.evt"


@dataclass(frozen=True)
class StreamSpec:
    """A JetStream stream of the contract. Retention is part of the contract: commands are a
    work queue (each taken once), events and dead letters are kept for replay."""

    name: str
    subjects: tuple[str, ...]
    retention: str  # "workqueue" | "limits"
    description: str


STREAMS: tuple[StreamSpec, ...] = (
    StreamSpec("TM_CMD", (f"{COMMAND_PREFIX}.>",), "workqueue", "Commands, each taken once."),
    StreamSpec("TM_EVT", (f"{EVENT_PREFIX}.>",), "limits", "Facts, replayable by any consumer."),
    StreamSpec("TM_DLQ", (f"{DLQ_SUBJECT_PREFIX}.>",), "limits", "Messages given up on, with why."),
)

COMMANDS: tuple[type[Payload], ...] = (
    RequestBackup,
    RunBackup,
    RunVerify,
    RequestRestore,
    RunRestore,
    SetPolicy,
    CancelRequest,
    CancelJob,
    *MIGRATION_COMMANDS,
    *MIGRATION_STEPS,
    *PROGRAM_COMMANDS,
)
EVENTS: tuple[type[Payload], ...] = (
    BackupRequested,
    BackupCompleted,
    BackupFailed,
    BackupDeleted,
    BackupVerified,
    LogArchived,
    LogIndexed,
    LogsIndexed,
    LogDeleted,
    WindowChanged,
    RestoreRequested,
    RestoreProgress,
    RestoreCompleted,
    RestoreFailed,
    JobAccepted,
    JobProgress,
    JobSucceeded,
    JobFailed,
    ArchiveAlarm,
    PolicyChanged,
    RequestAccepted,
    RequestRejected,
    *MIGRATION_EVENTS,
    *PROGRAM_EVENTS,
)
MESSAGE_TYPES: dict[str, type[Payload]] = {m.TYPE: m for m in (*COMMANDS, *EVENTS)}


class ContractError(ValueError):
    """A message that does not satisfy the contract. `reason` says exactly what is wrong."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def subject_for(envelope: Envelope[Any], *, node: str | None = None) -> str:
    """The subject a message is published on. Commands to a node need `node`; `any` otherwise."""
    template: str = type(envelope.data).SUBJECT
    values: dict[str, str] = {}
    if "{node}" in template:
        values["node"] = node_token(node) if node else "any"
    if "{database}" in template:
        if envelope.database is None:
            raise ContractError(f"{envelope.type} must name its database")
        values["database"] = envelope.database.uid
    values.update(envelope.data.subject_values())
    return template.format(**values)


@cache
def subject_pattern(model: type[Payload]) -> re.Pattern[str]:
    """A regex matching every concrete subject of a message type."""
    escaped = re.escape(model.SUBJECT)
    for token in TOKENS:
        escaped = escaped.replace(re.escape(f"{{{token}}}"), "[^.]+")
    return re.compile(f"^{escaped}$")


def wildcard(model: type[Payload]) -> str:
    """The NATS wildcard subject for a message type (placeholders become `*`)."""
    subject = model.SUBJECT
    for token in TOKENS:
        subject = subject.replace(f"{{{token}}}", "*")
    return subject


def _explain(error: ValidationError) -> str:
    parts = []
    for item in error.errors()[:5]:
        where = ".".join(str(p) for p in item["loc"]) or "message"
        parts.append(f"{where}: {item['msg']}")
    more = error.error_count() - len(parts)
    return "; ".join(parts) + (f" (and {more} more)" if more > 0 else "")


# Where a well-formed envelope names its type. Only a guess: a payload may hold a "type" key
# before the envelope's own, so a guess that does not validate falls back to the full parse.
_TYPE_GUESS = re.compile(rb'"type"\s*:\s*"([A-Za-z0-9._-]{1,64})"')


def decode(raw: bytes, *, subject: str | None = None) -> Envelope[Any]:
    """Parse and validate one message; raise `ContractError` saying what is wrong."""
    guess = _TYPE_GUESS.search(raw) if isinstance(raw, bytes) else None
    model = MESSAGE_TYPES.get(guess.group(1).decode()) if guess else None
    if model is not None and (subject is None or subject_pattern(model).match(subject)):
        try:
            # One pass, in pydantic's own JSON parser: most of what a consumer spends per message.
            # Strict, as every wire path: "123" or true is not a position.
            return envelope_of(model).model_validate_json(raw, strict=True)
        except ValidationError:
            pass  # the full parse below says what is wrong
    try:
        document = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ContractError(f"payload is not JSON: {exc}") from None
    except RecursionError:
        # `[[[[…` a few thousand deep: refused here, or the consumer would retry it to MaxDeliver.
        raise ContractError("payload is nested too deeply to be a Tidemark envelope") from None
    if not isinstance(document, dict):
        raise ContractError("payload must be a JSON object (a Tidemark envelope)")
    kind = document.get("type")
    model = MESSAGE_TYPES.get(kind) if isinstance(kind, str) else None
    if model is None:
        raise ContractError(f"unknown message type {kind!r}")
    if subject is not None and not subject_pattern(model).match(subject):
        raise ContractError(f"{kind} does not belong on subject {subject!r} ({model.SUBJECT})")
    try:
        return envelope_of(model).model_validate_json(raw, strict=True)
    except ValidationError as exc:
        raise ContractError(f"{kind} is invalid: {_explain(exc)}") from None
