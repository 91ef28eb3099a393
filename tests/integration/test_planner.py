"""The planner against a real nats-server, a real catalog service fed synthetic log and backup
events, and a fake executor: a test responder on `tm.cmd.executor.<node>.>` that records the
commands it gets, beats in `tm_nodes`, and (when told to) answers with job events.

Every test uses its own database uid and node names: the KV buckets and the planner's durable
consumers live for the whole session.
"""

from __future__ import annotations

import asyncio
import json
import socket
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from nats.aio.client import Client
from nats.aio.msg import Msg

from schemas import DatabaseRef, Engine, Envelope, Lsn, Timeline, decode, envelope, node_token
from schemas.messages import (
    BackupPolicy,
    BackupSpec,
    Failure,
    JobAccepted,
    JobFailed,
    JobProgress,
    JobSucceeded,
    RequestAccepted,
    RequestBackup,
    RequestRejected,
    RequestRestore,
    RestoreCompleted,
    RestoreFailed,
    RestoreProgress,
    RestoreResult,
    RunBackup,
    RunRestore,
    RunVerify,
    SetPolicy,
    TargetPosition,
)
from schemas.messages.common import Operation
from schemas.messages.jobs import BackupResult
from services.bus import NODES_BUCKET, PLANS_BUCKET, Publisher, ensure_topology
from services.catalog.client import CatalogClient
from services.planner.client import PlannerClient
from services.planner.clock import ManualClock
from services.planner.errors import BUSY, NOT_RESTORABLE, UNKNOWN_DB
from services.planner.keys import lock_key, restore_key
from services.planner.phases import RestorePhase, RestoreRecord
from services.planner.service import PlannerService
from services.planner.settings import PlannerSettings
from services.settings import NatsSettings, Settings
from tests.doubles.catalog_events import SEG, backup, wal
from tests.integration.bus_helpers import FAST, unique, wait_for
from tests.integration.test_catalog_ingest import NarrowCatalog, catalog_settings

pytestmark = pytest.mark.integration

NOON = datetime(2026, 3, 1, 12, 0, 30, tzinfo=UTC)


@dataclass
class FakeExecutor:
    """A stand-in executor for one node (labelled fake: it runs nothing)."""

    nc: Client
    node: str
    databases: list[DatabaseRef]
    auto: bool = True
    """Answer each restore.run / backup.run at once with accepted → progress → succeeded."""
    commands: list[Envelope[Any]] = field(default_factory=list)

    async def start(self) -> None:
        self.publisher = Publisher(self.nc.jetstream(), source=f"executor@{self.node}")
        self.sub = await self.nc.subscribe(
            f"tm.cmd.executor.{node_token(self.node)}.>", cb=self._on_command
        )
        await self.beat()

    async def beat(self) -> None:
        kv = await self.nc.jetstream().key_value(NODES_BUCKET.name)
        value = {
            "node": self.node,
            "databases": [
                {"uid": d.uid, "engine": d.engine.value, "name": d.name} for d in self.databases
            ],
            "capacity": 2,
            "running": 0,
            "updated_at": datetime.now(UTC).isoformat(),
        }
        await kv.put(node_token(self.node), json.dumps(value).encode())

    async def stop(self) -> None:
        await self.sub.unsubscribe()
        kv = await self.nc.jetstream().key_value(NODES_BUCKET.name)
        await kv.delete(node_token(self.node))

    def of(self, kind: type[Any]) -> list[Any]:
        return [c.data for c in self.commands if isinstance(c.data, kind)]

    async def _on_command(self, msg: Msg) -> None:
        command = decode(msg.data, subject=msg.subject)
        self.commands.append(command)
        if self.auto and isinstance(command.data, RunRestore | RunBackup):
            await self.finish(command)

    async def emit(self, data: Any, cause: Envelope[Any]) -> None:
        await self.publisher.emit(data, cause=cause)

    async def finish(self, command: Envelope[Any]) -> None:
        """The job's whole life: accepted, progress, succeeded (and restore.completed)."""
        data = command.data
        restore = isinstance(data, RunRestore)
        operation = Operation.RESTORE if restore else Operation.BACKUP
        await self.emit(
            JobAccepted(
                job_id=data.job_id, command_id=command.id, operation=operation, node=self.node
            ),
            command,
        )
        await self.emit(
            JobProgress(job_id=data.job_id, operation=operation, phase="replaying", percent=50.0),
            command,
        )
        if not restore:
            return
        reached = Lsn.parse("0/4000000")
        result = RestoreResult(reached=reached, lineage=Timeline(id=2))
        now = datetime.now(UTC)
        await self.emit(
            JobSucceeded(
                job_id=data.job_id,
                operation=operation,
                result=result,
                started_at=now,
                finished_at=now,
            ),
            command,
        )
        await self.emit(
            RestoreCompleted(
                restore_id=data.restore_id,
                target=data.target,
                reached=reached,
                lineage=Timeline(id=2),
            ),
            command,
        )


