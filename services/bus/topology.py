"""Streams and KV buckets, created or brought up to date idempotently by every service.

Any service may start first, so each one ensures the whole topology; doing it twice, or from
two processes at once, is harmless.

Replicas only go up at start-up. A stream or bucket with fewer replicas than `bus.replicas` is
raised to it; one with more is left as it is and reported (`ReplicaDrift`, a warning): the
service that starts last must not decide, by a missing setting, that a cluster's streams, their
consumers and the planner's buckets live on one server. Lowering is an explicit admin act
(`set_replicas`, behind `tidemark bus replicas --set N --yes`). Replicas the servers cannot
hold (R3 on a single server) are a `TopologyError`: the service refuses to start, saying why.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field, replace

from nats.errors import NoRespondersError
from nats.errors import TimeoutError as NatsTimeoutError
from nats.js import JetStreamContext
from nats.js.api import (
    DiscardPolicy,
    KeyValueConfig,
    RetentionPolicy,
    StorageType,
    StreamConfig,
)
from nats.js.errors import (
    APIError,
    BadRequestError,
    NotFoundError,
    ServerError,
    ServiceUnavailableError,
)

from schemas import STREAMS
from services.bus.errors import BusError
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


_COMPARED = ("subjects", "description", "max_age", "duplicate_window", "discard")
"""What a service brings to its own settings. `num_replicas` is not here: replicas are only
ever raised at start-up (`_replicas_to_keep`), never lowered."""


class TopologyError(BusError):
    """The topology cannot be brought to the settings (a stream or bucket cannot get the
    replicas asked for): the service refuses to start, with the server's reason."""


@dataclass(frozen=True)
class ReplicaDrift:
    """A stream (or a bucket's stream) that keeps more replicas than `bus.replicas` asks for:
    left as it is, and said, because lowering is `tidemark bus replicas --set N --yes`."""

    stream: str
    kept: int
    setting: int

    def __str__(self) -> str:
        return (
            f"{self.stream} has {self.kept} replicas but bus.replicas is {self.setting}: left at "
            f"{self.kept} (replicas are never lowered at start-up; lower them with "
            f"`tidemark bus replicas --set {self.setting} --yes`)"
        )


def bucket_stream(bucket: str) -> str:
    """The stream that holds a KV bucket."""
    return f"KV_{bucket}"


def topology_streams() -> list[str]:
    """Every stream of the topology, the buckets' included, in the order they are ensured."""
    names = [c.name for c in stream_configs(BusSettings()) if c.name is not None]
    return names + [bucket_stream(b.name) for b in BUCKETS]


def _replicas_to_keep(stream: str, current: int, setting: int) -> tuple[int, ReplicaDrift | None]:
    """The replicas a stream gets at start-up: the setting if that raises them, else what the
    server has. A service started without `bus.replicas` (default 1) must not move a cluster's
    streams and their consumers onto one server."""
    if current > setting:
        drift = ReplicaDrift(stream, current, setting)
        log.warning("%s", drift)
        return current, drift
    return setting, None


# What the server answers for replicas it cannot place: 400 "no suitable peers for placement"
# (more than the cluster has), 500 "replicas > 1 not supported in non-clustered mode".
_REFUSED = (BadRequestError, ServerError)
_CATCH_UP_S = 15.0
# What a cluster answers while a leader is being elected: no answer in time, "JetStream system
# temporarily unavailable" (503), or nobody listening on the API subject yet.
_UNAVAILABLE = (NatsTimeoutError, ServiceUnavailableError, NoRespondersError)
_UNAVAILABLE_S = 60.0


def _refusal(stream: str, replicas: int, exc: APIError) -> TopologyError:
    return TopologyError(
        f"{stream} cannot have {replicas} replicas: {exc.description or exc} (bus.replicas "
        "needs at least that many JetStream servers in the cluster; a single server takes 1)"
    )


@dataclass
class _Outcome:
    drifts: list[ReplicaDrift] = field(default_factory=list)
    placed: dict[str, int] = field(default_factory=dict)
    """Streams created or given more replicas, to wait for: their peers catch up together."""


async def ensure_streams(js: JetStreamContext, settings: BusSettings, out: _Outcome) -> None:
    for config in stream_configs(settings):
        assert config.name is not None
        try:
            info = await js.stream_info(config.name)
        except NotFoundError:
            try:
                await js.add_stream(config)
            except _REFUSED as exc:
                raise _refusal(config.name, settings.replicas, exc) from exc
            out.placed[config.name] = settings.replicas
            log.info("created stream %s (R%d)", config.name, settings.replicas)
            continue
        current = info.config
        replicas, drift = _replicas_to_keep(
            config.name, current.num_replicas or 1, settings.replicas
        )
        if drift is not None:
            out.drifts.append(drift)
        wanted = replace(config, num_replicas=replicas)
        if any(getattr(current, f) != getattr(wanted, f) for f in _COMPARED) or (
            replicas != current.num_replicas
        ):
            try:
                await js.update_stream(wanted)
            except _REFUSED as exc:
                raise _refusal(config.name, replicas, exc) from exc
            if replicas != current.num_replicas:
                out.placed[config.name] = replicas
            log.info("updated stream %s (R%d)", config.name, replicas)


