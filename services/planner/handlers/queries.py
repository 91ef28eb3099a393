"""The planner's query over NATS request/reply (the NATS services framework), like the
catalog's:

    tm.qry.planner.policy      PolicyRequest → PolicyReply
    tm.qry.planner.migration   MigrationStatusRequest → MigrationStatusReply
    tm.qry.planner.program     ProgramStatusRequest → ProgramStatusReply (`programs.py`)
    tm.qry.planner.advise      AdviceRequest → Advice (`advisor.py`)

A malformed request gets `Nats-Service-Error-Code: 400` and a body saying what was wrong.
Replicas share the queue group, so any planner may answer; all read the same KV.
"""

from __future__ import annotations

from nats.aio.client import Client
from nats.micro import add_service
from nats.micro.request import Request
from nats.micro.service import Service, ServiceConfig
from pydantic import ValidationError

from schemas.messages import (
    MigrationStatusReply,
    MigrationStatusRequest,
    PolicyRequest,
    ProgramStatusReply,
    ProgramStatusRequest,
)
from services.planner.advisor import serve_advice
from services.planner.migrations import Migrations
from services.planner.policies import Policies
from services.planner.programs import Programs

QUERY_PREFIX = "tm.qry.planner"
QUERY_QUEUE = "planner"


def _problems(exc: ValidationError) -> str:
    return "; ".join(
        f"{'.'.join(str(p) for p in e['loc']) or 'request'}: {e['msg']}" for e in exc.errors()[:5]
    )


async def serve_queries(
    nc: Client,
    policies: Policies,
    migrations: Migrations,
    programs: Programs,
    *,
    version: str = "0.1.0",
) -> Service:
    service = await add_service(
        nc,
        ServiceConfig(
            name="tidemark-planner",
            version=version,
            description="Backup policies, migrations and the migration advisor",
            queue_group=QUERY_QUEUE,
        ),
    )

    async def policy(request: Request) -> None:
        try:
            asked = PolicyRequest.model_validate_json(request.data or b"{}")
        except ValidationError as exc:
            problems = "; ".join(
                f"{'.'.join(str(p) for p in e['loc']) or 'request'}: {e['msg']}"
                for e in exc.errors()[:5]
            )
            await request.respond_error("400", f"bad PolicyRequest: {problems}")
            return
        try:
            reply = await policies.reply(asked.database)
        except Exception as exc:  # KV unavailable: say so rather than time the caller out
            await request.respond_error("503", f"policy of {asked.database} unavailable: {exc}")
            return
        await request.respond(reply.model_dump_json().encode())

    await service.add_endpoint(name="policy", subject=f"{QUERY_PREFIX}.policy", handler=policy)

    async def migration(request: Request) -> None:
        try:
            asked = MigrationStatusRequest.model_validate_json(request.data or b"{}")
        except ValidationError as exc:
            await request.respond_error("400", f"bad MigrationStatusRequest: {_problems(exc)}")
            return
        try:
            views = await migrations.views(asked)
        except Exception as exc:
            await request.respond_error("503", f"migrations unavailable: {exc}")
            return
        reply = MigrationStatusReply(migrations=views)
        await request.respond(reply.model_dump_json().encode())

    await service.add_endpoint(
        name="migration", subject=f"{QUERY_PREFIX}.migration", handler=migration
    )

    async def program(request: Request) -> None:
        try:
            asked = ProgramStatusRequest.model_validate_json(request.data or b"{}")
        except ValidationError as exc:
            await request.respond_error("400", f"bad ProgramStatusRequest: {_problems(exc)}")
            return
        try:
            views = await programs.views(asked)
        except Exception as exc:
            await request.respond_error("503", f"programs unavailable: {exc}")
            return
        await request.respond(ProgramStatusReply(programs=views).model_dump_json().encode())

    await service.add_endpoint(name="program", subject=f"{QUERY_PREFIX}.program", handler=program)
    await serve_advice(service)
    return service