class Events:
    """Every event about one database, decoded."""

    def __init__(self) -> None:
        self.messages: list[Envelope[Any]] = []

    async def on(self, msg: Msg) -> None:
        self.messages.append(decode(msg.data, subject=msg.subject))

    def of(self, kind: type[Any]) -> list[Any]:
        return [m.data for m in self.messages if isinstance(m.data, kind)]


@dataclass
class Rig:
    nc: Client
    nats_url: str
    tmp: Path
    uid: str
    db: DatabaseRef
    clock: ManualClock
    events: Events
    planners: list[PlannerService] = field(default_factory=list)
    executors: list[FakeExecutor] = field(default_factory=list)

    def settings(self, name: str) -> Settings:
        return Settings(
            node=name,
            state_dir=self.tmp / name,
            nats=NatsSettings(url=self.nats_url),
            bus=FAST,
            planner=PlannerSettings(tick_s=0.05, catchup_grace_s=3600),
        )

    async def planner(self, name: str = "planner-a") -> PlannerService:
        service = PlannerService(
            settings=self.settings(name), clock=self.clock, run_retention=False
        )
        await service.start()
        self.planners.append(service)
        return service

    async def executor(self, node: str, *dbs: DatabaseRef, auto: bool = True) -> FakeExecutor:
        fake = FakeExecutor(self.nc, node, list(dbs), auto=auto)
        await fake.start()
        self.executors.append(fake)
        return fake

    def client(self) -> PlannerClient:
        return PlannerClient(self.nc, timeout=15)

    async def record(self, restore_id: str) -> RestoreRecord | None:
        kv = await self.nc.jetstream().key_value(PLANS_BUCKET.name)
        try:
            entry = await kv.get(restore_key(uuid.UUID(restore_id)))
        except Exception:
            return None
        return RestoreRecord.model_validate_json(entry.value or b"{}")

    async def has_lock(self) -> bool:
        kv = await self.nc.jetstream().key_value(PLANS_BUCKET.name)
        try:
            entry = await kv.get(lock_key(self.uid))
        except Exception:
            return False
        return bool(entry.value)


@pytest.fixture
async def rig(nc: Client, nats_url: str, tmp_path: Path) -> AsyncIterator[Rig]:
    await ensure_topology(nc.jetstream(), FAST)
    uid = unique("pl")
    db = DatabaseRef(uid=uid, engine=Engine.POSTGRES, name="orders", system_id=7)
    events = Events()
    sub = await nc.subscribe(f"tm.evt.*.*.{uid}", cb=events.on)
    rig = Rig(nc, nats_url, tmp_path, uid, db, ManualClock(NOON), events)
    try:
        yield rig
    finally:
        await sub.unsubscribe()
        for planner in rig.planners:
            if planner.state.value != "stopped":
                await planner.stop()
        for fake in rig.executors:
            await fake.stop()


