"""An optional HTTP listener for probes and scrapes (`health_port`; 0, the default, turns it off).

    GET /healthz   200 while the process serves its event loop (liveness)
    GET /readyz    200 when the service is healthy, 503 while starting, draining or stopped
    GET /metrics   the lifecycle as Prometheus text: up, ready, state, consumers, start time;
                   then the service's own metrics (`[telemetry] prometheus`, the default)

The health record in the `tm_health` bucket stays the source `tidemark status` reads; this
listener exists because a kubelet or a Prometheus cannot read a KV bucket. Liveness does not
ask NATS: a NATS outage must make the pods unready, not restart every one of them at once.
The service's own metrics go to the collector over OTLP when one is set, and are also scraped
here by the names a collector would give them (`services/telemetry/prometheus.py`), so a
Prometheus without a collector sees what the dashboard asks for.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from aiohttp import web

from schemas import ServiceHealth, ServiceState
from services.runtime.listener import Listener, listen
from services.telemetry.prometheus import scrape_text

__all__ = ["HealthServer", "make_health_app", "start_health"]

log = logging.getLogger("tidemark.health")
Snapshot = Callable[[], ServiceHealth]
SNAPSHOT: web.AppKey[Snapshot] = web.AppKey("snapshot", Snapshot)  # type: ignore[arg-type]
_STATES = tuple(ServiceState)


def _text(body: str, status: int = 200) -> web.Response:
    response = web.Response(text=body, status=status, content_type="text/plain")
    response.headers["Cache-Control"] = "no-store"
    return response


async def _live(request: web.Request) -> web.Response:
    return _text("ok\n")


async def _ready(request: web.Request) -> web.Response:
    state = request.app[SNAPSHOT]().state
    if state is ServiceState.HEALTHY:
        return _text(f"{state.value}\n")
    return _text(f"{state.value}\n", status=503)


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def render_metrics(health: ServiceHealth) -> str:
    """The Prometheus text exposition (version 0.0.4) of one service's lifecycle."""
    labels = f'service="{_escape(health.service)}",node="{_escape(health.node)}"'
    ready = int(health.state is ServiceState.HEALTHY)
    lines = [
        "# HELP tidemark_up The service process answers.",
        "# TYPE tidemark_up gauge",
        f"tidemark_up{{{labels}}} 1",
        "# HELP tidemark_ready The service is connected, its topology exists, its consumers run.",
        "# TYPE tidemark_ready gauge",
        f"tidemark_ready{{{labels}}} {ready}",
        "# HELP tidemark_service_state 1 for the lifecycle state the service is in.",
        "# TYPE tidemark_service_state gauge",
        *(
            f'tidemark_service_state{{{labels},state="{s.value}"}} {int(health.state is s)}'
            for s in _STATES
        ),
        "# HELP tidemark_consumers Durable consumers bound.",
        "# TYPE tidemark_consumers gauge",
        f"tidemark_consumers{{{labels}}} {len(health.consumers)}",
        "# HELP tidemark_start_time_seconds When the service started, seconds since the epoch.",
        "# TYPE tidemark_start_time_seconds gauge",
        f"tidemark_start_time_seconds{{{labels}}} {health.started_at.timestamp():.3f}",
        "# HELP tidemark_build_info The running version.",
        "# TYPE tidemark_build_info gauge",
        f'tidemark_build_info{{{labels},version="{_escape(health.version)}"}} 1',
    ]
    return "\n".join(lines) + "\n"


async def _metrics(request: web.Request) -> web.Response:
    response = _text(render_metrics(request.app[SNAPSHOT]()) + scrape_text())
    response.content_type = "text/plain"
    response.charset = "utf-8"
    response.headers["Content-Type"] = "text/plain; version=0.0.4; charset=utf-8"
    return response


def make_health_app(snapshot: Snapshot) -> web.Application:
    app = web.Application()
    app[SNAPSHOT] = snapshot
    app.router.add_get("/healthz", _live)
    app.router.add_get("/readyz", _ready)
    app.router.add_get("/metrics", _metrics)
    return app


HealthServer = Listener


async def start_health(snapshot: Snapshot, host: str, port: int) -> HealthServer:
    """Listen on host:port (port 0 here means any free port; see `HealthServer.port`)."""
    # Probes arrive every few seconds from every kubelet: not worth an access log line.
    server = await listen(make_health_app(snapshot), host, port, access_log=None)
    log.info("health endpoints on %s", server.url)
    return server
