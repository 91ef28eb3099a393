"""What every part of the planner shares: the bus, the buckets, the catalog, the clock, and the
two ways it answers a request.

Everything the planner publishes has an id derived from what caused it (`keys.step_id`), so a
handler that runs twice — a redelivery, a resumed saga, a second replica — publishes the same
messages under the same ids and JetStream keeps one copy of each.
"""

from __future__ import annotations

import logging
import uuid
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from schemas import DatabaseRef, Envelope, Payload, envelope
from schemas.messages import RequestAccepted, RequestRejected
from services.bus import Publisher, RetryableError, TerminalError
from services.catalog.client import CatalogClient, CatalogError
from services.planner.clock import Clock
from services.planner.errors import NO_NODE, UNKNOWN_DB, Refusal, Refused
from services.planner.keys import step_id
from services.planner.sagas import SagaDriver
from services.planner.settings import PlannerSettings
from services.planner.store import Nodes, PlanStore

log = logging.getLogger("tidemark.planner")


@dataclass
class PlannerContext:
    publisher: Publisher
    plans: PlanStore
    nodes: Nodes
    catalog: CatalogClient
    clock: Clock
    settings: PlannerSettings
    sagas: SagaDriver = field(init=False)
    """Every saga kind's driver; kinds are registered by the service (`service.py`)."""

    def __post_init__(self) -> None:
        self.sagas = SagaDriver(self.plans, self.clock.now)

    @property
    def source(self) -> str:
        return self.publisher.source

    async def send(
        self,
        data: Payload,
        database: DatabaseRef,
        *,
        message_id: uuid.UUID,
        correlation_id: uuid.UUID,
        causation_id: uuid.UUID | None = None,
        node: str | None = None,
        occurred_at: datetime | None = None,
    ) -> Envelope[Any]:
        """Publish `data` under a deterministic id (see module docstring)."""
        message = envelope(
            data,
            source=self.source,
            database=database,
            correlation_id=correlation_id,
            message_id=message_id,
        )
        update: dict[str, Any] = {"causation_id": causation_id}
        if occurred_at is not None:
            update["occurred_at"] = occurred_at
        message = message.model_copy(update=update)
        await self.publisher.publish(message, node=node)
        return message

    async def accept(self, command: Envelope[Any], ref_id: str | None, message: str = "") -> None:
        await self.accept_command(
            command.id,
            command.type,
            require_database(command),
            ref_id,
            message,
            correlation_id=command.correlation_id,
        )

    async def accept_command(
        self,
        command_id: uuid.UUID,
        command_type: str,
        database: DatabaseRef,
        ref_id: str | None,
        message: str = "",
        *,
        correlation_id: uuid.UUID,
    ) -> None:
        """`request.accepted` for a command, under the id its answer always has."""
        await self.send(
            RequestAccepted(
                command_id=command_id,
                command_type=command_type,
                ref_id=ref_id,
                message=message[:500],
            ),
            database,
            message_id=step_id(command_id, "answer"),
            correlation_id=correlation_id,
            causation_id=command_id,
        )

    async def reject(
        self,
        command_id: uuid.UUID,
        command_type: str,
        database: DatabaseRef,
        refusal: Refusal,
        *,
        correlation_id: uuid.UUID | None = None,
    ) -> None:
        check = refusal.check
        log.info(
            "rejected %s %s for %s: %s", command_type, command_id, database.uid, refusal.reason
        )
        await self.send(
            RequestRejected(
                command_id=command_id,
                command_type=command_type,
                reason=refusal.reason[:2000],
                code=refusal.code,
                nearest_before=check.nearest_before if check else None,
                nearest_before_time=check.nearest_before_time if check else None,
                nearest_after=check.nearest_after if check else None,
                nearest_after_time=check.nearest_after_time if check else None,
            ),
            database,
            message_id=step_id(command_id, "answer"),
            correlation_id=correlation_id or command_id,
            causation_id=command_id,
        )

    async def catalog_knows(self, uid: str) -> bool:
        """Does the catalog index this database? A catalog that does not answer is a reason
        to try again later, not to refuse."""
        try:
            await self.catalog.windows(uid)
        except CatalogError as exc:
            if exc.status == 404:
                return False
            raise RetryableError(f"the catalog did not answer for {uid}: {exc.error}") from exc
        return True

    async def route(self, uid: str, preferred: str | None = None) -> str:
        """The node to run an operation of `uid` on: `preferred` (a policy's or a clone's
        node) if given, else the least busy node hosting it. Refuses if there is none."""
        if preferred:
            return preferred
        hosting = await self.nodes.hosting(uid)
        if hosting:
            return hosting[0].node
        if await self.catalog_knows(uid):
            raise Refused(
                Refusal(
                    f"no executor hosts database {uid!r} right now (no heartbeat in tm_nodes); "
                    "start the executor on its node, or name a node",
                    NO_NODE,
                )
            )
        raise Refused(unknown_database(uid))

    async def require_known(self, uid: str) -> None:
        if await self.nodes.hosting(uid):
            return
        if not await self.catalog_knows(uid):
            raise Refused(unknown_database(uid))


def unknown_database(uid: str) -> Refusal:
    return Refusal(
        f"unknown database {uid!r}: no node hosts it (tm_nodes) and the catalog has no "
        "backup or log of it",
        UNKNOWN_DB,
    )


def require_database(command: Envelope[Any]) -> DatabaseRef:
    if command.database is None:
        raise TerminalError(
            f"{command.type} {command.id} names no database (envelope.database); "
            "the planner cannot act on it or answer it"
        )
    return command.database
