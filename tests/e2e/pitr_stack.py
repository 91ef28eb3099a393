"""The whole stack around real PostgreSQL clusters, for the point-in-time restore tests.

    stack = await PitrStack.start(root, [protect(root, "pitr-src")], store_url=None)
    done = await stack.backup(db)                      # through the planner, like a platform tool
    ledger = Ledger.start(db.cluster); ledger.write()  # what the table held after each commit
    await stack.wait_covered(db, ledger.entries[-1].lsn)
    restored = await stack.restore(db, TargetTime(at=moment), clone="at-moment")
    assert restored.table() == (entry.rows, entry.checksum)

Everything lives under one root directory (in /var/tmp, 0711: the database OS user must
traverse it): each cluster's base and spool, the stack's state (JetStream, logs, the file
store), and the clones. A background task calls `EmbeddedStack.supervise_once()`, as
`tidemark up` does, so a service the tests kill comes back. `close()` stops the clones, the
stack and the clusters; the caller removes the root.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import sys
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import nats
from nats.aio.client import Client
from nats.aio.msg import Msg

from schemas import ContractError, DatabaseRef, Engine, Envelope, Lineage, Lsn, decode
from schemas.catalog import WindowsReply
from schemas.messages import (
    BackupCompleted,
    BackupFailed,
    CloneSpec,
    RequestAccepted,
    RequestBackup,
    RequestRejected,
    RequestRestore,
    RestoreCompleted,
    RestoreFailed,
    RestoreMode,
    RestoreTarget,
)
from services.bus import PLANS_BUCKET
from services.bus.connection import credential_options
from services.bus.permissions import Role
from services.catalog.client import CatalogClient
from services.demo.cluster import LocalCluster, free_port
from services.demo.ledger import table_state
from services.engines.postgres.oscmd import check_traversable, system_python
from services.engines.postgres.spool import Spool, install_walpush
from services.planner.client import PlannerClient
from services.planner.store import Nodes
from services.stack.embedded import EmbeddedStack

NODE = "e2e-pitr"


class StackFailed(AssertionError):
    """The stack did not do what a test waited for; the message says what and why."""


@dataclass
class Protected:
    """One PostgreSQL cluster, archiving through walpush into its spool from its first segment."""

    uid: str
    cluster: LocalCluster
    spool: Spool
    system_id: int
    password_file: Path | None = None
    """The database password's file, if the executor is to be given one."""

    @property
    def ref(self) -> DatabaseRef:
        return DatabaseRef(
            uid=self.uid, engine=Engine.POSTGRES, name=self.uid, system_id=self.system_id
        )

    def declared(self) -> dict[str, Any]:
        """The database as the settings declare it (`[[databases]]`): executor and archiver
        both read this one declaration."""
        return {
            "uid": self.uid,
            "engine": "postgres",
            "name": self.uid,
            "system_id": self.system_id,
            "postgres": {
                "data_dir": str(self.cluster.data_dir),
                "port": self.cluster.port,
                "socket_dir": str(self.cluster.base),
                "os_user": self.cluster.user.name,
                **({"password_file": str(self.password_file)} if self.password_file else {}),
                "spool_dir": str(self.spool.path),
                "pg_wal_dir": str(self.cluster.data_dir / "pg_wal"),
            },
        }

    def switch_wal(self) -> Lsn:
        """Close the current segment so it is archived; the position just before the switch."""
        return Lsn.parse(self.cluster.psql("SELECT pg_switch_wal()"))


def protect(root: Path, uid: str) -> Protected:
    """Create and start a cluster under `root/uid` whose every segment goes through Tidemark."""
    home = root / uid
    home.mkdir(mode=0o711)
    os.chmod(home, 0o711)  # noqa: S103 (the database OS user traverses it)
    cluster = LocalCluster(home / "pg")
    spool = Spool(home / "spool")
    spool.init(uid, owner=cluster.user)
    tool = install_walpush(home / "tools", user=cluster.user)
    check_traversable(tool, cluster.user)
    command = spool.archive_command(system_python(cluster.user), tool)
    cluster.create(
        {
            "archive_mode": "on",
            "archive_command": "'" + command.replace("'", "''") + "'",
            "archive_timeout": "0",
        }
    )
    cluster.start()
    return Protected(uid, cluster, spool, cluster.system_id())


