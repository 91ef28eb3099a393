"""The service lifecycle.

    starting → healthy → draining → stopped

A service is healthy once it is connected, the streams and buckets exist and its consumers are
bound. It says so every `health_interval_s` in the `tm_health` bucket (TTL 30 s), so a service
that dies without a word disappears from `tidemark status` by itself. On SIGTERM or SIGINT it
stops fetching, lets handlers in hand finish, and drains its connection.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import signal
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from nats.aio.client import Client
from nats.js import JetStreamContext

from schemas import Payload, ServiceHealth, ServiceState, node_token, utcnow
from services.bus import (
    HEALTH_BUCKET,
    BatchConsumer,
    BatchHandler,
    Consumer,
    Handler,
    Publisher,
    connect,
    ensure_topology,
)
from services.runtime.health import start_health
from services.settings import Settings, load_settings
from services.telemetry import configure_logging, setup_telemetry

VERSION = "0.1.0"
log = logging.getLogger("tidemark.service")


@dataclass
class ConsumerSpec:
    """One durable consumer a service runs."""

    stream: str
    durable: str
    filter_subjects: list[str]
    handlers: Mapping[type[Payload], Handler]
    concurrency: int = 1
    deliver_new_only: bool = False
    start_sequence: int | None = None
    """When set, the durable is made anew at start to deliver from this stream sequence on (an
    existing one is deleted first, with its position): for a service whose own store says how
    far it got."""
    inactive_threshold_s: float | None = None
    """When set, the server removes the durable once nobody has pulled from it this long: for
    durables named after a replica that may never come back."""
    batch: BatchHandler | None = None
    """When set, messages are fetched up to `batch_size` at a time and handled together by it
    (a `BatchConsumer`); `handlers` then only names the accepted types."""
    batch_size: int = 1


@dataclass
class Service:
    """Base of the four services. Subclasses name themselves and list their consumers."""

    settings: Settings
    name: str = "service"
    instance: uuid.UUID = field(default_factory=uuid.uuid4)
    nc: Client | None = None
    state: ServiceState = ServiceState.STARTING
    _consumers: list[Consumer] = field(default_factory=list)
    _started_at: Any = None

    @property
    def source(self) -> str:
        return f"{self.name}@{self.settings.node}"

    @property
    def js(self) -> JetStreamContext:
        assert self.nc is not None, "service not started"
        return self.nc.jetstream()

    def consumers(self, publisher: Publisher) -> Sequence[ConsumerSpec]:
        """The consumers this service runs; none until its real work lands."""
        return ()

    async def on_start(self) -> None:
        """Hook: open stores, resume journals."""

    async def on_stop(self) -> None:
        """Hook: close stores."""

    async def start(self) -> None:
        self._started_at = utcnow()
        self.nc = await connect(self.settings.nats, name=f"tidemark-{self.name}")
        await ensure_topology(self.js, self.settings.bus)
        self.publisher = Publisher(self.js, source=self.source)
        await self.on_start()
        for spec in self.consumers(self.publisher):
            common: dict[str, Any] = {
                "stream": spec.stream,
                "durable": spec.durable,
                "filter_subjects": spec.filter_subjects,
                "handlers": spec.handlers,
                "settings": self.settings.bus,
                "publisher": self.publisher,
                "concurrency": spec.concurrency,
                "deliver_new_only": spec.deliver_new_only,
                "start_sequence": spec.start_sequence,
                "inactive_threshold_s": spec.inactive_threshold_s,
            }
            consumer = (
                Consumer(self.js, **common)
                if spec.batch is None
                else BatchConsumer(self.js, batch=spec.batch, batch_size=spec.batch_size, **common)
            )
            await consumer.start()
            self._consumers.append(consumer)
        self.state = ServiceState.HEALTHY
        await self.report_health()
        log.info("%s healthy", self.source)

    async def stop(self) -> None:
        self.state = ServiceState.DRAINING
        with contextlib.suppress(Exception):
            await self.report_health()
        for consumer in self._consumers:
            await consumer.stop()
        await self.on_stop()
        self.state = ServiceState.STOPPED
        with contextlib.suppress(Exception):
            await self.report_health()
        if self.nc is not None and not self.nc.is_closed:
            with contextlib.suppress(Exception):
                await self.nc.drain()
        log.info("%s stopped", self.source)

    def health(self) -> ServiceHealth:
        return ServiceHealth(
            service=self.name,
            node=self.settings.node,
            instance=self.instance,
            pid=os.getpid(),
            version=VERSION,
            state=self.state,
            started_at=self._started_at or utcnow(),
            updated_at=utcnow(),
            consumers=[c.durable for c in self._consumers],
        )

    async def report_health(self) -> None:
        kv = await self.js.key_value(HEALTH_BUCKET.name)
        key = f"{self.name}.{node_token(self.settings.node)}"
        await kv.put(key, self.health().model_dump_json().encode())

    async def run(self, stop: asyncio.Event) -> None:
        # Up before start(): a pod that is still connecting is alive but not ready, and a
        # kubelet that found no listener would count it as dead and restart it.
        probes = None
        if self.settings.health_port:
            probes = await start_health(
                self.health, self.settings.health_host, self.settings.health_port
            )
        try:
            await self._serve(stop)
        finally:
            if probes is not None:
                await probes.stop()

    async def _serve(self, stop: asyncio.Event) -> None:
        await self.start()
        watcher = asyncio.create_task(_stop_when_orphaned(stop))
        try:
            while not stop.is_set():
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), self.settings.health_interval_s)
                if not stop.is_set():
                    try:
                        await self.report_health()
                    except Exception as exc:  # NATS restarting: say so, keep serving
                        log.warning("health report failed: %s", exc)
        finally:
            watcher.cancel()
            await self.stop()


async def _stop_when_orphaned(stop: asyncio.Event) -> None:
    """Under `tidemark up`, drain and exit if the stack's supervisor dies: a service left running
    by a killed supervisor would hold its ports and keep consuming with nobody watching it."""
    supervisor = os.environ.get("TIDEMARK_SUPERVISOR_PID")
    if not supervisor or not supervisor.isdigit():
        return
    while not stop.is_set():
        if os.getppid() != int(supervisor):
            log.warning("the stack's supervisor (pid %s) is gone; stopping", supervisor)
            stop.set()
            return
        await asyncio.sleep(1.0)


def _parse_args(name: str, argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog=f"python -m services.{name}")
    parser.add_argument("--nats-url", help="NATS server URL(s), comma-separated")
    parser.add_argument("--config", type=Path, help="TOML settings file")
    parser.add_argument("--node", help="this node's name (default: hostname)")
    return parser.parse_args(argv)


def run_service(cls: type[Service], argv: Sequence[str] | None = None) -> None:
    """Entry point of `python -m services.<name>`: settings, logs, telemetry, signals, run."""
    name = cls.name if isinstance(cls.name, str) else cls.__name__.lower()
    args = _parse_args(name, argv)
    overrides: dict[str, Any] = {}
    if args.node:
        overrides["node"] = args.node
    settings = load_settings(args.config, **overrides)
    if args.nats_url:
        settings.nats.url = args.nats_url
    configure_logging(name, level=settings.telemetry.log_level, fmt=settings.telemetry.log_format)
    setup_telemetry(name, settings.telemetry, version=VERSION)
    service = cls(settings=settings)

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await service.run(stop)

    asyncio.run(main())
