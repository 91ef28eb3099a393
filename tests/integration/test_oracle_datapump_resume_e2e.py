"""A `datapump` migration whose executor is SIGKILLed in the middle of its import, through the
real planner and a real executor process over NATS, on two simulated Oracle databases (not
Oracle; `tests/oracle_sim`):

    planner (in this process) ── migration.final_sync ──▶ executor process ── impdp ──▶ sims
                                                            SIGKILL, then started again

The dump set is two `%U` files (PARALLEL=2). The import hangs at a named table with the first
table loaded; the executor's process group is killed, and so is the hung client (a node that
dies takes the client with it; the simulated client is the job, so this is its workers' crash
and DBA_DATAPUMP_JOBS shows it NOT RUNNING). The executor started again reports the step
interrupted, the saga runs it again, and the engine resumes the job it finds by ATTACH and
START_JOB: one import, never a second over the first's tables. Rows end identical.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from nats.aio.client import Client
from nats.aio.msg import Msg

from schemas import DatabaseRef, Engine, Envelope, decode, utcnow
from schemas.messages import (
    CutoverWindow,
    LagBudget,
    MigrationCompleted,
    MigrationFailed,
    MigrationMethod,
    RequestAccepted,
    RequestMigration,
    TargetInstance,
)
from services.bus import ensure_topology
from services.planner.client import PlannerClient
from services.planner.service import PlannerService
from services.planner.settings import PlannerSettings
from services.settings import NatsSettings, Settings
from tests.integration.bus_helpers import FAST, unique
from tests.integration.oracle_executor_child import ROOTS_ENV
from tests.integration.test_oracle_datapump_e2e import _hosted
from tests.oracle_sim.db import SimulatedOracle
from tests.oracle_sim.dictionary import SimulatedDictionary

pytestmark = [pytest.mark.integration, pytest.mark.oracle]

NODE = "ora-dp-resume-node"
HANG_AT = "TABLE_DATA:APP.ORDERS"


@dataclass
class ExecutorProcess:
    """`python -m tests.integration.oracle_executor_child` on NODE."""

    nats_url: str
    state_dir: Path
    databases: list[dict[str, Any]]
    roots: dict[str, str]
    proc: subprocess.Popen[bytes] | None = None
    runs: int = 0

    @property
    def log_path(self) -> Path:
        return self.state_dir / f"executor-{self.runs}.log"

    def start(self) -> None:
        self.runs += 1
        self.state_dir.mkdir(parents=True, exist_ok=True)
        env = dict(os.environ)
        env.update(
            {
                "TIDEMARK_STATE_DIR": str(self.state_dir),
                "TIDEMARK_HEALTH_INTERVAL_S": "0.5",
                "TIDEMARK_TELEMETRY__LOG_FORMAT": "text",
                "TIDEMARK_BUS__ACK_WAIT_S": "2",
                "TIDEMARK_EXECUTOR__HEARTBEAT_S": "0.5",
                "TIDEMARK_EXECUTOR__DATABASES": json.dumps(self.databases),
                ROOTS_ENV: json.dumps(self.roots),
            }
        )
        with open(self.log_path, "ab") as out:
            self.proc = subprocess.Popen(
                [
                    sys.executable,
                    *("-m", "tests.integration.oracle_executor_child"),
                    *("--nats-url", self.nats_url, "--node", NODE),
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
        return "\n".join(
            (self.state_dir / f"executor-{n}.log").read_text()[-2000:]
            for n in range(1, self.runs + 1)
            if (self.state_dir / f"executor-{n}.log").exists()
        )


@dataclass
class Rig:
    nc: Client
    executor: ExecutorProcess
    source_uid: str
    target_uid: str
    src: SimulatedDictionary
    tgt: SimulatedDictionary
    tgt_db: SimulatedOracle
    events: list[Envelope[Any]] = field(default_factory=list)

    def ended(self, migration_id: uuid.UUID) -> MigrationCompleted | MigrationFailed | None:
        for event in self.events:
            data = event.data
            if (
                isinstance(data, (MigrationCompleted, MigrationFailed))
                and data.migration_id == migration_id
            ):
                return data
        return None


@pytest.fixture
async def rig(nc: Client, nats_url: str, tmp_path: Path) -> AsyncIterator[Rig]:
    await ensure_topology(nc.jetstream(), FAST)
    uids = {"src": unique("ora-dpr-src"), "tgt": unique("ora-dpr-tgt")}
    dictionaries: dict[str, SimulatedDictionary] = {}
    hosted = {}
    for side, uid in uids.items():
        root = tmp_path / side
        dictionaries[side] = SimulatedDictionary(SimulatedOracle.create(root, threads=1))
        hosted[side] = _hosted(tmp_path, uid, root)
        dictionaries[side].create_directory("TM_MIG", tmp_path / f"{uid}-stage" / "datapump")
    dictionaries["src"].seed_schema("APP")
    executor = ExecutorProcess(
        nats_url,
        tmp_path / "executor-state",
        [db.model_dump(mode="json") for db in hosted.values()],
        {uids[side]: str(tmp_path / side) for side in uids},
    )
    planner = PlannerService(
        settings=Settings(
            node="planner",
            state_dir=tmp_path / "planner",
            nats=NatsSettings(url=nats_url),
            bus=FAST,
            planner=PlannerSettings(
                tick_s=0.1, migration_lag_interval_s=0.2, migration_ready_interval_s=0.2
            ),
        ),
        run_retention=False,
    )
    rig = Rig(
        nc,
        executor,
        uids["src"],
        uids["tgt"],
        dictionaries["src"],
        dictionaries["tgt"],
        dictionaries["tgt"].db,
    )

    async def on_event(msg: Msg) -> None:
        rig.events.append(decode(msg.data, subject=msg.subject))

    sub = await nc.subscribe(f"tm.evt.migration.*.{uids['src']}.*", cb=on_event)
    await planner.start()
    executor.start()
    try:
        client = PlannerClient(nc, timeout=5)
        for _ in range(300):
            try:
                await client.resolve(uids["src"])
                break
            except Exception:
                await asyncio.sleep(0.1)
        yield rig
    finally:
        executor.stop()
        for job in dictionaries["tgt"].read().jobs:  # a hung client this test left behind
            if job.pid is not None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(job.pid, signal.SIGKILL)
        await planner.stop()
        await sub.unsubscribe()


async def _until(what: str, rig: Rig, done: Any, timeout: float = 45.0) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = done()
        if found:
            return found
        await asyncio.sleep(0.1)
    raise AssertionError(f"{what} within {timeout}s\n{rig.executor.tail()}")


async def test_an_executor_killed_mid_import_resumes_the_job_by_attach_and_rows_match(
    rig: Rig,
) -> None:
    rig.tgt.inject_fault("impdp", HANG_AT, "hang")
    now = utcnow()
    request = RequestMigration(
        migration_id=uuid.uuid4(),
        target_instance=TargetInstance(
            database=DatabaseRef(uid=rig.target_uid, engine=Engine.ORACLE, name="TMSIM"), node=NODE
        ),
        method=MigrationMethod.DATAPUMP,
        options={"schemas": "APP", "parallel": "2"},
        windows=[CutoverWindow(start=now - timedelta(minutes=1), end=now + timedelta(hours=1))],
        downtime_budget_s=600.0,
        lag=LagBudget(max_seconds=60.0, hold_s=0.0),
        pause_after=None,
        reason="e2e: datapump resumed by ATTACH",
    )
    answer = await PlannerClient(rig.nc, timeout=30).request(request, rig.source_uid)
    assert isinstance(answer, RequestAccepted), answer

    await _until(
        "the import to reach its hang", rig, lambda: rig.tgt.fault_reached("impdp", HANG_AT)
    )
    [job] = rig.tgt.read().jobs
    assert job.pid is not None
    assert len(rig.tgt.table_rows("APP", "CUSTOMERS")) == 30  # the first table is in
    rig.executor.kill9()
    os.kill(job.pid, signal.SIGKILL)  # the client dies with its node (module docstring)
    await _until(
        "the job to read NOT RUNNING",
        rig,
        lambda: [r["state"] for r in rig.tgt.jobs()] == ["NOT RUNNING"],
        timeout=10,
    )

    rig.executor.start()
    ended = await _until("the migration to end", rig, lambda: rig.ended(request.migration_id), 60)
    assert isinstance(ended, MigrationCompleted), (ended, rig.executor.tail())

    runs = rig.tgt_db.runs("impdp")
    assert len(runs) == 2, runs  # the import, then the attach: no second import
    assert "DUMPFILE=" in runs[0]
    assert "PARALLEL=2" in runs[0]
    assert runs[1] == f"ATTACH={job.job_name}\n"
    assert rig.tgt.jobs() == []  # the restarted job finished and dropped its control table
    for table in ("CUSTOMERS", "ORDERS"):
        assert rig.tgt.table_rows("APP", table) == rig.src.table_rows("APP", table), table
