"""The catalog's queries over NATS request/reply, with the NATS services framework.

    tm.qry.catalog.databases     DatabasesRequest → DatabasesReply
    tm.qry.catalog.windows       WindowsRequest   → WindowsReply
    tm.qry.catalog.check         CheckRequest     → CheckReply
    tm.qry.catalog.restore_plan  CheckRequest     → RestorePlanReply
    tm.qry.catalog.retention     RetentionRequest → RetentionPreview

A refused query gets the services framework's error headers (`Nats-Service-Error-Code` 400,
404, 409 or 503) and a `QueryError` body saying what was wrong; a target that cannot be restored
to is a 409 that carries the full `CheckReply` (why, and the nearest restorable points). Until
the catalog has caught up with its stream (`catchup.py`) every query is a 503: the answer is
not known yet, which is not the same as "not restorable".
Replicas share the queue group, so any catalog instance may answer.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from nats.aio.client import Client
from nats.micro import add_service
from nats.micro.request import Request
from nats.micro.service import Service, ServiceConfig
from opentelemetry.trace import SpanKind
from pydantic import BaseModel, ValidationError

from schemas.catalog import (
    QUERY_PREFIX,
    CheckRequest,
    DatabasesReply,
    DatabasesRequest,
    QueryError,
    RetentionRequest,
    WindowsRequest,
)
from services.catalog.catchup import CatchingUp, CatchUp
from services.catalog.index import CatalogIndex, NotRestorable, UnknownDatabase
from services.telemetry import extract_context, tracer

QUERY_QUEUE = "catalog"


class _Refused(Exception):
    def __init__(self, status: int, error: str, body: QueryError | None = None) -> None:
        super().__init__(error)
        self.status = status
        self.error = error
        self.body = body or QueryError(status=status, error=error)


def _parse(model: type[BaseModel], data: bytes) -> Any:
    try:
        # Strict, as the HTTP API's parameters are: "123" or true is not an SCN.
        return model.model_validate_json(data or b"{}", strict=True)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc']) or 'request'}: {e['msg']}"
            for e in exc.errors()[:5]
        )
        raise _Refused(400, f"bad {model.__name__}: {problems}") from None


Reply = BaseModel | bytes
"""A reply model, or its JSON already serialized (windows and restore plans are serialized
without a model per backup or per object: `CatalogIndex.windows_json`, `restore_plan_json`)."""


Query = Callable[[bytes], Awaitable[Reply]]


def _unless_catching_up(catchup: CatchUp, query: Query) -> Query:
    async def answer(data: bytes) -> Reply:
        try:
            catchup.refuse()
        except CatchingUp as exc:
            raise _Refused(503, str(exc)) from None
        return await query(data)

    return answer


def handlers(
    index: CatalogIndex, catchup: CatchUp | None = None
) -> dict[str, Callable[[bytes], Awaitable[Reply]]]:
    """Each query as bytes → reply; raises `_Refused` for a clear refusal."""
    answers = _handlers(index)
    if catchup is None:
        return answers
    return {name: _unless_catching_up(catchup, query) for name, query in answers.items()}


def _handlers(index: CatalogIndex) -> dict[str, Query]:

    async def databases(data: bytes) -> BaseModel:
        _parse(DatabasesRequest, data)
        return DatabasesReply(databases=index.summaries())

    async def windows(data: bytes) -> Reply:
        request: WindowsRequest = _parse(WindowsRequest, data)
        try:
            return index.windows_json(request.database)
        except UnknownDatabase as exc:
            raise _Refused(404, str(exc)) from None

    async def check(data: bytes) -> BaseModel:
        request: CheckRequest = _parse(CheckRequest, data)
        reply = index.check(request.database, request.target, request.lineage)
        if reply.code == "unknown_database":
            raise _Refused(404, reply.reason)
        return reply

    async def restore_plan(data: bytes) -> Reply:
        request: CheckRequest = _parse(CheckRequest, data)
        try:
            return index.restore_plan_json(request.database, request.target, request.lineage)
        except UnknownDatabase as exc:
            raise _Refused(404, str(exc)) from None
        except NotRestorable as exc:
            if exc.reply.code == "unknown_database":
                raise _Refused(404, exc.reply.reason) from None
            body = QueryError(status=409, error=exc.reply.reason, check=exc.reply)
            raise _Refused(409, exc.reply.reason, body) from None

    async def retention(data: bytes) -> BaseModel:
        request: RetentionRequest = _parse(RetentionRequest, data)
        try:
            return index.retention_preview(request.database, request.keep_days)
        except UnknownDatabase as exc:
            raise _Refused(404, str(exc)) from None

    return {
        "databases": databases,
        "windows": windows,
        "check": check,
        "restore_plan": restore_plan,
        "retention": retention,
    }


async def serve_queries(
    nc: Client, index: CatalogIndex, *, catchup: CatchUp | None = None, version: str = "0.1.0"
) -> Service:
    """Register the query endpoints; stop them with `await service.stop()`."""
    service = await add_service(
        nc,
        ServiceConfig(
            name="tidemark-catalog",
            version=version,
            description="Restorable windows, checks, restore plans, retention previews",
            queue_group=QUERY_QUEUE,
        ),
    )
    for name, handler in handlers(index, catchup).items():
        await service.add_endpoint(
            name=name, subject=f"{QUERY_PREFIX}.{name}", handler=_endpoint(name, handler)
        )
    return service


def _endpoint(
    name: str, handler: Callable[[bytes], Awaitable[Reply]]
) -> Callable[[Request], Awaitable[None]]:
    async def respond(request: Request) -> None:
        # A child of the asker's span: a restore's check and plan belong to its trace.
        with tracer().start_as_current_span(
            f"catalog {name}",
            context=extract_context(request.headers),
            kind=SpanKind.SERVER,
            attributes={"rpc.system": "nats", "rpc.method": name},
        ):
            await _answer(request, handler)

    return respond


async def _answer(request: Request, handler: Callable[[bytes], Awaitable[Reply]]) -> None:
    try:
        reply = await handler(request.data)
    except _Refused as refused:
        await request.respond_error(
            str(refused.status), refused.error, data=refused.body.model_dump_json().encode()
        )
        return
    await request.respond(reply if isinstance(reply, bytes) else reply.model_dump_json().encode())