async def ensure_buckets(js: JetStreamContext, settings: BusSettings, out: _Outcome) -> None:
    for bucket in BUCKETS:
        stream = bucket_stream(bucket.name)
        try:
            info = await js.stream_info(stream)
        except NotFoundError:
            info = None
        if info is None:
            try:
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
            except _REFUSED as exc:
                raise _refusal(stream, settings.replicas, exc) from exc
            out.placed[stream] = settings.replicas
            log.info("created kv bucket %s (R%d)", bucket.name, settings.replicas)
            continue
        # A bucket made at R1 (by an older release, or a service started without the setting)
        # would keep the planner's locks, slots and sagas on one server: raise it like a stream.
        current = info.config.num_replicas or 1
        replicas, drift = _replicas_to_keep(stream, current, settings.replicas)
        if drift is not None:
            out.drifts.append(drift)
        if replicas != current:
            await _set_stream_replicas(js, stream, replicas, wait=False)
            out.placed[stream] = replicas
            log.info("kv bucket %s raised from R%d to R%d", bucket.name, current, replicas)


async def ensure_topology(js: JetStreamContext, settings: BusSettings) -> list[ReplicaDrift]:
    """Create or update every stream and bucket; raise replicas to `settings.replicas`, never
    lower them. Returns the streams left with more replicas than the setting (each logged as a
    warning). `TopologyError` if the servers cannot hold the replicas asked for."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + _UNAVAILABLE_S
    while True:
        out = _Outcome()
        try:
            await ensure_streams(js, settings, out)
            await ensure_buckets(js, settings, out)
            break
        except _UNAVAILABLE as exc:
            # A service starting while a server is lost meets a meta or stream leader being
            # elected (a few seconds). Every step is idempotent: start again from the top.
            if loop.time() > deadline:
                raise TopologyError(
                    f"JetStream did not answer for {_UNAVAILABLE_S:.0f}s: {exc!r}"
                ) from exc
            log.warning("JetStream unavailable (%r); ensuring the topology again", exc)
            await asyncio.sleep(0.5)
    await asyncio.gather(*(_wait_current(js, s, n) for s, n in out.placed.items() if n > 1))
    return out.drifts


@dataclass(frozen=True)
class ReplicaChange:
    stream: str
    before: int
    after: int


async def _set_stream_replicas(
    js: JetStreamContext, stream: str, replicas: int, *, wait: bool = True
) -> int:
    """Set one existing stream's replicas, the rest of its configuration as the server has it.
    Returns the replicas it had."""
    info = await js.stream_info(stream)
    before = info.config.num_replicas or 1
    if before != replicas:
        try:
            await js.update_stream(replace(info.config, num_replicas=replicas))
        except _REFUSED as exc:
            raise _refusal(stream, replicas, exc) from exc
        if wait:
            await _wait_current(js, stream, replicas)
    return before


async def _wait_current(js: JetStreamContext, stream: str, replicas: int) -> None:
    """Until the stream has a leader and `replicas - 1` current followers. A consumer created
    on a stream whose new peers are still catching up is refused ("insufficient resources"),
    and a service creates its consumers right after the topology."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + _CATCH_UP_S
    while True:
        cluster = (await js.stream_info(stream)).cluster
        if cluster is None:  # a single server: nothing to catch up
            return
        peers = cluster.replicas or []
        if cluster.leader and len(peers) == replicas - 1 and all(p.current for p in peers):
            return
        if loop.time() > deadline:
            log.warning("%s: its %d replicas are not all current yet; going on", stream, replicas)
            return
        await asyncio.sleep(0.1)


async def topology_replicas(js: JetStreamContext) -> dict[str, int | None]:
    """Each topology stream's replicas on the server (None: not created yet)."""
    found: dict[str, int | None] = {}
    for stream in topology_streams():
        try:
            info = await js.stream_info(stream)
        except NotFoundError:
            found[stream] = None
            continue
        found[stream] = info.config.num_replicas or 1
    return found


async def set_replicas(js: JetStreamContext, replicas: int) -> list[ReplicaChange]:
    """Set every existing topology stream and bucket to `replicas`, lowering included: the
    explicit admin act behind `tidemark bus replicas --set N` (start-up never lowers). The
    durable consumers follow their stream (they are created with the stream's replicas)."""
    changes = []
    for stream, before in (await topology_replicas(js)).items():
        if before is None:
            continue
        await _set_stream_replicas(js, stream, replicas, wait=False)
        changes.append(ReplicaChange(stream, before, replicas))
        if before != replicas:
            log.warning("%s: replicas set from %d to %d", stream, before, replicas)
    await asyncio.gather(*(_wait_current(js, c.stream, replicas) for c in changes))
    return changes
