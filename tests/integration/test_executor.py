"""The executor against the session's real nats-server, a filesystem store and a `FakeEngine`:
events in order, never twice, never a silent success (an interrupted job, also after SIGKILL),
per-database serialization, cancel, timeout, the node heartbeat and dead-lettered refusals."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import nats.errors
import pytest
from nats.aio.client import Client
from nats.js import JetStreamContext
from nats.js.api import DeliverPolicy

from schemas import Engine, Envelope, NodeHeartbeat, decode, envelope, node_token
from schemas.messages import CancelJob, Operation
from services.archiver.settings import ArchiverSettings
from services.blobstore import open_store
from services.bus import NODES_BUCKET, Publisher, ensure_topology
from services.engines.registry import EngineRegistry
from services.executor import errors
from services.executor.journal import Journal
from services.executor.service import ExecutorService
from services.executor.settings import ExecutorSettings
from services.settings import BusSettings, NatsSettings, Settings
from tests.doubles.executor_rig import hosted, run_backup
from tests.doubles.fake_engine import FakeEngine
from tests.integration.bus_helpers import dead_letters, unique

pytestmark = pytest.mark.integration

BUS = BusSettings(
    ack_wait_s=2.0, max_deliver=4, backoff_base_s=0.2, backoff_max_s=1.0, drain_timeout_s=2.0
)
WAIT = 20.0


@pytest.fixture
async def js(nc: Client) -> JetStreamContext:
    context = nc.jetstream()
    await ensure_topology(context, BUS)
    return context


@dataclass
class Node:
    """One executor in this process, on its own node name and database, with a fake engine."""

    nats_url: str
    tmp: Path
    js: JetStreamContext
    engine: FakeEngine = field(default_factory=FakeEngine)
    node: str = field(default_factory=lambda: unique("node"))
    uid: str = field(default_factory=lambda: unique("db"))
    executor: dict[str, Any] = field(default_factory=dict)
    service: ExecutorService | None = None

    def settings(self) -> Settings:
        return Settings(
            node=self.node,
            state_dir=self.tmp / "state",
            nats=NatsSettings(url=self.nats_url),
            bus=BUS,
            health_interval_s=1.0,
            archiver=ArchiverSettings(store_url=f"file://{self.tmp / 'store'}", prefix="p"),
            executor=ExecutorSettings(
                databases=[hosted(self.uid)],
                heartbeat_s=0.2,
                progress_interval_s=0.05,
                cancel_grace_s=2.0,
                **self.executor,
            ),
        )

    async def start(self) -> ExecutorService:
        settings = self.settings()
        registry = EngineRegistry(settings.executor, drivers={Engine.POSTGRES: self.engine})
        self.service = ExecutorService(settings=settings, engines=registry)
        await self.service.start()
        return self.service

    async def stop(self) -> None:
        if self.service is not None:
            await self.service.stop()
            self.service = None

    async def send(self, message: Envelope[Any]) -> Envelope[Any]:
        await Publisher(self.js, source="planner").publish(message, node=self.node)
        return message

    def backup(self, **kw: Any) -> Envelope[Any]:
        return run_backup(self.uid, **kw)

    async def events(self) -> list[Envelope[Any]]:
        return await stored_events(self.js, f"tm.evt.*.*.{self.uid}")

    async def wait(
        self, done: Callable[[list[Envelope[Any]]], bool], timeout: float = WAIT
    ) -> list[Envelope[Any]]:
        deadline = time.monotonic() + timeout
        while True:
            found = await self.events()
            if done(found):
                return found
            if time.monotonic() > deadline:
                raise AssertionError(f"events so far: {[m.type for m in found]}")
            await asyncio.sleep(0.1)

    async def commands_left(self) -> int:
        info = await self.js.consumer_info("TM_CMD", f"executor-{node_token(self.node)}")
        return int(info.num_pending or 0) + int(info.num_ack_pending or 0)


async def stored_events(js: JetStreamContext, subject: str) -> list[Envelope[Any]]:
    """Every event stored on `subject` so far (an ephemeral ordered consumer from the start)."""
    sub = await js.subscribe(
        subject, stream="TM_EVT", ordered_consumer=True, deliver_policy=DeliverPolicy.ALL
    )
    found: list[Envelope[Any]] = []
    try:
        while True:
            try:
                msg = await sub.next_msg(timeout=0.3)
            except nats.errors.TimeoutError:
                return found
            found.append(decode(msg.data, subject=msg.subject))
    finally:
        await sub.unsubscribe()


def of_job(events: list[Envelope[Any]], job_id: uuid.UUID, *types: str) -> list[Envelope[Any]]:
    return [
        e
        for e in events
        if getattr(e.data, "job_id", None) == job_id and (not types or e.type in types)
    ]


def ended(job_id: uuid.UUID) -> Callable[[list[Envelope[Any]]], bool]:
    return lambda found: bool(of_job(found, job_id, "job.succeeded", "job.failed"))


@pytest.fixture
async def node(nats_url: str, tmp_path: Path, js: JetStreamContext) -> AsyncIterator[Node]:
    n = Node(nats_url, tmp_path, js)
    yield n
    await n.stop()


async def test_a_backup_is_accepted_progresses_succeeds_and_is_acked(node: Node) -> None:
    node.engine.sleep_s = 0.2
    await node.start()
    command = await node.send(node.backup())
    job_id = command.data.job_id
    found = await node.wait(ended(job_id))

    types = [e.type for e in of_job(found, job_id)]
    assert types[0] == "job.accepted"
    assert "job.progress" in types
    assert types[-2:] == ["backup.completed", "job.succeeded"]
    assert all(e.correlation_id == command.correlation_id for e in of_job(found, job_id))
    completed = of_job(found, job_id, "backup.completed")[0].data
    store = open_store(f"file://{node.tmp / 'store'}")
    try:
        assert await store.head(completed.manifest_key) is not None
    finally:
        await store.close()
    deadline = time.monotonic() + 5
    while await node.commands_left() and time.monotonic() < deadline:
        await asyncio.sleep(0.1)
    assert await node.commands_left() == 0


async def test_the_same_job_sent_again_is_not_run_again(node: Node) -> None:
    await node.start()
    command = await node.send(node.backup())
    job_id = command.data.job_id
    await node.wait(ended(job_id))
    await node.send(node.backup(job_id=job_id))  # a new command id, the same job
    await asyncio.sleep(1.0)
    found = await node.wait(lambda f: True)
    assert node.engine.calls == [("backup", node.uid)]
    # The republished outcome carries the same ids: JetStream stored it once.
    assert len(of_job(found, job_id, "job.succeeded")) == 1
    assert len(of_job(found, job_id, "backup.completed")) == 1
    assert await node.commands_left() == 0


async def test_a_job_left_running_is_reported_interrupted_on_start(node: Node) -> None:
    command = node.backup()
    settings = node.settings()
    journal = Journal(settings.executor.journal_for(settings.state_dir))
    journal.accept(command.data.job_id, Operation.BACKUP, command)
    journal.running(command.data.job_id)
    journal.close()

    await node.start()
    found = await node.wait(ended(command.data.job_id))
    (failed,) = of_job(found, command.data.job_id, "job.failed")
    assert failed.data.interrupted is True
    assert failed.data.failure.code == errors.INTERRUPTED
    assert failed.causation_id == command.id
    assert of_job(found, command.data.job_id, "backup.failed")
    assert node.engine.calls == []


async def test_one_job_at_a_time_per_database(node: Node) -> None:
    node.engine.sleep_s = 0.3
    await node.start()
    commands = [await node.send(node.backup(backup_id=f"b{i}")) for i in range(3)]
    await node.wait(lambda f: all(ended(c.data.job_id)(f) for c in commands))
    assert node.engine.max_active[node.uid] == 1
    assert len(node.engine.finished) == 3


async def test_cancel_stops_a_running_job(node: Node) -> None:
    node.engine.gate = asyncio.Event()
    await node.start()
    command = await node.send(node.backup())
    job_id = command.data.job_id
    await node.wait(lambda f: bool(of_job(f, job_id, "job.progress")))
    cancel = envelope(CancelJob(job_id=job_id, reason="operator"), source="planner")
    await node.send(cancel)
    found = await node.wait(ended(job_id))
    (failed,) = of_job(found, job_id, "job.failed")
    assert failed.data.failure.code == errors.CANCELLED
    assert node.engine.cancelled == [("backup", node.uid)]


async def test_a_job_past_its_timeout_fails(node: Node) -> None:
    node.engine.gate = asyncio.Event()  # never opens
    node.executor["job_timeout_s"] = 0.5
    await node.start()
    command = await node.send(node.backup())
    found = await node.wait(ended(command.data.job_id))
    (failed,) = of_job(found, command.data.job_id, "job.failed")
    assert failed.data.failure.code == errors.TIMEOUT


async def test_the_node_heartbeat_names_its_databases(node: Node) -> None:
    await node.start()
    kv = await node.js.key_value(NODES_BUCKET.name)
    entry = await kv.get(node_token(node.node))
    assert entry.value is not None
    beat = NodeHeartbeat.model_validate_json(entry.value)
    assert beat.node == node.node
    assert [d.uid for d in beat.databases] == [node.uid]
    assert beat.capacity == 2
    first = beat.updated_at
    await asyncio.sleep(0.5)
    entry = await kv.get(node_token(node.node))
    assert entry.value is not None
    assert NodeHeartbeat.model_validate_json(entry.value).updated_at > first


async def test_a_database_not_hosted_here_is_dead_lettered_and_failed(node: Node) -> None:
    await node.start()
    stranger = unique("db")
    message = run_backup(stranger)
    await node.send(message)
    subject = f"tm.cmd.executor.{node_token(node.node)}.backup"
    letter = await dead_letters(node.js, subject)
    assert "is not hosted on node" in letter.reason
    assert letter.error == "terminal"
    found = await stored_events(node.js, f"tm.evt.job.failed.{stranger}")
    assert found[-1].data.failure.code == errors.NOT_HOSTED
    assert node.engine.calls == []


# -- SIGKILL in the middle of a job ----------------------------------------------------------------


@dataclass
class ExecutorProcess:
    """`python -m tests.integration.executor_child`: the executor process with a fake engine."""

    nats_url: str
    state_dir: Path
    uid: str
    node: str = field(default_factory=lambda: unique("node"))
    proc: subprocess.Popen[bytes] | None = None
    runs: int = 0

    @property
    def log_path(self) -> Path:
        return self.state_dir / f"executor-{self.runs}.log"

    def start(self, *, sleep_s: float) -> None:
        self.runs += 1
        self.state_dir.mkdir(parents=True, exist_ok=True)
        database = hosted(self.uid).model_dump(mode="json")
        env = dict(os.environ)
        env.update(
            {
                "TIDEMARK_STATE_DIR": str(self.state_dir),
                "TIDEMARK_HEALTH_INTERVAL_S": "0.5",
                "TIDEMARK_TELEMETRY__LOG_FORMAT": "text",
                "TIDEMARK_BUS__ACK_WAIT_S": "2",
                "TIDEMARK_EXECUTOR__HEARTBEAT_S": "0.5",
                "TIDEMARK_EXECUTOR__DATABASES": json.dumps([database]),
                "FAKE_ENGINE_SLEEP_S": str(sleep_s),
            }
        )
        with open(self.log_path, "ab") as out:
            self.proc = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "tests.integration.executor_child",
                    "--nats-url",
                    self.nats_url,
                    "--node",
                    self.node,
                ],
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def kill9(self) -> None:
        assert self.proc is not None
        os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(10)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.kill9()

    def tail(self) -> str:
        return self.log_path.read_text()[-3000:] if self.log_path.exists() else ""


@pytest.fixture
def executor_process(nats_url: str, tmp_path: Path) -> Iterator[ExecutorProcess]:
    process = ExecutorProcess(nats_url, tmp_path / "state", unique("db"))
    yield process
    process.stop()


async def test_sigkill_mid_job_reports_interrupted_and_a_new_job_succeeds(
    executor_process: ExecutorProcess, js: JetStreamContext
) -> None:
    proc = executor_process
    publisher = Publisher(js, source="planner")
    subject = f"tm.evt.*.*.{proc.uid}"

    async def wait(done: Callable[[list[Envelope[Any]]], bool]) -> list[Envelope[Any]]:
        deadline = time.monotonic() + 60
        while True:
            found = await stored_events(js, subject)
            if done(found):
                return found
            if time.monotonic() > deadline:
                raise AssertionError(f"{[e.type for e in found]}\n{proc.tail()}")
            await asyncio.sleep(0.2)

    proc.start(sleep_s=120)
    first = run_backup(proc.uid, backup_id="b1")
    await publisher.publish(first, node=proc.node)
    job1 = first.data.job_id
    await wait(lambda f: bool(of_job(f, job1, "job.progress")))  # the engine is running
    proc.kill9()

    proc.start(sleep_s=0.2)
    found = await wait(ended(job1))
    (failed,) = of_job(found, job1, "job.failed")
    assert failed.data.interrupted is True
    assert failed.data.failure.code == errors.INTERRUPTED
    assert not of_job(found, job1, "job.succeeded")
    assert not of_job(found, job1, "backup.completed")

    second = run_backup(proc.uid, backup_id="b2")  # the planner retries with a new job id
    await publisher.publish(second, node=proc.node)
    found = await wait(ended(second.data.job_id))
    assert of_job(found, second.data.job_id, "job.succeeded")
    assert of_job(found, second.data.job_id, "backup.completed")
    # The first command came back after the restart, found its recorded failure, and was acked
    # (its republished events were dropped by JetStream: still exactly one job.failed).
    deadline = time.monotonic() + 10
    while True:
        info = await js.consumer_info("TM_CMD", f"executor-{node_token(proc.node)}")
        if not (info.num_pending or info.num_ack_pending) or time.monotonic() > deadline:
            break
        await asyncio.sleep(0.2)
    assert not info.num_pending, proc.tail()
    assert not info.num_ack_pending, proc.tail()
    found = await stored_events(js, subject)
    assert len(of_job(found, job1, "job.failed")) == 1
    assert of_job(found, job1, "job.succeeded") == []
