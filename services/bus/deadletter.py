"""Dead letters: a message given up on is kept whole, with why, in `TM_DLQ`."""

from __future__ import annotations

import base64
import logging

from nats.aio.msg import Msg
from nats.js import JetStreamContext

from schemas import DeadLetter, utcnow
from schemas.records import DLQ_SUBJECT_PREFIX
from services.telemetry import metrics

log = logging.getLogger("tidemark.bus")


async def dead_letter(
    js: JetStreamContext,
    *,
    subject: str,
    data: bytes,
    headers: dict[str, str] | None,
    reason: str,
    error: str,
    by: str,
    stream: str | None = None,
    consumer: str | None = None,
    stream_sequence: int | None = None,
    deliveries: int = 0,
    message_type: str = "unknown",
) -> DeadLetter:
    """Store a dead-letter record; returns only once the DLQ stream has acknowledged it.

    The record's own `Nats-Msg-Id` is derived from the original's stream position, so a crash
    between writing it and terminating the original cannot produce two records.
    """
    headers = dict(headers or {})
    record = DeadLetter(
        reason=reason[:4000],
        error=error,
        subject=subject,
        stream=stream,
        consumer=consumer,
        stream_sequence=stream_sequence,
        deliveries=deliveries,
        headers=headers,
        payload_b64=base64.b64encode(data).decode(),
        message_id=headers.get("Nats-Msg-Id"),
        dead_lettered_at=utcnow(),
        by=by,
    )
    if stream is not None and stream_sequence is not None:
        dedupe = f"dlq:{stream}:{stream_sequence}"
    else:
        dedupe = f"dlq:{headers.get('Nats-Msg-Id') or base64.b16encode(data[:32]).decode()}"
    await js.publish(
        f"{DLQ_SUBJECT_PREFIX}.{subject}",
        record.model_dump_json().encode(),
        headers={"Nats-Msg-Id": dedupe},
    )
    metrics().dead_lettered.add(1, {"service": by, "type": message_type, "error": error})
    log.error(
        "dead-lettered message from %s: %s",
        subject,
        reason,
        extra={"error_class": error, "stream_seq": stream_sequence, "deliveries": deliveries},
    )
    return record


async def dead_letter_msg(
    js: JetStreamContext,
    msg: Msg,
    *,
    reason: str,
    error: str,
    by: str,
    consumer: str | None,
    message_type: str = "unknown",
) -> DeadLetter:
    meta = msg.metadata
    return await dead_letter(
        js,
        subject=msg.subject,
        data=msg.data,
        headers=dict(msg.headers or {}),
        reason=reason,
        error=error,
        by=by,
        stream=meta.stream,
        consumer=consumer,
        stream_sequence=meta.sequence.stream,
        deliveries=meta.num_delivered,
        message_type=message_type,
    )
