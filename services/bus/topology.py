"""Streams and KV buckets, created or brought up to date idempotently by every service.

Any service may start first, so each one ensures the whole topology; doing it twice, or from
two processes at once, is harmless.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from nats.js import JetStreamContext
from nats.js.api import (
    DiscardPolicy,
    KeyValueConfig,
    RetentionPolicy,
    StorageType,
    StreamConfig,
)
from nats.js.errors import BucketNotFoundError, NotFoundError

from schemas import STREAMS
from services.bus.settings import BusSettings

log = logging.getLogger("tidemark.bus")

ADVISORY_STREAM = "TM_ADV"
MAX_DELIVERIES_ADVISORY = "$JS.EVENT.ADVISORY.CONSUMER.MAX_DELIVERIES"
_DAY = 86400.0


@dataclass(frozen=True)
class Bucket:
    name: str
    description: str
    ttl_s: float | None = None
    history: int = 1


HEALTH_BUCKET = Bucket("tm_health", "service heartbeats (service.node → ServiceHealth)", ttl_s=30)
NODES_BUCKET = Bucket("tm_nodes", "node heartbeats: which databases a node hosts", ttl_s=60)
PLANS_BUCKET = Bucket("tm_plans", "planner workflow state (CAS on revision)", history=5)
BUCKETS = (HEALTH_BUCKET, NODES_BUCKET, PLANS_BUCKET)


def stream_configs(settings: BusSettings) -> list[StreamConfig]:
    configs = []
    for spec in STREAMS:
        workqueue = spec.retention == "workqueue"
        max_age = None
        if spec.name == "TM_EVT":
            max_age = settings.event_max_age_days * _DAY
        elif spec.name == "TM_DLQ":
            max_age = settings.dlq_max_age_days * _DAY
        configs.append(
            StreamConfig(
                name=spec.name,
                description=spec.description,
                subjects=list(spec.subjects),
                retention=RetentionPolicy.WORK_QUEUE if workqueue else RetentionPolicy.LIMITS,
                storage=StorageType.FILE,
                num_replicas=settings.replicas,
                duplicate_window=settings.duplicate_window_s,
                max_age=max_age,
                # Never drop new work silently: a full stream refuses the publish instead.
                discard=DiscardPolicy.NEW if workqueue else DiscardPolicy.OLD,
            )
        )
    # MaxDeliver advisories are captured durably, so a message whose consumer crashed on its
    # last delivery is still dead-lettered after the consumer comes back.
    configs.append(
        StreamConfig(
            name=ADVISORY_STREAM,
            description="MaxDeliver advisories of Tidemark consumers, for dead-lettering",
            subjects=[f"{MAX_DELIVERIES_ADVISORY}.TM_CMD.>", f"{MAX_DELIVERIES_ADVISORY}.TM_EVT.>"],
            retention=RetentionPolicy.WORK_QUEUE,
            storage=StorageType.FILE,
            num_replicas=settings.replicas,
            max_age=settings.dlq_max_age_days * _DAY,
        )
    )
    return configs


_COMPARED = ("subjects", "description", "max_age", "duplicate_window", "num_replicas", "discard")


async def ensure_streams(js: JetStreamContext, settings: BusSettings) -> None:
    for config in stream_configs(settings):
        assert config.name is not None
        try:
            info = await js.stream_info(config.name)
        except NotFoundError:
            await js.add_stream(config)
            log.info("created stream %s", config.name)
            continue
        current = info.config
        if any(getattr(current, f) != getattr(config, f) for f in _COMPARED):
            await js.update_stream(config)
            log.info("updated stream %s", config.name)


async def ensure_buckets(js: JetStreamContext, settings: BusSettings) -> None:
    for bucket in BUCKETS:
        try:
            await js.key_value(bucket.name)
            continue
        except (BucketNotFoundError, NotFoundError):
            pass
        await js.create_key_value(
            KeyValueConfig(
                bucket=bucket.name,
                description=bucket.description,
                ttl=bucket.ttl_s,
                history=bucket.history,
                storage=StorageType.FILE,
                replicas=settings.replicas,
            )
        )
        log.info("created kv bucket %s", bucket.name)


async def ensure_topology(js: JetStreamContext, settings: BusSettings) -> None:
    await ensure_streams(js, settings)
    await ensure_buckets(js, settings)
