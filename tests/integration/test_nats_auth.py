"""The embedded stack's bus is authenticated and least-privilege: every role does its job and
nothing more. One stack (nats-server with users, the four services) for the whole module; each
refusal is checked with a positive control beside it, so a test cannot pass by being unable to
publish at all.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import nats
import pytest
from nats.aio.client import Client
from nats.errors import NoServersError
from nats.errors import TimeoutError as NatsTimeoutError
from nats.js.errors import NotFoundError

from schemas import DatabaseRef, Engine
from schemas.messages import RequestBackup, RequestRejected
from services.bus.connection import credential_options
from services.bus.permissions import SERVICE_ROLES, Role, user_name
from services.planner.client import PlannerClient
from services.stack.embedded import STACK_FILE, EmbeddedStack
from services.stack.natsserver import free_port
from services.stack.probe import read_health

pytestmark = pytest.mark.integration

NOWHERE = "tm.cmd.executor.nobody.backup"  # a node no executor consumes: a command there stays


@dataclass
class Session:
    """One connection as a role, with the server's complaints collected."""

    nc: Client
    errors: list[str] = field(default_factory=list)

    def refused(self, subject: str) -> bool:
        return any(
            "permissions violation" in e.lower() and subject.lower() in e.lower()
            for e in self.errors
        )


@pytest.fixture(scope="module")
async def stack(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[EmbeddedStack]:
    embedded = EmbeddedStack(
        state_dir=tmp_path_factory.mktemp("auth-stack"),
        node="auth",
        nats_port=free_port(),
        timeline_port=free_port(),
    )
    try:
        embedded.start_nats()
        embedded.start_services()
        await embedded.wait_healthy(90.0)
        yield embedded
    finally:
        embedded.stop()


async def connect_as(stack: EmbeddedStack, role: Role) -> Session:
    settings = stack.client_settings(role)
    session = Session(nc=Client())

    async def on_error(exc: Exception) -> None:
        session.errors.append(str(exc))

    session.nc = await nats.connect(
        settings.servers(),
        error_cb=on_error,
        allow_reconnect=False,
        connect_timeout=2,
        **credential_options(settings),
    )
    return session


async def publish(session: Session, subject: str) -> bool:
    """Publish to the stream; True if JetStream acknowledged (stored) it."""
    try:
        await session.nc.jetstream().publish(subject, b"{}", timeout=1.0)
    except NatsTimeoutError:
        await session.nc.flush()
        return False
    return True


async def stored(stack: EmbeddedStack, stream: str, subject: str) -> bool:
    admin = await connect_as(stack, Role.ADMIN)
    try:
        await admin.nc.jetstream().get_last_msg(stream, subject)
    except NotFoundError:
        return False
    finally:
        await admin.nc.close()
    return True


async def test_every_service_is_healthy_as_its_own_user(stack: EmbeddedStack) -> None:
    health = await read_health(stack.client_settings(Role.TOOL))
    assert {h["service"] for h in health.values() if h["state"] == "healthy"} == {
        r.value for r in SERVICE_ROLES
    }
    info = json.loads((stack.state_dir / STACK_FILE).read_text())
    assert info["nats_user"] == user_name(Role.TOOL)
    assert Path(info["nats_password_file"]) == stack.passwords[Role.TOOL]
    for path in stack.passwords.values():
        assert path.stat().st_mode & 0o777 == 0o600, path
    assert (stack.state_dir / "secrets").stat().st_mode & 0o777 == 0o700
    assert stack.nats is not None
    assert stack.nats.config_file.stat().st_mode & 0o777 == 0o600


async def test_an_unauthenticated_or_wrong_connection_is_refused(stack: EmbeddedStack) -> None:
    assert stack.nats is not None
    wrong: dict[str, Any] = {"user": user_name(Role.ADMIN), "password": "not-the-password"}
    for options in ({}, wrong):
        nc = Client()
        try:
            with pytest.raises((NoServersError, nats.errors.Error)):
                await nc.connect(
                    stack.nats.url, allow_reconnect=False, connect_timeout=2, **options
                )
        finally:
            await nc.close()  # a refused client still holds its socket


async def test_only_the_planner_commands_an_executor(stack: EmbeddedStack) -> None:
    for role in (Role.ARCHIVER, Role.CATALOG, Role.EXECUTOR, Role.TOOL):
        session = await connect_as(stack, role)
        try:
            assert not await publish(session, NOWHERE), role
            assert session.refused(NOWHERE), (role, session.errors)
        finally:
            await session.nc.close()
        assert not await stored(stack, "TM_CMD", NOWHERE), role

    planner = await connect_as(stack, Role.PLANNER)
    try:
        assert await publish(planner, NOWHERE)
        assert await stored(stack, "TM_CMD", NOWHERE)
    finally:
        await planner.nc.close()
    admin = await connect_as(stack, Role.ADMIN)
    try:
        await admin.nc.jetstream().purge_stream("TM_CMD", subject=NOWHERE)
    finally:
        await admin.nc.close()


async def test_the_tool_asks_the_planner_and_hears_its_answer(stack: EmbeddedStack) -> None:
    tool = await connect_as(stack, Role.TOOL)
    try:
        nobody = DatabaseRef(uid="nosuch-db", engine=Engine.POSTGRES, name="nosuch")
        answer = await PlannerClient(tool.nc, timeout=20.0).request(RequestBackup(), nobody)
        assert isinstance(answer, RequestRejected), answer
        assert tool.errors == []
    finally:
        await tool.nc.close()


async def test_the_tool_cannot_read_commands_or_change_the_topology(
    stack: EmbeddedStack,
) -> None:
    tool = await connect_as(stack, Role.TOOL)
    try:
        await tool.nc.subscribe("tm.cmd.>")
        await tool.nc.flush()
        await asyncio.sleep(0.2)
        assert any("permissions violation for subscription" in e.lower() for e in tool.errors)
        js = tool.nc.jetstream(timeout=1.0)
        with pytest.raises(NatsTimeoutError):
            await js.delete_stream("TM_EVT")
        with pytest.raises(NatsTimeoutError):
            await js.purge_stream("TM_DLQ")
        assert (await js.stream_info("TM_EVT")).config.name == "TM_EVT"  # reads still work
    finally:
        await tool.nc.close()


async def test_only_the_services_dead_letter(stack: EmbeddedStack) -> None:
    subject = "tm.dlq.tm.cmd.test.refused"
    tool = await connect_as(stack, Role.TOOL)
    try:
        assert not await publish(tool, subject)
        assert tool.refused(subject), tool.errors
    finally:
        await tool.nc.close()
    assert not await stored(stack, "TM_DLQ", subject)
    for role in SERVICE_ROLES:
        allowed = f"tm.dlq.tm.cmd.test.{role.value}"
        session = await connect_as(stack, role)
        try:
            assert await publish(session, allowed), (role, session.errors)
        finally:
            await session.nc.close()


async def test_a_service_writes_only_its_own_buckets(stack: EmbeddedStack) -> None:
    archiver = await connect_as(stack, Role.ARCHIVER)
    try:
        assert not await publish(archiver, "$KV.tm_plans.lock.orders")
        assert archiver.refused("$KV.tm_plans.lock.orders"), archiver.errors
    finally:
        await archiver.nc.close()
    assert not await stored(stack, "KV_tm_plans", "$KV.tm_plans.lock.orders")