@dataclass
class Seen:
    subject: str
    event: Envelope[Any]


@dataclass
class Recorder:
    """Every Tidemark message (commands and events, `tm.>`) from the moment of subscription,
    decoded, in arrival order. Tests mark a position and look only at what came after it."""

    nc: Client
    seen: list[Seen] = field(default_factory=list)
    _changed: asyncio.Event = field(default_factory=asyncio.Event)

    async def start(self) -> None:
        async def take(msg: Msg) -> None:
            with contextlib.suppress(ContractError):
                self.seen.append(Seen(msg.subject, decode(msg.data, subject=msg.subject)))
                self._changed.set()

        await self.nc.subscribe("tm.>", cb=take)
        await self.nc.flush()

    def mark(self) -> int:
        return len(self.seen)

    def since(self, mark: int) -> list[Envelope[Any]]:
        return [s.event for s in self.seen[mark:]]

    async def wait_for(
        self,
        match: Callable[[Envelope[Any]], bool],
        *,
        since: int = 0,
        timeout: float,
        what: str,
        tick: Callable[[], None] | None = None,
    ) -> Envelope[Any]:
        deadline = time.monotonic() + timeout
        checked = since
        while True:
            for seen in self.seen[checked:]:
                if match(seen.event):
                    return seen.event
            checked = max(checked, len(self.seen))
            left = deadline - time.monotonic()
            if left <= 0:
                raise StackFailed(f"timed out after {timeout:.0f}s waiting for {what}")
            if tick is not None:
                tick()
            self._changed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), min(left, 0.5))


@dataclass
class Restored:
    """A finished restore: its id, its end event, and (for a clone) where the clone runs."""

    restore_id: str
    command_id: uuid.UUID
    done: Envelope[Any]
    db: Protected
    clone_dir: Path | None = None
    port: int | None = None

    @property
    def completed(self) -> RestoreCompleted:
        if not isinstance(self.done.data, RestoreCompleted):
            raise StackFailed(f"restore {self.restore_id} failed: {self.done.data.failure.reason}")
        return self.done.data

    def table(self) -> tuple[int, str]:
        """(rows, checksum) of the ledger table where the restore opened the database."""
        self.completed  # noqa: B018 (a failed restore says why, instead of a psql error)
        if self.clone_dir is None:
            cluster = self.db.cluster
            return table_state(cluster, port=cluster.port, host=cluster.base)
        assert self.port is not None
        return table_state(self.db.cluster, port=self.port, host=self.db.cluster.base)

    def stop_clone(self) -> None:
        if self.clone_dir is not None:
            stop_cluster_in(self.clone_dir)


def stop_cluster_in(data_dir: Path) -> None:
    """`pg_ctl stop` for a cluster whose data directory is `data_dir` (named `data`)."""
    if (data_dir / "postmaster.pid").exists():
        LocalCluster(data_dir.parent, port=0).stop()


async def _wait_hosted(nc: Client, uids: list[str], timeout: float = 30.0) -> None:
    """Until the executor's node heartbeat (`tm_nodes`), which the planner routes by, lists
    every database: it is written before the executor reports healthy, so this normally
    passes at once."""
    nodes = await Nodes.open(nc.jetstream())
    deadline = time.monotonic() + timeout
    while True:
        missing = [uid for uid in uids if not await nodes.hosting(uid)]
        if not missing:
            return
        if time.monotonic() > deadline:
            raise StackFailed(f"no node heartbeat lists {', '.join(missing)} after {timeout:g}s")
        await asyncio.sleep(0.2)