@pytest.fixture
async def catalog(rig: Rig) -> AsyncIterator[CatalogClient]:
    """A real catalog service that indexed the rig's database: segments 2-8 and 10-13 (9 is
    missing), a base backup in each stretch."""
    service = NarrowCatalog(
        settings=catalog_settings(rig.nats_url, rig.tmp / "catalog"), only=[rig.uid]
    )
    await service.start()
    js = rig.nc.jetstream()
    payloads: list[Any] = [wal(s, database=rig.db) for s in [*range(2, 9), *range(10, 14)]]
    payloads += [
        backup("b1", 2 * SEG + 40, 3 * SEG + 100, Timeline(id=1), minute=3, database=rig.db),
        backup("b2", 10 * SEG + 40, 10 * SEG + 500, Timeline(id=1), minute=10, database=rig.db),
    ]
    for data in payloads:
        message = envelope(data, source="archiver@db-node-1", database=rig.db)
        await js.publish(
            f"tm.evt.{data.TYPE}.{rig.uid}",
            message.model_dump_json().encode(),
            headers={"Nats-Msg-Id": str(message.id)},
        )
    client = CatalogClient(rig.nc, timeout=5)

    async def indexed() -> bool:
        try:
            return len((await client.windows(rig.uid)).backups) == 2
        except Exception:
            return False

    for _ in range(100):
        if await indexed():
            break
        await asyncio.sleep(0.1)
    else:
        raise AssertionError("the catalog did not index the synthetic history")
    try:
        yield client
    finally:
        await service.stop()


async def eventually(check: Callable[[], Any], timeout: float = 10.0) -> Any:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        value = await check()
        if value:
            return value
        if loop.time() > deadline:
            raise AssertionError(f"not true within {timeout}s")
        await asyncio.sleep(0.05)


async def test_policy_set_and_show(rig: Rig) -> None:
    await rig.executor(unique("node"), rig.db)
    await rig.planner()
    client = rig.client()
    policy = BackupPolicy(full_cron="0 1 * * *", recovery_window_days=3, verify_cron=None)
    answer = await client.request(SetPolicy(policy=policy), rig.uid)
    assert isinstance(answer, RequestAccepted), answer
    shown = await client.policy(rig.uid)
    assert shown.policy == policy
    assert shown.revision is not None
    assert answer.ref_id == str(shown.revision)
    await wait_for(lambda: any(m.type == "policy.changed" for m in rig.events.messages))
    removed = await client.request(SetPolicy(policy=None), rig.uid)
    assert isinstance(removed, RequestAccepted)
    assert (await client.policy(rig.uid)).policy is None


async def test_backup_is_routed_to_the_hosting_node(rig: Rig) -> None:
    other = await rig.executor(
        unique("node"), DatabaseRef(uid=unique("x"), engine=Engine.POSTGRES, name="x")
    )
    host = await rig.executor(unique("node"), rig.db)
    await rig.planner()
    answer = await rig.client().request(RequestBackup(spec=BackupSpec()), rig.uid)
    assert isinstance(answer, RequestAccepted), answer
    await wait_for(lambda: host.of(RunBackup))
    [run] = host.of(RunBackup)
    assert run.backup_id == answer.ref_id
    assert not other.commands
    assert await rig.has_lock()
    # The job's end releases the database.
    [command] = [c for c in host.commands if isinstance(c.data, RunBackup)]
    now = datetime.now(UTC)
    await host.emit(
        JobSucceeded(
            job_id=run.job_id,
            operation=Operation.BACKUP,
            result=BackupResult(
                backup_id=run.backup_id,
                manifest_key=f"{rig.uid}/backups/{run.backup_id}/manifest.json",
                size_bytes=1,
                consistent_at=Lsn(value=1),
            ),
            started_at=now,
            finished_at=now,
        ),
        command,
    )

    async def unlocked() -> bool:
        return not await rig.has_lock()

    await eventually(unlocked)


async def test_unknown_database_is_rejected(rig: Rig, catalog: CatalogClient) -> None:
    await rig.planner()
    stranger = DatabaseRef(uid=unique("nobody"), engine=Engine.POSTGRES, name="nobody")
    answer = await rig.client().request(RequestBackup(), stranger)
    assert isinstance(answer, RequestRejected)
    assert answer.code == UNKNOWN_DB
    assert stranger.uid in answer.reason


