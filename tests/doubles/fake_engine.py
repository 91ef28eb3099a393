"""`FakeEngine`: a stand-in for a database engine driver, for executor tests. It is a fake.

It runs no database. A backup writes a small manifest to the store (so the store really holds
what `backup.completed` names), reports a few phases, and can be told to sleep, to wait for a
gate, to fail with an `EngineError`, or to ignore nothing: cancellation always stops it, and it
records that it was cancelled, as a real engine kills its children. It counts how many of its
operations run at once, per database and in all, so tests can check the executor's limits.
"""

from __future__ import annotations

import asyncio
import json
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime

from schemas import Lsn, Timeline
from schemas.messages import BackupSpec, Failure, RestoreResult, RunRestore, VerifyResult
from services.blobstore import BlobStore
from services.engines.base import BackupOutcome, Description, EngineError, JobContext
from services.executor.settings import HostedDatabase


@dataclass
class FakeEngine:
    """A fake engine driver (see the module docstring)."""

    sleep_s: float = 0.0
    """How long each operation takes (in steps of at most 0.05 s, reporting progress)."""
    gate: asyncio.Event | None = None
    """When set, each operation waits for it after its first progress report."""
    failure: Failure | None = None
    """When set, each operation raises `EngineError(failure)` at the end."""
    verify_ok: bool = True
    calls: list[tuple[str, str]] = field(default_factory=list)
    """(operation, database uid) in the order operations started."""
    finished: list[tuple[str, str]] = field(default_factory=list)
    cancelled: list[tuple[str, str]] = field(default_factory=list)
    active: Counter[str] = field(default_factory=Counter)
    max_active: Counter[str] = field(default_factory=Counter)
    """Most operations at once, per database uid and under "*" for all of them."""

    async def describe(self, db: HostedDatabase) -> Description:
        return Description(system_id=db.system_id, version="fake", lineage=None, position=None)

    async def setup_archiving(self, db: HostedDatabase, store: BlobStore, prefix: str) -> None:
        return None

    async def _operate(self, operation: str, db: HostedDatabase, ctx: JobContext) -> None:
        self.calls.append((operation, db.uid))
        for key in (db.uid, "*"):
            self.active[key] += 1
            self.max_active[key] = max(self.max_active[key], self.active[key])
        try:
            await ctx.progress("starting", message=f"fake {operation}")
            if self.gate is not None:
                await self.gate.wait()
            steps = max(1, int(self.sleep_s / 0.05))
            for step in range(steps):
                await asyncio.sleep(self.sleep_s / steps)
                await ctx.progress("copying", done=step + 1, total=steps, unit="files")
            await ctx.progress("finishing")
            if self.failure is not None:
                raise EngineError(self.failure)
            self.finished.append((operation, db.uid))
        except asyncio.CancelledError:
            self.cancelled.append((operation, db.uid))
            raise
        finally:
            for key in (db.uid, "*"):
                self.active[key] -= 1

    async def backup(
        self,
        db: HostedDatabase,
        *,
        backup_id: str,
        spec: BackupSpec,
        store: BlobStore,
        prefix: str,
        ctx: JobContext,
    ) -> BackupOutcome:
        started = datetime.now(UTC)
        await self._operate("backup", db, ctx)
        base = f"{prefix}/{db.uid}" if prefix else db.uid
        key = f"{base}/backups/{backup_id}/manifest.json"
        manifest = {"backup_id": backup_id, "fake": True, "job_id": str(ctx.job_id)}
        info = await store.put_stream(key, json.dumps(manifest, sort_keys=True).encode())
        return BackupOutcome(
            backup_id=backup_id,
            lineage=Timeline(id=1),
            start=Lsn.parse("0/2000028"),
            consistent_at=Lsn.parse("0/2000100"),
            started_at=started,
            completed_at=datetime.now(UTC),
            size_bytes=info.size,
            piece_count=1,
            manifest_key=key,
        )

    async def restore(
        self,
        db: HostedDatabase,
        command: RunRestore,
        *,
        store: BlobStore,
        prefix: str,
        ctx: JobContext,
    ) -> RestoreResult:
        await self._operate("restore", db, ctx)
        return RestoreResult(reached=Lsn.parse("0/3000000"), lineage=Timeline(id=2, parent=1))

    async def verify(
        self,
        db: HostedDatabase,
        *,
        backup_id: str,
        manifest_key: str,
        store: BlobStore,
        prefix: str,
        scratch_dir: str,
        ctx: JobContext,
    ) -> VerifyResult:
        await self._operate("verify", db, ctx)
        return VerifyResult(backup_id=backup_id, ok=self.verify_ok, checks=["fake: manifest read"])