@dataclass
class PitrStack:
    root: Path
    stack: EmbeddedStack
    nc: Client
    recorder: Recorder
    planner: PlannerClient
    catalog: CatalogClient
    dbs: list[Protected]
    store_url: str
    supervising: bool = True
    _supervisor: asyncio.Task[None] | None = None

    @classmethod
    async def start(
        cls,
        root: Path,
        dbs: list[Protected],
        *,
        store_url: str | None = None,
        extra_env: dict[str, str] | None = None,
        health_ports: dict[str, int] | None = None,
        stack_type: type[EmbeddedStack] = EmbeddedStack,
    ) -> PitrStack:
        env = {
            **(extra_env or {}),
            "TIDEMARK_DATABASES": json.dumps([d.declared() for d in dbs]),
        }
        if store_url is not None:
            # Both the archiver and the executor (and the planner's retention) open this store.
            env["TIDEMARK_ARCHIVER__STORE_URL"] = store_url
        state_dir = root / "stack"
        # `stack_type`: the embedded stack, or one on a NATS cluster (tests/chaos/cluster.py).
        stack = stack_type(
            state_dir=state_dir,
            node=NODE,
            nats_port=free_port(),
            timeline_port=free_port(),
            extra_env=env,
            health_ports=health_ports or {},
        )
        try:
            stack.start_nats()
            stack.start_services()
            await stack.wait_healthy(90.0)
            assert stack.nats is not None
            # As admin: the recorder watches commands too, which the tool user may not.
            admin = stack.client_settings(Role.ADMIN)
            nc = await nats.connect(
                admin.servers(), name="tidemark-e2e", **credential_options(admin)
            )
        except BaseException:
            stack.stop()
            raise
        try:
            await _wait_hosted(nc, [d.uid for d in dbs])
        except BaseException:
            await nc.close()
            stack.stop()
            raise
        recorder = Recorder(nc)
        await recorder.start()
        started = cls(
            root=root,
            stack=stack,
            nc=nc,
            recorder=recorder,
            planner=PlannerClient(nc, timeout=60.0, source="e2e@local"),
            catalog=CatalogClient(nc, timeout=30.0),
            dbs=dbs,
            store_url=store_url or f"file://{(state_dir / 'store').absolute()}",
        )
        started._supervisor = asyncio.create_task(started._supervise(), name="supervise")
        return started

    @property
    def nats_url(self) -> str:
        assert self.stack.nats is not None
        return self.stack.nats.url

    async def _supervise(self) -> None:
        while True:
            if self.supervising:
                self.stack.supervise_once()
            await asyncio.sleep(0.2)

    def pid(self, service: str) -> int:
        process = self.stack.procs[service].process
        assert process is not None
        return process.pid

    def kill(self, service: str) -> int:
        """SIGKILL the service (nothing of its own runs on the way out); its old pid."""
        process = self.stack.procs[service].process
        assert process is not None
        process.kill()
        process.wait()
        return process.pid

    async def wait_restarted(self, service: str, old_pid: int, timeout: float = 60.0) -> None:
        """Until the supervisor has started `service` again and it reports healthy."""
        deadline = time.monotonic() + timeout
        while self.pid(service) == old_pid:
            if time.monotonic() > deadline:
                raise StackFailed(f"{service} was not restarted within {timeout:.0f}s")
            await asyncio.sleep(0.1)
        await self.stack.wait_healthy(max(1.0, deadline - time.monotonic()))

    async def close(self) -> None:
        if self._supervisor is not None:
            self._supervisor.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._supervisor
        with contextlib.suppress(Exception):
            await self.nc.drain()
        await asyncio.to_thread(self.stack.stop)
        for clone in sorted((self.root / "clones").glob("*/data")):
            with contextlib.suppress(Exception):
                stop_cluster_in(clone)
        for db in self.dbs:
            with contextlib.suppress(Exception):
                db.cluster.stop()

    # -- asking the planner ----------------------------------------------------------------------

    async def accepted(self, payload: Any, db: Protected) -> RequestAccepted:
        answer = await self.planner.request(payload, db.ref)
        if isinstance(answer, RequestRejected):
            raise StackFailed(f"the planner refused {payload.TYPE}: {answer.reason}")
        return answer

    async def backup(self, db: Protected, reason: str = "e2e: a base") -> BackupCompleted:
        mark = self.recorder.mark()
        answer = await self.accepted(RequestBackup(reason=reason), db)
        done = await self.recorder.wait_for(
            lambda e: (
                isinstance(e.data, BackupCompleted | BackupFailed)
                and e.data.backup_id == answer.ref_id
            ),
            since=mark,
            timeout=180,
            what=f"the end of backup {answer.ref_id}",
        )
        if isinstance(done.data, BackupFailed):
            raise StackFailed(f"backup {answer.ref_id} failed: {done.data.failure.reason}")
        assert isinstance(done.data, BackupCompleted)
        return done.data

    async def wait_covered(
        self, db: Protected, lsn: Lsn, *, lineage: str = "tl-00000001", timeout: float = 90.0
    ) -> WindowsReply:
        """Until the catalog's window on `lineage` reaches `lsn` (its segment archived)."""
        deadline = time.monotonic() + timeout
        while True:
            view = await self.catalog.windows(db.uid)
            if any(w.lineage == lineage and w.end >= lsn for w in view.windows):
                return view
            if time.monotonic() > deadline:
                raise StackFailed(
                    f"the window on {lineage} never reached {lsn}: "
                    f"{[(w.lineage, str(w.start), str(w.end)) for w in view.windows]}"
                )
            await asyncio.sleep(0.3)

    def clone_spec(self, name: str) -> CloneSpec:
        parent = self.root / "clones" / name
        return CloneSpec(data_dir=str(parent / "data"), port=free_port(), node=NODE)

    async def restore(
        self,
        db: Protected,
        target: RestoreTarget,
        *,
        clone: str | None,
        lineage: Lineage | None = None,
        on_requested: Callable[[Envelope[Any]], None] | None = None,
        timeout: float = 240.0,
    ) -> Restored:
        """Restore `db` to `target` into the clone `clone` (None: in place); wait for its end.
        `on_requested` is called as soon as the planner's `restore.requested` is seen."""
        spec = self.clone_spec(clone) if clone is not None else None
        request = RequestRestore(
            target=target,
            lineage=lineage,
            mode=RestoreMode.CLONE if spec else RestoreMode.IN_PLACE,
            clone=spec,
            reason=f"e2e: restore {'into ' + clone if clone else 'in place'}",
        )
        mark = self.recorder.mark()
        answer = await self.accepted(request, db)
        restore_id = answer.ref_id
        assert restore_id is not None
        if on_requested is not None:
            requested = await self.recorder.wait_for(
                lambda e: e.type == "restore.requested" and str(e.data.restore_id) == restore_id,
                since=mark,
                timeout=30,
                what=f"restore.requested of {restore_id}",
            )
            on_requested(requested)
        done = await self.recorder.wait_for(
            lambda e: (
                isinstance(e.data, RestoreCompleted | RestoreFailed)
                and str(e.data.restore_id) == restore_id
            ),
            since=mark,
            timeout=timeout,
            what=f"the end of restore {restore_id}",
        )
        return Restored(
            restore_id=restore_id,
            command_id=answer.command_id,
            done=done,
            db=db,
            clone_dir=Path(spec.data_dir) if spec else None,
            port=spec.port if spec else None,
        )

    async def plan_record(self, restore_id: str) -> dict[str, Any] | None:
        """The planner's `restore.<id>` record in `tm_plans`, as stored."""
        kv = await self.nc.jetstream().key_value(PLANS_BUCKET.name)
        try:
            entry = await kv.get(f"restore.{restore_id}")
        except Exception:
            return None
        if entry.value is None:
            return None
        record: dict[str, Any] = json.loads(entry.value)
        return record


async def run_cli(*args: str) -> tuple[int, str]:
    """`tidemark ARGS` in a child process, as a user runs it: its exit code and output."""
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "services.cli.main",
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        env={**os.environ, "COLUMNS": "200"},
    )
    out, _ = await asyncio.wait_for(process.communicate(), 300)
    assert process.returncode is not None
    return process.returncode, out.decode(errors="replace")
