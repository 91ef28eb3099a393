"""The bus: NATS JetStream through nats-py, with no framework on top.

- `connect` — a client that reconnects;
- `ensure_topology` — streams (TM_CMD work queue, TM_EVT, TM_DLQ, TM_ADV) and KV buckets,
  replicas raised to `bus.replicas` and never lowered (`set_replicas` lowers, explicitly);
- `Publisher` — `Nats-Msg-Id` + `traceparent` on every message, retried safely;
- `Consumer` — the pull loop whose ack policy is written in `services/bus/consumer.py`;
- `BatchConsumer` — the same policy per message, for a handler that takes a batch at once;
- errors: `HandlerError` → `RetryableError` | `TerminalError` (see `services/bus/errors.py`).
"""

from services.bus.batch import BatchConsumer, BatchHandler
from services.bus.connection import connect
from services.bus.consumer import Consumer, Delivery, Handler, backoff_delay
from services.bus.deadletter import dead_letter
from services.bus.errors import BusError, HandlerError, RetryableError, TerminalError
from services.bus.publisher import MSG_ID_HEADER, Publisher
from services.bus.topology import (
    ADVISORY_STREAM,
    BUCKETS,
    HEALTH_BUCKET,
    NODES_BUCKET,
    PLANS_BUCKET,
    ReplicaChange,
    ReplicaDrift,
    TopologyError,
    ensure_topology,
    set_replicas,
    topology_replicas,
)

__all__ = [
    "ADVISORY_STREAM",
    "BUCKETS",
    "HEALTH_BUCKET",
    "MSG_ID_HEADER",
    "NODES_BUCKET",
    "PLANS_BUCKET",
    "BatchConsumer",
    "BatchHandler",
    "BusError",
    "Consumer",
    "Delivery",
    "Handler",
    "HandlerError",
    "Publisher",
    "ReplicaChange",
    "ReplicaDrift",
    "RetryableError",
    "TerminalError",
    "TopologyError",
    "backoff_delay",
    "connect",
    "dead_letter",
    "ensure_topology",
    "set_replicas",
    "topology_replicas",
]
