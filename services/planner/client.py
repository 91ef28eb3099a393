"""A client of the planner, for the CLI and platform tools.

    client = PlannerClient(nc)
    answer = await client.request(RequestBackup(), "orders")      # or a DatabaseRef
    if isinstance(answer, RequestRejected): print(answer.reason)
    else: follow answer.ref_id (the backup id, the restore id)
    reply = await client.policy("orders")                          # PolicyReply

`request` subscribes to `tm.evt.request.*.<uid>` *before* publishing the command and waits for
the answer naming the command's id: subscribing after publishing could miss a fast answer.
The answers are JetStream events too, so a caller that times out can still find its answer in
TM_EVT by command id.
"""

from __future__ import annotations

import asyncio
from typing import Any

from nats.aio.client import Client
from nats.aio.msg import Msg

from schemas import ContractError, DatabaseRef, Envelope, Payload, decode, envelope
from schemas.messages import PolicyReply, PolicyRequest, RequestAccepted, RequestRejected
from services.bus import Publisher
from services.catalog.client import CatalogClient, CatalogError
from services.planner.handlers.queries import QUERY_PREFIX
from services.planner.store import Nodes

Answer = RequestAccepted | RequestRejected


class PlannerError(Exception):
    """The planner did not answer, or the database could not be named."""


class PlannerClient:
    def __init__(self, nc: Client, *, timeout: float = 30.0, source: str = "cli@local") -> None:
        self.nc = nc
        self.timeout = timeout
        self.publisher = Publisher(nc.jetstream(), source=source)

    async def resolve(self, database: DatabaseRef | str) -> DatabaseRef:
        """A database uid as the full `DatabaseRef` an envelope needs: from a node heartbeat
        (`tm_nodes`), else from the catalog. `PlannerError` if neither knows it."""
        if isinstance(database, DatabaseRef):
            return database
        found = await (await Nodes.open(self.nc.jetstream())).ref(database)
        if found is not None:
            return found
        try:
            windows = await CatalogClient(self.nc, timeout=min(self.timeout, 10.0)).windows(
                database
            )
        except CatalogError as exc:
            raise PlannerError(
                f"unknown database {database!r}: no node hosts it and the catalog says: {exc.error}"
            ) from None
        return windows.database

    async def request(
        self, payload: Payload, database: DatabaseRef | str, *, timeout: float | None = None
    ) -> Answer:
        """Send a planner command and wait for its `request.accepted` / `request.rejected`."""
        ref = await self.resolve(database)
        message = envelope(payload, source=self.publisher.source, database=ref)
        answer: asyncio.Future[Answer] = asyncio.get_running_loop().create_future()

        async def on_answer(msg: Msg) -> None:
            try:
                event = decode(msg.data, subject=msg.subject)
            except ContractError:
                return
            data = event.data
            if isinstance(data, Answer) and data.command_id == message.id and not answer.done():
                answer.set_result(data)

        sub = await self.nc.subscribe(f"tm.evt.request.*.{ref.uid}", cb=on_answer)
        try:
            await self.nc.flush()
            await self.publisher.publish(message)
            return await asyncio.wait_for(answer, timeout or self.timeout)
        except TimeoutError:
            raise PlannerError(
                f"no answer from the planner to {message.type} {message.id} within "
                f"{timeout or self.timeout:g}s; is the planner running?"
            ) from None
        finally:
            await sub.unsubscribe()

    async def send(self, payload: Payload, database: DatabaseRef | str) -> Envelope[Any]:
        """Publish a command without waiting for its answer."""
        ref = await self.resolve(database)
        message = envelope(payload, source=self.publisher.source, database=ref)
        await self.publisher.publish(message)
        return message

    async def policy(self, database: str) -> PolicyReply:
        request = PolicyRequest(database=database)
        try:
            msg = await self.nc.request(
                f"{QUERY_PREFIX}.policy", request.model_dump_json().encode(), timeout=self.timeout
            )
        except Exception as exc:
            raise PlannerError(f"the planner did not answer the policy query: {exc}") from exc
        headers = msg.headers or {}
        if "Nats-Service-Error-Code" in headers:
            raise PlannerError(headers.get("Nats-Service-Error", "refused"))
        return PolicyReply.model_validate_json(msg.data)
