"""The pieces the catalog runs on, as in production: a nats-server with the Tidemark topology
and the catalog service (`python -m services.catalog`) in its own process, on SQLite.

The service process is the real one, configured by a TOML file like any deployment; only its
HTTP page is off. It is stopped with SIGTERM, as `tidemark up` stops it.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import nats.errors
from nats.aio.client import Client
from nats.js import JetStreamContext
from nats.js.errors import NotFoundError

from schemas import node_token
from services.bus import connect, ensure_topology
from services.catalog.ingest import DURABLE
from services.catalog.settings import sqlite_url
from services.settings import BusSettings, NatsSettings
from services.stack.natsserver import NatsServer

#: The repository root: the service is started from it, as `python -m` needs.
ROOT = Path(__file__).resolve().parents[2]
#: Answered by the catalog's query service itself (the NATS services framework).
PING = "$SRV.PING.tidemark-catalog"
#: The node the service is configured as, and so its replica's durable.
NODE = "bench"
CONSUMER = f"{DURABLE}-{node_token(NODE)}"


@contextmanager
def nats_server(work: Path) -> Iterator[NatsServer]:
    server = NatsServer(store_dir=work / "nats")
    server.start()
    try:
        yield server
    finally:
        server.stop()


async def bus(url: str) -> tuple[Client, JetStreamContext]:
    nc = await connect(NatsSettings(url=url), name="tidemark-bench")
    js = nc.jetstream()
    await ensure_topology(js, BusSettings())
    return nc, js


def catalog_url(work: Path) -> str:
    return sqlite_url(work / "catalog.db")


def write_config(work: Path, batch: int) -> Path:
    config = work / "catalog.toml"
    config.write_text(
        "\n".join(
            [
                f'node = "{NODE}"',
                f'state_dir = "{work / "state"}"',
                "[catalog]",
                f'url = "{catalog_url(work)}"',
                "http_port = 0",
                f"ingest_batch = {batch}",
                "[telemetry]",
                'log_level = "WARNING"',
                'log_format = "text"',
                "",
            ]
        )
    )
    return config


@contextmanager
def catalog_process(work: Path, nats_url: str, batch: int) -> Iterator[subprocess.Popen[bytes]]:
    """`python -m services.catalog` against `nats_url`, its output in `work/catalog.log`."""
    config = write_config(work, batch)
    with open(work / "catalog.log", "ab") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "services.catalog", "--nats-url", nats_url, "--config", config],
            cwd=ROOT,
            stdout=out,
            stderr=subprocess.STDOUT,
            env={**os.environ, "PYTHONPATH": str(ROOT)},
        )
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def log_tail(work: Path, lines: int = 20) -> str:
    path = work / "catalog.log"
    text = path.read_text(errors="replace") if path.exists() else ""
    return "\n".join(text.splitlines()[-lines:])


async def wait_bound(js: JetStreamContext, proc: subprocess.Popen[bytes], work: Path) -> float:
    """When the catalog's durable consumer exists (its fetch loop starts right after)."""
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            await js.consumer_info("TM_EVT", CONSUMER)
            return time.perf_counter()
        except NotFoundError:
            pass
        if proc.poll() is not None:
            raise RuntimeError(f"the catalog exited with {proc.returncode}: {log_tail(work)}")
        await asyncio.sleep(0.01)
    raise RuntimeError(f"the catalog did not bind its consumer in 120 s: {log_tail(work)}")


async def wait_serving(nc: Client, proc: subprocess.Popen[bytes], work: Path) -> float:
    """When the catalog first answers a ping: its store is loaded into its index (queries are
    served only after that), and its consumer is bound right after."""
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline:
        try:
            await nc.request(PING, b"", timeout=0.5)
            return time.perf_counter()
        except (nats.errors.TimeoutError, nats.errors.NoRespondersError):
            pass
        if proc.poll() is not None:
            raise RuntimeError(f"the catalog exited with {proc.returncode}: {log_tail(work)}")
        await asyncio.sleep(0.05)
    raise RuntimeError(f"the catalog did not answer in 600 s: {log_tail(work)}")


async def wait_acked(
    js: JetStreamContext, last_seq: int, proc: subprocess.Popen[bytes], work: Path
) -> float:
    """When the consumer's ack floor reaches `last_seq`: every event up to it acknowledged,
    hence stored, indexed and followed by its `log.indexed` (the handler returned)."""
    while True:
        info = await js.consumer_info("TM_EVT", CONSUMER)
        floor = info.ack_floor.stream_seq if info.ack_floor else 0
        if floor is not None and floor >= last_seq:
            return time.perf_counter()
        if proc.poll() is not None:
            raise RuntimeError(f"the catalog exited with {proc.returncode}: {log_tail(work)}")
        await asyncio.sleep(0.1)