async def test_two_replicas_emit_a_scheduled_backup_once(rig: Rig) -> None:
    rig.clock.set(datetime(2026, 3, 2, 0, 59, 50, tzinfo=UTC))
    host = await rig.executor(unique("node"), rig.db, auto=False)
    await rig.planner("planner-a")
    await rig.planner("planner-b")
    policy = BackupPolicy(full_cron="0 1 * * *", verify_cron=None)
    assert isinstance(
        await rig.client().request(SetPolicy(policy=policy), rig.uid), RequestAccepted
    )
    await asyncio.sleep(0.3)
    assert not host.of(RunBackup), "nothing is due before 01:00"
    rig.clock.set(datetime(2026, 3, 2, 1, 0, 1, tzinfo=UTC))
    await wait_for(lambda: host.of(RunBackup))
    await asyncio.sleep(1.0)  # many ticks of both replicas
    assert len(host.of(RunBackup)) == 1
    [run] = host.of(RunBackup)
    assert run.backup_id.startswith("20260302T010000-")
    # A restart (both replicas gone, a new one within the grace period) does not repeat it.
    for planner in rig.planners:
        await planner.stop()
    rig.clock.set(datetime(2026, 3, 2, 1, 30, tzinfo=UTC))
    await rig.planner("planner-c")
    await asyncio.sleep(0.5)
    assert len(host.of(RunBackup)) == 1


async def test_restore_outside_the_window_is_rejected(rig: Rig, catalog: CatalogClient) -> None:
    host = await rig.executor(unique("node"), rig.db)
    await rig.planner()
    target = TargetPosition(position=Lsn.parse("0/9800000"))
    answer = await rig.client().request(RequestRestore(target=target), rig.uid)
    assert isinstance(answer, RequestRejected), answer
    assert answer.code == NOT_RESTORABLE
    assert "gap" in answer.reason
    assert str(answer.nearest_before) == "0/9000000"
    await wait_for(lambda: rig.events.of(RestoreFailed))
    await asyncio.sleep(0.3)
    assert not host.of(RunRestore)
    assert not await rig.has_lock()


async def test_restore_in_the_window_completes(rig: Rig, catalog: CatalogClient) -> None:
    host = await rig.executor(unique("node"), rig.db)
    await rig.planner()
    target = TargetPosition(position=Lsn.parse("0/4000000"))
    answer = await rig.client().request(RequestRestore(target=target), rig.uid)
    assert isinstance(answer, RequestAccepted), answer
    assert answer.ref_id is not None
    [run] = host.of(RunRestore)
    assert run.plan.base_backup_id == "b1"
    assert run.plan.base_manifest_key.endswith("/backups/b1/manifest.json")
    assert run.target == target
    assert run.plan.recovery == {}, "the target reaches the engine typed, untranslated"
    assert run.plan.lineage == Timeline(id=1)
    assert run.plan.log_keys
    ref_id = answer.ref_id

    async def completed() -> bool:
        record = await rig.record(ref_id)
        return record is not None and record.phase is RestorePhase.COMPLETED

    await eventually(completed)
    await wait_for(lambda: rig.events.of(RestoreProgress))
    record = await rig.record(ref_id)
    assert record is not None
    assert str(record.reached) == "0/4000000"

    async def unlocked() -> bool:
        return not await rig.has_lock()

    await eventually(unlocked)


async def test_a_new_planner_resumes_a_dispatched_restore(rig: Rig, catalog: CatalogClient) -> None:
    host = await rig.executor(unique("node"), rig.db, auto=False)
    first = await rig.planner("planner-a")
    target = TargetPosition(position=Lsn.parse("0/4000000"))
    answer = await rig.client().request(RequestRestore(target=target), rig.uid)
    assert isinstance(answer, RequestAccepted), answer
    assert answer.ref_id is not None
    await wait_for(lambda: host.of(RunRestore))
    await first.stop()
    # While no planner runs, the executor does the whole job.
    [command] = [c for c in host.commands if isinstance(c.data, RunRestore)]
    await host.finish(command)
    record = await rig.record(answer.ref_id)
    assert record is not None
    assert record.phase is RestorePhase.DISPATCHED
    await rig.planner("planner-b")
    ref_id = answer.ref_id

    async def completed() -> bool:
        record = await rig.record(ref_id)
        return record is not None and record.phase is RestorePhase.COMPLETED

    await eventually(completed)
    assert not await rig.has_lock()


