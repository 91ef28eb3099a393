"""An aiohttp application listening on host:port, for the few HTTP endpoints Tidemark serves
(the catalog's API and pages, each service's health endpoints)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from aiohttp import web


@dataclass
class Listener:
    """A started listener; `stop()` closes it and its open connections (twice is harmless)."""

    runner: web.AppRunner
    host: str
    port: int

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    async def stop(self) -> None:
        if self.runner.server is not None:
            await self.runner.cleanup()


async def listen(app: web.Application, host: str, port: int, **runner: Any) -> Listener:
    """Serve `app` on host:port (port 0: any free port, see `Listener.port`); `runner` options
    go to the `AppRunner` (access logging)."""
    app_runner = web.AppRunner(app, **runner)
    await app_runner.setup()
    try:
        site = web.TCPSite(app_runner, host, port)
        await site.start()
        bound = app_runner.addresses[0][1]
    except BaseException:
        await app_runner.cleanup()
        raise
    return Listener(app_runner, host, int(bound))
