"""Tidemark's side: archiving into a `file://` store, the engine's base backup, and the timed
restore into a clone.

Archiving is the archive benchmark's pipeline (`bench.archive.ours`: walpush into a spool, the
archiver's streamer in a process of its own reading ahead from `pg_wal`), with the key prefix
and compression of this benchmark. The base backup is `PostgresEngine.backup` (pg_basebackup
streamed into the store in parts, manifest last). The restore is `restore()` from
`services.engines.postgres.restore`, exactly as the executor calls it for a `restore.run`
command in clone mode, with a plan as the catalog would give it: the base's manifest and the
archived segments from the base's start on.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import resource
import sys
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

from bench.archive.cluster import SEGMENT_SIZE, BenchCluster, wal_file_name
from bench.archive.ours import DATABASE_UID
from bench.archive.settings import Compression
from schemas import Engine, Lsn, Timeline
from schemas.messages import BackupSpec, RunRestore
from schemas.messages import Compression as BackupCompression
from schemas.messages.common import ProgressUnit
from schemas.messages.restores import CloneSpec, RestoreMode, RestorePlan, TargetPosition
from services.archiver.keys import database_prefix
from services.archiver.settings import ArchiverSettings
from services.blobstore import open_store
from services.engines.base import BackupOutcome
from services.engines.postgres.engine import PostgresEngine
from services.engines.postgres.fetchserver import FetchStats
from services.engines.postgres.oscmd import run_as, user_env
from services.engines.postgres.restore import restore
from services.executor.settings import ExecutorSettings, HostedDatabase, PostgresInstance

PREFIX = "bench"
BACKUP_ID = "bench-base"


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


class PhaseClock:
    """The `JobContext` the engine reports to: when each phase began, and a line on stderr when
    one does (a benchmark has no executor to publish `job.progress`)."""

    def __init__(self, what: str) -> None:
        self.what = what
        self.began: dict[str, float] = {}
        self._job_id = uuid.uuid4()

    @property
    def job_id(self) -> uuid.UUID:
        return self._job_id

    async def progress(
        self,
        phase: str,
        *,
        done: int | None = None,
        total: int | None = None,
        unit: ProgressUnit | None = None,
        message: str = "",
    ) -> None:
        if phase not in self.began:
            self.began[phase] = time.perf_counter()
            log(f"  {self.what}: {phase}{f' ({message})' if message else ''}")

    def durations(self, end: float) -> dict[str, float]:
        """Seconds spent in each phase, in order; the last one runs until `end`."""
        phases = sorted(self.began.items(), key=lambda item: item[1])
        ends = [began for _, began in phases[1:]] + [end]
        return {name: stop - began for (name, began), stop in zip(phases, ends, strict=True)}


def archiver_settings(store_url: str, compression: Compression) -> ArchiverSettings:
    return ArchiverSettings(
        store_url=store_url,
        prefix=PREFIX,
        compression=compression.kind,
        zstd_level=compression.level,
    )


def hosted_database(cluster: BenchCluster, system_id: int) -> HostedDatabase:
    """The source as the executor's settings would name it."""
    return HostedDatabase(
        uid=DATABASE_UID,
        engine=Engine.POSTGRES,
        name="bench",
        system_id=system_id,
        postgres=PostgresInstance(
            data_dir=cluster.data_dir,
            port=cluster.port,
            socket_dir=cluster.base,
            os_user=cluster.user.name,
            bin_dir=cluster.bindir,
        ),
    )


async def take_base_backup(
    db: HostedDatabase, store_url: str, compression: Compression
) -> BackupOutcome:
    spec = BackupSpec(
        compression=BackupCompression.ZSTD if compression.kind == "zstd" else BackupCompression.NONE
    )
    store = open_store(store_url)
    try:
        return await PostgresEngine(ExecutorSettings()).backup(
            db,
            backup_id=BACKUP_ID,
            spec=spec,
            store=store,
            prefix=PREFIX,
            ctx=PhaseClock("our base backup"),
        )
    finally:
        await store.close()


