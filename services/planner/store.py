"""The planner's view of the `tm_plans` and `tm_nodes` buckets: typed reads, create-only claims
and compare-and-set updates.

Every write that decides something is conditional: `create` fails if the key exists (a slot, a
lock, a new restore), `update` fails unless the revision is the one read. Two planner replicas
can therefore run the same code at the same moment and exactly one of them wins each decision;
the loser re-reads and sees the winner's result.
"""

from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass
from typing import Generic, TypeVar

from nats.js import JetStreamContext
from nats.js.errors import KeyNotFoundError, KeyWrongLastSequenceError, NoKeysError
from nats.js.kv import KeyValue
from pydantic import BaseModel, ConfigDict, ValidationError

from schemas import DatabaseRef, node_token
from services.bus import NODES_BUCKET, PLANS_BUCKET
from services.bus.keys import live_entries, live_keys

log = logging.getLogger("tidemark.planner")

M = TypeVar("M", bound=BaseModel)


class Conflict(Exception):
    """A conditional write lost: the key exists, or changed since it was read."""


@dataclass(frozen=True)
class Versioned(Generic[M]):
    value: M
    revision: int


class PlanStore:
    """Typed access to `tm_plans`."""

    def __init__(self, kv: KeyValue) -> None:
        self.kv = kv

    @classmethod
    async def open(cls, js: JetStreamContext) -> PlanStore:
        return cls(await js.key_value(PLANS_BUCKET.name))

    async def get(self, key: str, model: type[M]) -> Versioned[M] | None:
        try:
            entry = await self.kv.get(key)
        except KeyNotFoundError:
            return None
        if entry.value is None or entry.operation in ("DEL", "PURGE"):
            return None
        assert entry.revision is not None
        return Versioned(model.model_validate_json(entry.value), entry.revision)

    async def create(self, key: str, value: BaseModel) -> int:
        """Write `value` only if `key` does not exist; `Conflict` otherwise."""
        try:
            return await self.kv.create(key, value.model_dump_json().encode())
        except KeyWrongLastSequenceError:
            raise Conflict(key) from None

    async def update(self, key: str, value: BaseModel, *, last: int) -> int:
        """Write `value` only if `key` is still at revision `last`; `Conflict` otherwise."""
        try:
            return await self.kv.update(key, value.model_dump_json().encode(), last=last)
        except KeyWrongLastSequenceError:
            raise Conflict(key) from None

    async def put(self, key: str, value: BaseModel) -> int:
        return await self.kv.put(key, value.model_dump_json().encode())

    async def delete(self, key: str, *, last: int | None = None) -> bool:
        """Delete `key` (only at revision `last`, when given). False if it had moved on."""
        try:
            await self.kv.delete(key, last=last)
        except KeyWrongLastSequenceError:
            return False
        return True

    async def revision_of(self, key: str) -> int | None:
        """The revision of the key's latest entry, a delete marker included."""
        try:
            history = await self.kv.history(key)
        except (KeyNotFoundError, NoKeysError):
            return None
        return history[-1].revision if history else None

    async def purge(self, key: str) -> None:
        with contextlib.suppress(KeyNotFoundError):
            await self.kv.purge(key)

    async def keys(self, prefix: str) -> list[str]:
        """Live keys under `prefix` (which ends with a dot), listed by the server: see
        `services/bus/keys.py` for why not `kv.keys()` or a watch."""
        return await live_keys(self.kv, prefix)


class HostedDatabase(BaseModel):
    model_config = ConfigDict(extra="ignore")
    uid: str
    engine: str
    name: str
    system_id: int | None = None


class NodeHeartbeat(BaseModel):
    """What an executor says about its node in `tm_nodes` (key = node token). Read tolerantly:
    the executor owns this shape."""

    model_config = ConfigDict(extra="ignore")
    node: str
    databases: list[HostedDatabase] = []
    capacity: int = 1
    running: int = 0


class Nodes:
    """Which node hosts which database, from the executors' heartbeats. The bucket's TTL
    drops a node that stopped beating, so a dead node is never chosen."""

    def __init__(self, kv: KeyValue) -> None:
        self.kv = kv

    @classmethod
    async def open(cls, js: JetStreamContext) -> Nodes:
        return cls(await js.key_value(NODES_BUCKET.name))

    async def heartbeats(self) -> list[NodeHeartbeat]:
        beats = []
        for entry in await live_entries(self.kv):
            if not entry.value:
                continue
            try:
                beats.append(NodeHeartbeat.model_validate_json(entry.value))
            except ValidationError as exc:
                log.warning("ignoring unreadable heartbeat of %s: %s", entry.key, exc)
        return beats

    async def hosting(self, uid: str) -> list[NodeHeartbeat]:
        """Nodes hosting `uid`, least busy first."""
        found = [b for b in await self.heartbeats() if any(d.uid == uid for d in b.databases)]
        return sorted(found, key=lambda b: (b.running >= b.capacity, b.running, b.node))

    async def ref(self, uid: str) -> DatabaseRef | None:
        """The database as a node describes it, or None if no node hosts it."""
        for beat in await self.hosting(uid):
            for db in beat.databases:
                if db.uid == uid:
                    with contextlib.suppress(ValidationError):
                        return DatabaseRef.model_validate(
                            {
                                "uid": db.uid,
                                "engine": db.engine,
                                "name": db.name,
                                "system_id": db.system_id,
                            }
                        )
        return None

    async def is_live(self, node: str) -> bool:
        try:
            entry = await self.kv.get(node_token(node))
        except KeyNotFoundError:
            return False
        return bool(entry.value)