async def test_a_backup_during_a_restore_is_refused(rig: Rig, catalog: CatalogClient) -> None:
    host = await rig.executor(unique("node"), rig.db, auto=False)
    await rig.planner()
    client = rig.client()
    target = TargetPosition(position=Lsn.parse("0/4000000"))
    restore = await client.request(RequestRestore(target=target), rig.uid)
    assert isinstance(restore, RequestAccepted)
    answer = await client.request(RequestBackup(), rig.uid)
    assert isinstance(answer, RequestRejected)
    assert answer.code == BUSY
    assert str(restore.ref_id) in answer.reason
    await asyncio.sleep(0.3)
    assert not host.of(RunBackup)


async def test_cli_guards_refuse_before_anything_is_sent(rig: Rig, catalog: CatalogClient) -> None:
    host = await rig.executor(unique("node"), rig.db)
    await rig.planner()

    async def tidemark(*args: str) -> subprocess.CompletedProcess[str]:
        return await asyncio.to_thread(
            subprocess.run,
            [sys.executable, "-m", "services.cli.main", *args, "--nats-url", rig.nats_url],
            capture_output=True,
            text=True,
            timeout=60,
            stdin=subprocess.DEVNULL,  # no terminal: an in-place restore must not be confirmed
        )

    # An in-place restore is refused without --in-place --yes: nothing reaches the executor.
    for flags in ((), ("--in-place",)):
        refused = await tidemark("restore", rig.uid, "--lsn", "0/4000000", *flags)
        assert refused.returncode == 1, refused.stdout + refused.stderr
        assert "refused" in refused.stdout
        assert "replaces its data directory" in refused.stdout
    # A clone on a port already taken on this host is refused before it is sent.
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = str(taken.getsockname()[1])
        clash = await tidemark(
            "restore", rig.uid, "--lsn", "0/4000000", "--into", "/var/tmp/x", "--port", port
        )
    assert clash.returncode == 1, clash.stdout + clash.stderr
    assert f"a clone on port {port}" in clash.stdout
    assert not host.of(RunRestore)

    # policy set changes only what it is given.
    first = await tidemark(
        "policy", "set", rig.uid, "--full-cron", "30 2 * * *", "--compression", "zstd"
    )
    assert first.returncode == 0, first.stdout + first.stderr
    second = await tidemark("policy", "set", rig.uid, "--window-days", "30")
    assert second.returncode == 0, second.stdout + second.stderr
    shown = await tidemark("policy", "show", rig.uid, "--output", "json")
    assert shown.returncode == 0, shown.stdout + shown.stderr
    document = json.loads(shown.stdout)
    assert document["policy"]["full_cron"] == "30 2 * * *"
    assert document["policy"]["compression"] == "zstd"
    assert document["policy"]["recovery_window_days"] == 30
    assert document["policy"]["verify_cron"] == "0 3 * * *"
    next_full = datetime.fromisoformat(document["next_runs"]["full"])
    assert (next_full.hour, next_full.minute) == (2, 30)
    assert next_full > datetime.now(UTC)
    text = await tidemark("policy", "show", rig.uid)
    assert f"next {document['next_runs']['full']}" in text.stdout

    # An incremental PostgreSQL backup is rejected at intake, with the reason.
    incremental = await tidemark("backup", rig.uid, "--kind", "incremental")
    assert incremental.returncode == 1, incremental.stdout + incremental.stderr
    assert "rejected (TM-PLAN-UNSUPPORTED)" in incremental.stdout
    assert "full base backups only" in incremental.stdout
    assert not host.of(RunBackup)


