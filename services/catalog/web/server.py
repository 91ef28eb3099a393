"""The catalog's HTTP server: the JSON API and the timeline pages, over one `CatalogIndex`.

It runs on the catalog's own event loop, beside the NATS consumers that update the index, and
every handler reads the index synchronously without awaiting in between: a request therefore
never sees an event half applied, and no lock is needed.

Routes (every answer `Cache-Control: no-store`; this is live state):

    GET /healthz                                      {"status": "ok", "databases": N}
    GET /api/databases                                {"databases": [DatabaseSummary…]}
    GET /api/databases/{uid}/windows                  WindowsReply
    GET /api/databases/{uid}/check?<target>           CheckReply
    GET /api/databases/{uid}/restore-plan?<target>    RestorePlanReply | 409 {"check": CheckReply}
    GET /api/databases/{uid}/retention-preview?keep_days=N   RetentionPreview
    GET /                                             every database, with its window and lag
    GET /db/{uid}                                     one database's timeline

`<target>` is `time=<ISO 8601 with zone>`, `scn=<N>` or `lsn=<X/Y>`, and optionally `lineage=`.
API errors are JSON `{"error": <code>, "message": <what is wrong>, "parameter": <name|null>}`:
400 `bad_request`, 404 `unknown_database` or `not_found`, 405 `method_not_allowed`,
409 `not_restorable`, 500 `internal`, and 503 `catching_up` for every route (pages too) until the
catalog has caught up with its stream (`catchup.py`): not known yet, rather than a wrong answer.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web
from aiohttp.abc import AbstractAccessLogger
from pydantic import BaseModel

from schemas import DatabaseRef
from services.catalog.catchup import CatchingUp, CatchUp, CatchUpPhase
from services.catalog.index import CatalogIndex, NotRestorable, UnknownDatabase
from services.catalog.web.assets import CSP
from services.catalog.web.pages import database_page, index_page, not_found_page
from services.catalog.web.params import (
    BadRequest,
    Query,
    parse_keep_days,
    parse_target,
    refuse_any,
)
from services.runtime.listener import Listener, listen

__all__ = ["HttpServer", "make_app", "start_http"]

log = logging.getLogger("tidemark.catalog.http")
INDEX: web.AppKey[CatalogIndex] = web.AppKey("index", CatalogIndex)
CATCHUP: web.AppKey[CatchUp] = web.AppKey("catchup", CatchUp)
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class _AccessLog(AbstractAccessLogger):
    """Requests at DEBUG: an open page refreshes every few seconds, which is not news."""

    def log(self, request: web.BaseRequest, response: web.StreamResponse, time: float) -> None:
        self.logger.debug(
            "%s %s %s %.1fms", request.method, request.path_qs, response.status, time * 1000
        )


def _json(body: Any, status: int = 200) -> web.Response:
    text = body.model_dump_json() if isinstance(body, BaseModel) else json.dumps(body)
    return web.Response(text=text, status=status, content_type="application/json")


def _error(status: int, code: str, message: str, parameter: str | None = None) -> web.Response:
    return _json({"error": code, "message": message, "parameter": parameter}, status)


def _query(request: web.Request) -> Query:
    query = request.rel_url.query
    return {name: query.getall(name) for name in query}


def _database(request: web.Request) -> DatabaseRef:
    """The database named in the path; UnknownDatabase (404) if the catalog has none."""
    return request.app[INDEX].database(request.match_info["uid"]).ref


def _check_lineage(index: CatalogIndex, uid: str, lineage: str | None) -> None:
    if lineage is None:
        return
    known = sorted(index.database(uid).history.lineages)
    if lineage not in known:
        raise BadRequest(
            f"{uid} has no lineage {lineage!r}; it has {', '.join(known) or 'none yet'}",
            "lineage",
        )


@web.middleware
async def _errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    api = request.path.startswith("/api/") or request.path == "/healthz"
    try:
        if request.path != "/favicon.ico":
            request.app[CATCHUP].refuse()
        return await handler(request)
    except CatchingUp as exc:
        if api:
            return _error(503, "catching_up", str(exc))
        return web.Response(text=str(exc), status=503, content_type="text/plain")
    except BadRequest as exc:
        return _error(400, "bad_request", exc.message, exc.parameter)
    except UnknownDatabase as exc:
        message = str(exc.args[0]) if exc.args else "unknown database"
        if api:
            return _error(404, "unknown_database", message)
        return web.Response(
            text=not_found_page(message), status=404, content_type="text/html", charset="utf-8"
        )
    except web.HTTPException as exc:
        if not api or exc.status < 400:
            raise
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status, "http_error")
        return _error(exc.status, code, f"{exc.reason}: {request.method} {request.path}")
    except Exception:
        log.exception("%s %s failed", request.method, request.path_qs)
        if not api:
            raise
        return _error(500, "internal", "the catalog failed to answer; see its log")


async def _headers(request: web.Request, response: web.StreamResponse) -> None:
    response.headers["Cache-Control"] = "no-store"
    response.headers["X-Content-Type-Options"] = "nosniff"
    response.headers["Referrer-Policy"] = "no-referrer"
    if response.content_type == "text/html":
        response.headers["Content-Security-Policy"] = CSP


# -- the JSON API -------------------------------------------------------------------------------


async def healthz(request: web.Request) -> web.Response:
    return _json({"status": "ok", "databases": len(request.app[INDEX].databases())})


async def list_databases(request: web.Request) -> web.Response:
    summaries = request.app[INDEX].summaries()
    return _json({"databases": [s.model_dump(mode="json") for s in summaries]})


async def windows(request: web.Request) -> web.Response:
    database = _database(request)
    refuse_any(_query(request))
    return _json(request.app[INDEX].windows(database.uid))


async def check(request: web.Request) -> web.Response:
    index, database = request.app[INDEX], _database(request)
    query = parse_target(_query(request), database)
    _check_lineage(index, database.uid, query.lineage)
    return _json(index.check(database.uid, query.target, query.lineage))


async def restore_plan(request: web.Request) -> web.Response:
    index, database = request.app[INDEX], _database(request)
    query = parse_target(_query(request), database)
    _check_lineage(index, database.uid, query.lineage)
    try:
        plan = index.restore_plan(database.uid, query.target, query.lineage)
    except NotRestorable as exc:
        return _json(
            {
                "error": "not_restorable",
                "message": exc.reply.reason,
                "parameter": None,
                "check": exc.reply.model_dump(mode="json"),
            },
            409,
        )
    return _json(plan)


async def retention_preview(request: web.Request) -> web.Response:
    database = _database(request)
    keep_days = parse_keep_days(_query(request))
    return _json(request.app[INDEX].retention_preview(database.uid, keep_days))


# -- pages ----------------------------------------------------------------------------------------


def _html(text: str) -> web.Response:
    return web.Response(text=text, content_type="text/html", charset="utf-8")


async def overview(request: web.Request) -> web.Response:
    return _html(index_page(request.app[INDEX].summaries()))


async def timeline(request: web.Request) -> web.Response:
    database = _database(request)
    return _html(database_page(request.app[INDEX].windows(database.uid)))


async def favicon(request: web.Request) -> web.Response:
    return web.Response(status=204)


def make_app(index: CatalogIndex, catchup: CatchUp | None = None) -> web.Application:
    app = web.Application(middlewares=[_errors])
    app[INDEX] = index
    app[CATCHUP] = catchup or CatchUp(CatchUpPhase.CAUGHT_UP)
    app.on_response_prepare.append(_headers)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/api/databases", list_databases)
    app.router.add_get("/api/databases/{uid}/windows", windows)
    app.router.add_get("/api/databases/{uid}/check", check)
    app.router.add_get("/api/databases/{uid}/restore-plan", restore_plan)
    app.router.add_get("/api/databases/{uid}/retention-preview", retention_preview)
    app.router.add_get("/", overview)
    app.router.add_get("/db/{uid}", timeline)
    app.router.add_get("/favicon.ico", favicon)
    return app


HttpServer = Listener


async def start_http(
    index: CatalogIndex, host: str, port: int, *, catchup: CatchUp | None = None
) -> HttpServer:
    """Serve the API and pages on host:port (port 0: any free port, see `HttpServer.port`)."""
    server = await listen(
        make_app(index, catchup), host, port, access_log_class=_AccessLog, access_log=log
    )
    log.info("catalog HTTP on %s", server.url)
    return server
