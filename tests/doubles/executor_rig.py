"""An executor's job runner on a temp journal, an in-memory store, a `FakeEngine` and a recording
event sink: the executor without NATS, for unit tests."""

from __future__ import annotations

import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from schemas import DatabaseRef, Engine, Envelope, Lsn, Timeline, envelope
from schemas.messages import (
    BackupSpec,
    RestoreMode,
    RestorePlan,
    RunBackup,
    RunRestore,
    RunVerify,
    TargetPosition,
)
from services.blobstore import MemoryStore
from services.engines.registry import EngineRegistry
from services.executor.jobs import JobRunner
from services.executor.journal import Journal
from services.executor.settings import (
    ExecutorSettings,
    HostedDatabase,
    OracleInstance,
    PostgresInstance,
)
from tests.doubles.fake_engine import FakeEngine

NODE = "node-1"


def hosted(uid: str, engine: Engine = Engine.POSTGRES) -> HostedDatabase:
    postgres = (
        PostgresInstance(data_dir=Path(f"/fake/{uid}")) if engine is Engine.POSTGRES else None
    )
    oracle = (
        OracleInstance(
            oracle_home=Path(f"/fake/{uid}/home"),
            oracle_sid="FAKE",
            staging_dir=Path(f"/fake/{uid}/stage"),
            dsn="fake:1521/FAKE",
            user="C##TIDEMARK",
            password_file=Path(f"/fake/{uid}/password"),
        )
        if engine is Engine.ORACLE
        else None
    )
    return HostedDatabase(
        uid=uid, engine=engine, name=uid.replace("-", "_"), postgres=postgres, oracle=oracle
    )


def ref(uid: str, engine: Engine = Engine.POSTGRES) -> DatabaseRef:
    return DatabaseRef(uid=uid, engine=engine, name=uid.replace("-", "_"))


def run_backup(
    uid: str = "orders",
    *,
    job_id: uuid.UUID | None = None,
    backup_id: str = "b1",
    engine: Engine = Engine.POSTGRES,
) -> Envelope[RunBackup]:
    data = RunBackup(job_id=job_id or uuid.uuid4(), backup_id=backup_id, spec=BackupSpec())
    return envelope(data, source="planner", database=ref(uid, engine))


def run_restore(uid: str = "orders", *, job_id: uuid.UUID | None = None) -> Envelope[RunRestore]:
    data = RunRestore(
        job_id=job_id or uuid.uuid4(),
        restore_id=uuid.uuid4(),
        target=TargetPosition(position=Lsn.parse("0/3000000")),
        mode=RestoreMode.IN_PLACE,
        plan=RestorePlan(
            base_backup_id="b1",
            base_manifest_key=f"p/{uid}/backups/b1/manifest.json",
            lineage=Timeline(id=1),
        ),
    )
    return envelope(data, source="planner", database=ref(uid))


def run_verify(uid: str = "orders", *, job_id: uuid.UUID | None = None) -> Envelope[RunVerify]:
    data = RunVerify(
        job_id=job_id or uuid.uuid4(),
        backup_id="b1",
        manifest_key=f"p/{uid}/backups/b1/manifest.json",
    )
    return envelope(data, source="planner", database=ref(uid))


class RecordingSink:
    """Records published events. `down` plays NATS that refuses every publish."""

    def __init__(self) -> None:
        self.messages: list[Envelope[Any]] = []
        self.down = False

    async def publish(self, message: Envelope[Any]) -> object:
        if self.down:
            raise ConnectionError("nats is down (test)")
        self.messages.append(message)
        return None

    def types(self, job_id: uuid.UUID | None = None) -> list[str]:
        return [m.type for m in self.of(job_id)]

    def of(self, job_id: uuid.UUID | None = None, *types: str) -> list[Envelope[Any]]:
        return [
            m
            for m in self.messages
            if (job_id is None or getattr(m.data, "job_id", job_id) == job_id)
            and (not types or m.type in types)
        ]


@dataclass
class KeepAlive:
    """Counts `in_progress()` calls, as a delivery would receive them."""

    calls: int = 0

    async def __call__(self) -> None:
        self.calls += 1


@dataclass
class Rig:
    tmp: Path
    engine: FakeEngine = field(default_factory=FakeEngine)
    sink: RecordingSink = field(default_factory=RecordingSink)
    store: MemoryStore = field(default_factory=MemoryStore)
    databases: Iterable[HostedDatabase] = ()
    options: dict[str, Any] = field(default_factory=dict)
    journal: Journal | None = None

    def __post_init__(self) -> None:
        self.settings = ExecutorSettings(
            databases=list(self.databases) or [hosted("orders"), hosted("billing")],
            **{"progress_interval_s": 0.05, "cancel_grace_s": 2.0, **self.options},
        )
        self.keepalive = KeepAlive()
        self.runner = self.new_runner()

    def new_runner(self) -> JobRunner:
        """A runner on the same journal file, as after a restart."""
        if self.journal is not None:
            self.journal.close()
        self.journal = Journal(self.tmp / "jobs.sqlite")
        return JobRunner(
            settings=self.settings,
            journal=self.journal,
            engines=EngineRegistry(
                self.settings, drivers={Engine.POSTGRES: self.engine}, loadable={}
            ),
            store=self.store,
            prefix="p",
            publish=self.sink.publish,
            node=NODE,
            source=f"executor@{NODE}",
            scratch_dir=self.tmp / "scratch",
        )

    async def run(self, message: Envelope[Any]) -> None:
        await self.runner.run(message, self.keepalive)

    def close(self) -> None:
        if self.journal is not None:
            self.journal.close()
