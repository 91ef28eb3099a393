"""A small client of the catalog's queries, for the CLI, the planner and platform tools."""

from __future__ import annotations

from typing import TypeVar

from nats.aio.client import Client
from pydantic import BaseModel

from schemas.catalog import (
    QUERY_PREFIX,
    CheckReply,
    CheckRequest,
    DatabasesReply,
    DatabasesRequest,
    QueryError,
    RestorePlanReply,
    RetentionPreview,
    RetentionRequest,
    WindowsReply,
    WindowsRequest,
)
from schemas.messages import RestoreTarget
from services.telemetry import inject_headers

R = TypeVar("R", bound=BaseModel)


class CatalogError(Exception):
    """The catalog refused a query (status 400/404/409) or did not answer."""

    def __init__(self, status: int, error: str, body: QueryError | None = None) -> None:
        super().__init__(error)
        self.status = status
        self.error = error
        self.body = body


class CatalogClient:
    def __init__(self, nc: Client, *, timeout: float = 10.0) -> None:
        self.nc = nc
        self.timeout = timeout

    async def _ask(self, name: str, request: BaseModel, reply: type[R]) -> R:
        try:
            msg = await self.nc.request(
                f"{QUERY_PREFIX}.{name}",
                request.model_dump_json().encode(),
                timeout=self.timeout,
                # The asker's trace: the catalog answers inside it (see queries.py).
                headers=inject_headers({}),
            )
        except Exception as exc:
            raise CatalogError(503, f"the catalog did not answer {name}: {exc}") from exc
        headers = msg.headers or {}
        if "Nats-Service-Error-Code" in headers:
            status = int(headers.get("Nats-Service-Error-Code", "500"))
            body = QueryError.model_validate_json(msg.data) if msg.data else None
            raise CatalogError(status, headers.get("Nats-Service-Error", "refused"), body)
        return reply.model_validate_json(msg.data)

    async def databases(self) -> DatabasesReply:
        return await self._ask("databases", DatabasesRequest(), DatabasesReply)

    async def windows(self, database: str) -> WindowsReply:
        return await self._ask("windows", WindowsRequest(database=database), WindowsReply)

    async def check(
        self, database: str, target: RestoreTarget, lineage: str | None = None
    ) -> CheckReply:
        request = CheckRequest(database=database, target=target, lineage=lineage)
        return await self._ask("check", request, CheckReply)

    async def restore_plan(
        self, database: str, target: RestoreTarget, lineage: str | None = None
    ) -> RestorePlanReply:
        request = CheckRequest(database=database, target=target, lineage=lineage)
        return await self._ask("restore_plan", request, RestorePlanReply)

    async def retention(self, database: str, keep_days: float) -> RetentionPreview:
        request = RetentionRequest(database=database, keep_days=keep_days)
        return await self._ask("retention", request, RetentionPreview)
