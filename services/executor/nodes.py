"""The node heartbeat: which databases this node hosts and how busy it is, in `tm_nodes`.

Key: the node's subject token (`node_token(node)`); value: a `NodeHeartbeat` (JSON), rewritten
every `executor.heartbeat_s`. The planner reads it to send a database's commands to the node
that hosts it. The bucket's TTL (60 s) removes a node that stops beating; a node that stops
cleanly leaves its key to that TTL too, since commands sent to it meanwhile wait in TM_CMD for
its return rather than being lost.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from nats.js import JetStreamContext

from schemas import NodeHeartbeat, node_token, utcnow
from services.bus import NODES_BUCKET
from services.executor.settings import ExecutorSettings

log = logging.getLogger("tidemark.executor")


def heartbeat(
    node: str, settings: ExecutorSettings, *, running: int, waiting: int
) -> NodeHeartbeat:
    return NodeHeartbeat(
        node=node,
        databases=[d.ref for d in settings.databases],
        capacity=settings.concurrency,
        running=running,
        waiting=waiting,
        updated_at=utcnow(),
    )


class NodeBeat:
    """Writes this node's heartbeat now and then every `heartbeat_s` until stopped."""

    def __init__(
        self,
        js: JetStreamContext,
        node: str,
        settings: ExecutorSettings,
        load: Callable[[], tuple[int, int]],
    ) -> None:
        self.js = js
        self.node = node
        self.settings = settings
        self.load = load
        self._task: asyncio.Task[None] | None = None

    @property
    def key(self) -> str:
        return node_token(self.node)

    async def beat(self) -> None:
        running, waiting = self.load()
        value = heartbeat(self.node, self.settings, running=running, waiting=waiting)
        kv = await self.js.key_value(NODES_BUCKET.name)
        await kv.put(self.key, value.model_dump_json().encode())

    async def start(self) -> None:
        await self.beat()
        self._task = asyncio.create_task(self._loop(), name="executor node heartbeat")

    async def _loop(self) -> None:
        while True:
            await asyncio.sleep(self.settings.heartbeat_s)
            try:
                await self.beat()
            except Exception as exc:  # NATS restarting: say so, keep beating
                log.warning("node heartbeat failed: %s", exc)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None