async def restore_plan(store_url: str, base: BackupOutcome) -> RestorePlan:
    """What the catalog would answer: the base, then every archived segment from its start."""
    assert isinstance(base.lineage, Timeline)
    assert isinstance(base.start, Lsn)
    timeline = base.lineage.id
    first = wal_file_name(timeline, base.start.value // SEGMENT_SIZE)
    logs = f"{database_prefix(PREFIX, DATABASE_UID)}/tl-{timeline:08X}/logs/"
    store = open_store(store_url)
    try:
        keys = sorted(
            [info.key async for info in store.list(logs) if info.key.rpartition("/")[2] >= first],
            key=lambda key: key.rpartition("/")[2],
        )
    finally:
        await store.close()
    return RestorePlan(
        base_backup_id=base.backup_id,
        base_manifest_key=base.manifest_key,
        log_keys=keys,
        lineage=base.lineage,
    )


@dataclass
class OursTimed:
    seconds: float
    """From the restore's call to the expected count answered on the clone."""
    count_seconds: float
    phases: dict[str, float]
    stats: FetchStats
    reached: str
    timeline: int
    rows: int
    cpu_seconds: float
    """User and system CPU of this process (the extraction and the fetch server, as in the
    executor) from the call until `restore()` returned: on a small database host it competes
    with PostgreSQL's replay."""


def _cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def query_at(cluster: BenchCluster, port: int, sql: str) -> str:
    """One statement on the cluster listening at `port` in `cluster.base` (a clone of it)."""
    argv: list[str | os.PathLike[str]] = [cluster.bindir / "psql", "-X", "-A", "-t", "-q"]
    argv += ["-v", "ON_ERROR_STOP=1"]
    argv += ["-h", cluster.base, "-p", str(port), "-d", "postgres", "-c", sql]
    done = run_as(cluster.user, argv, cwd=cluster.base, env=user_env(cluster.user), timeout=3600)
    if done.returncode != 0:
        raise RuntimeError(f"psql {sql!r} on port {port} failed: {done.stderr.strip()}")
    return done.stdout.strip()


async def timed_restore(
    source: BenchCluster,
    db: HostedDatabase,
    plan: RestorePlan,
    *,
    store_url: str,
    target_lsn: int,
    data_dir: Path,
    port: int,
    count_sql: str,
) -> OursTimed:
    """Restore a clone into `data_dir` on `port` to `target_lsn`, then count on it; the clone is
    left running (`stop_clone`)."""
    command = RunRestore(
        job_id=uuid.uuid4(),
        restore_id=uuid.uuid4(),
        target=TargetPosition(position=Lsn(value=target_lsn)),
        mode=RestoreMode.CLONE,
        clone=CloneSpec(data_dir=str(data_dir), port=port),
        plan=plan,
    )
    clock = PhaseClock("our restore")
    stats = FetchStats()
    store = open_store(store_url)
    try:
        cpu = _cpu_seconds()
        start = time.perf_counter()
        result = await restore(
            db,
            command,
            store=store,
            prefix=PREFIX,
            ctx=clock,
            settings=ExecutorSettings(),
            stats=stats,
        )
        restored = time.perf_counter()
        cpu = _cpu_seconds() - cpu
        rows = int(await asyncio.to_thread(query_at, source, port, count_sql))
        end = time.perf_counter()
    finally:
        await store.close()
    assert isinstance(result.lineage, Timeline)
    return OursTimed(
        seconds=end - start,
        count_seconds=end - restored,
        phases=clock.durations(restored),
        stats=stats,
        reached=str(result.reached),
        timeline=result.lineage.id,
        rows=rows,
        cpu_seconds=cpu,
    )


def stop_clone(source: BenchCluster, data_dir: Path) -> None:
    if (data_dir / "postmaster.pid").exists():
        with contextlib.suppress(Exception):
            run_as(
                source.user,
                [source.bindir / "pg_ctl", "-D", data_dir, "stop", "-m", "immediate", "-w"],
                cwd="/",
                env=user_env(source.user),
                timeout=120,
            )