async def test_cli_policy_backup_and_restore(rig: Rig, catalog: CatalogClient) -> None:
    await rig.executor(unique("node"), rig.db)
    await rig.planner()

    async def tidemark(*args: str) -> subprocess.CompletedProcess[str]:
        # In a thread: the planner answering the CLI runs on this test's event loop.
        return await asyncio.to_thread(
            subprocess.run,
            [sys.executable, "-m", "services.cli.main", *args, "--nats-url", rig.nats_url],
            capture_output=True,
            text=True,
            timeout=60,
        )

    bad = await tidemark("policy", "set", rig.uid, "--full-cron", "0 25 * * *")
    assert bad.returncode == 2, bad.stdout + bad.stderr
    assert "outside 0-23" in bad.stdout + bad.stderr
    good = await tidemark(
        "policy", "set", rig.uid, "--full-cron", "30 2 * * *", "--window-days", "3"
    )
    assert good.returncode == 0, good.stdout + good.stderr
    assert "accepted" in good.stdout
    shown = await tidemark("policy", "show", rig.uid)
    assert shown.returncode == 0, shown.stdout + shown.stderr
    assert "30 2 * * *" in shown.stdout
    outside = await tidemark("restore", rig.uid, "--lsn", "0/9800000", "--in-place", "--yes")
    assert outside.returncode == 1, outside.stdout + outside.stderr
    assert "rejected" in outside.stdout
    assert "nearest before: 0/9000000" in outside.stdout
    inside = await tidemark("restore", rig.uid, "--lsn", "0/4000000", "--in-place", "--yes")
    assert inside.returncode == 0, inside.stdout + inside.stderr
    assert "restored to 0/4000000" in inside.stdout
    latest = await tidemark("restore", rig.uid, "--to", "latest", "--in-place", "--yes")
    assert latest.returncode == 0, latest.stdout + latest.stderr
    # The end of the newest window (the rig's catalog has two on tl-1, the later up to E000000).
    assert "latest: 0/E000000 on tl-00000001" in latest.stdout
    assert "accepted" in latest.stdout
    elsewhere = await tidemark(
        "restore", rig.uid, "--to", "latest", "--timeline", "7", "--in-place", "--yes"
    )
    assert elsewhere.returncode == 1, elsewhere.stdout + elsewhere.stderr
    assert "no restorable window on tl-00000007" in elsewhere.stdout
    queued = await tidemark("backup", rig.uid, "--no-wait")
    assert queued.returncode == 0, queued.stdout + queued.stderr
    assert "accepted" in queued.stdout


async def test_a_scheduled_verification_is_a_saga_that_records_a_job_that_could_not_run(
    rig: Rig, catalog: CatalogClient
) -> None:
    rig.clock.set(datetime(2026, 3, 2, 2, 59, 50, tzinfo=UTC))
    host = await rig.executor(unique("node"), rig.db, auto=False)
    await rig.planner()
    policy = BackupPolicy(full_cron="0 1 * * *", verify_cron="0 3 * * *")
    assert isinstance(
        await rig.client().request(SetPolicy(policy=policy), rig.uid), RequestAccepted
    )
    rig.clock.set(datetime(2026, 3, 2, 3, 0, 1, tzinfo=UTC))
    await wait_for(lambda: host.of(RunVerify))
    [run] = host.of(RunVerify)
    assert run.backup_id == "b2"  # the newest base
    [command] = [c for c in host.commands if isinstance(c.data, RunVerify)]
    await host.emit(
        JobFailed(
            job_id=run.job_id,
            operation=Operation.VERIFY,
            failure=Failure(reason="scratch volume full", code="TM-PG-VERIFY"),
        ),
        command,
    )

    async def recorded_failed() -> bool:
        kv = await rig.nc.jetstream().key_value(PLANS_BUCKET.name)
        try:
            entry = await kv.get(f"verifying.{run.job_id}")
        except Exception:
            return False
        record = json.loads(entry.value or b"{}")
        return record.get("phase") == "failed" and "scratch" in record["failure"]["reason"]

    await eventually(recorded_failed)
