"""The optional health listener over a real loopback socket: liveness from the first moment,
readiness only once the service is healthy, and a scrape that says which state it is in."""

from __future__ import annotations

import asyncio
import socket
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import pytest

from schemas import ServiceState
from services.runtime import Service
from services.runtime.health import start_health
from services.settings import Settings

pytestmark = pytest.mark.integration


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def get(url: str) -> tuple[int, str, str]:
    async with aiohttp.ClientSession() as http, http.get(url) as response:
        return response.status, response.headers["Content-Type"], await response.text()


@dataclass
class SlowStart(Service):
    """Connects only when the test says so; needs no NATS."""

    name: str = "planner"
    release: asyncio.Event = field(default_factory=asyncio.Event)

    async def start(self) -> None:
        await self.release.wait()
        self.state = ServiceState.HEALTHY

    async def report_health(self) -> None:
        pass


async def test_readyz_follows_the_service_state(tmp_path: Path) -> None:
    service = SlowStart(settings=Settings(node="node-a", state_dir=tmp_path))
    server = await start_health(service.health, "127.0.0.1", 0)
    try:
        assert (await get(f"{server.url}/healthz"))[0] == 200
        status, _, body = await get(f"{server.url}/readyz")
        assert (status, body) == (503, "starting\n")
        service.state = ServiceState.HEALTHY
        status, _, body = await get(f"{server.url}/readyz")
        assert (status, body) == (200, "healthy\n")
        service.state = ServiceState.DRAINING
        assert (await get(f"{server.url}/readyz"))[0] == 503
    finally:
        await server.stop()
        await server.stop()


async def test_metrics_are_prometheus_text(tmp_path: Path) -> None:
    service = SlowStart(settings=Settings(node="node-a", state_dir=tmp_path))
    service.state = ServiceState.HEALTHY
    server = await start_health(service.health, "127.0.0.1", 0)
    try:
        status, content_type, body = await get(f"{server.url}/metrics")
    finally:
        await server.stop()
    assert status == 200
    assert content_type.startswith("text/plain; version=0.0.4")
    assert 'tidemark_ready{service="planner",node="node-a"} 1' in body
    assert 'tidemark_service_state{service="planner",node="node-a",state="healthy"} 1' in body
    assert 'tidemark_service_state{service="planner",node="node-a",state="starting"} 0' in body
    samples = [line for line in body.splitlines() if line and not line.startswith("#")]
    assert all(len(line.rsplit(" ", 1)) == 2 for line in samples)


async def test_the_listener_answers_before_start_and_closes_after_stop(tmp_path: Path) -> None:
    port = free_port()
    settings = Settings(node="node-a", state_dir=tmp_path, health_host="127.0.0.1")
    settings.health_port = port
    service = SlowStart(settings=settings)
    stop = asyncio.Event()
    running = asyncio.create_task(service.run(stop))
    url = f"http://127.0.0.1:{port}"
    for _ in range(200):  # the listener binds on the task's first steps
        try:
            assert (await get(f"{url}/healthz"))[0] == 200
            break
        except aiohttp.ClientConnectionError:
            await asyncio.sleep(0.01)
    else:
        pytest.fail("the health listener never answered")
    assert (await get(f"{url}/readyz"))[0] == 503  # alive, still connecting
    service.release.set()
    for _ in range(200):
        if (await get(f"{url}/readyz"))[0] == 200:
            break
        await asyncio.sleep(0.01)
    else:
        pytest.fail("never ready after start()")
    stop.set()
    await asyncio.wait_for(running, 10)
    with pytest.raises(aiohttp.ClientConnectionError):
        await get(f"{url}/healthz")


def test_the_listener_is_off_by_default() -> None:
    assert Settings().health_port == 0
