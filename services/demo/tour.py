"""The guided tour: protect a real PostgreSQL cluster, then prove a point-in-time restore.

    1. the embedded stack comes up (nats-server, planner, executor, archiver, catalog);
    2. a fresh cluster is created with archiving through Tidemark from its first segment;
    3. a base backup is requested from the planner, like any platform tool would;
    4. a writer commits small transactions and keeps a ledger of what the table held after each;
    5. once the catalog's window covers the writing, a random moment inside it is chosen and the
       planner restores the database to that moment into a clone (new data directory and port);
    6. the clone's table is compared with the ledger's entry for that moment: same rows, same
       checksum, or the tour fails;
    7. the window, the RPO lag and the timeline page are shown, and everything is shut down.

The last line printed on success begins `PITR verified:`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import nats
from nats.aio.client import Client
from nats.aio.msg import Msg
from rich.console import Console
from rich.progress import BarColumn, Progress, TaskProgressColumn, TextColumn, TimeElapsedColumn

from schemas import DatabaseRef, Engine, Envelope, decode
from schemas.messages import (
    CloneSpec,
    RequestBackup,
    RequestRejected,
    RequestRestore,
    RestoreMode,
    TargetTime,
)
from services.bus.connection import credential_options
from services.catalog.client import CatalogClient
from services.demo.cluster import LocalCluster, free_port
from services.demo.ledger import Entry, Ledger, table_state
from services.engines.postgres.oscmd import check_traversable, system_python
from services.engines.postgres.spool import Spool, install_walpush
from services.planner.client import PlannerClient
from services.stack.embedded import EmbeddedStack

DB_UID = "demo-pg"
DB_NAME = "demo"
NODE = "demo"


class TourFailed(RuntimeError):
    """A step of the tour did not do what it must; the message says which and why."""


@dataclass
class EventWatch:
    """Every event about one database from the moment of subscription, decoded, in order."""

    nc: Client
    uid: str
    seen: list[Envelope[Any]] = field(default_factory=list)
    _changed: asyncio.Event = field(default_factory=asyncio.Event)

    async def start(self) -> None:
        async def take(msg: Msg) -> None:
            with contextlib.suppress(Exception):
                self.seen.append(decode(msg.data, subject=msg.subject))
                self._changed.set()

        await self.nc.subscribe(f"tm.evt.*.*.{self.uid}", cb=take)

    async def wait_for(
        self, match: Callable[[Envelope[Any]], bool], *, timeout: float, what: str
    ) -> Envelope[Any]:
        deadline = time.monotonic() + timeout
        checked = 0
        while True:
            for event in self.seen[checked:]:
                if match(event):
                    return event
            checked = len(self.seen)
            left = deadline - time.monotonic()
            if left <= 0:
                raise TourFailed(f"timed out after {timeout:.0f}s waiting for {what}")
            self._changed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), min(left, 1.0))


@dataclass
class Tour:
    state_dir: Path
    console: Console
    rng: random.Random
    writes: int = 40
    pause_s: float = 0.2
    cluster: LocalCluster = field(init=False)
    stack: EmbeddedStack = field(init=False)
    clone_dir: Path = field(init=False)
    _system_id: int | None = field(init=False, default=None)

    def __post_init__(self) -> None:
        self.cluster = LocalCluster(self.state_dir / "pg")
        self.clone_dir = self.state_dir / "clone" / "data"

    @property
    def ref(self) -> DatabaseRef:
        return DatabaseRef(
            uid=DB_UID, engine=Engine.POSTGRES, name=DB_NAME, system_id=self._system_id
        )

    # -- set-up ---------------------------------------------------------------------------------

    def protect_cluster(self) -> dict[str, str]:
        """Create the cluster with archiving through walpush into a spool; return the services'
        environment naming it (archiver: spool and pg_wal; executor: data directory and port)."""
        # The database OS user must traverse (not list) the directories above its own.
        os.chmod(self.state_dir, 0o711)  # noqa: S103
        spool = Spool(self.state_dir / "spool")
        spool.init(DB_UID, owner=self.cluster.user)
        tool = install_walpush(self.state_dir / "tools", user=self.cluster.user)
        check_traversable(tool, self.cluster.user)
        command = spool.archive_command(system_python(self.cluster.user), tool)
        self.cluster.create(
            {
                "archive_mode": "on",
                "archive_command": "'" + command.replace("'", "''") + "'",
                "archive_timeout": "0",
            }
        )
        self.cluster.start()
        self._system_id = self.cluster.system_id()
        declared = {
            "uid": DB_UID,
            "engine": "postgres",
            "name": DB_NAME,
            "system_id": self._system_id,
            "postgres": {
                "data_dir": str(self.cluster.data_dir),
                "port": self.cluster.port,
                "socket_dir": str(self.cluster.base),
                "os_user": self.cluster.user.name,
                "spool_dir": str(spool.path),
                "pg_wal_dir": str(self.cluster.data_dir / "pg_wal"),
            },
        }
        return {"TIDEMARK_DATABASES": json.dumps([declared])}

    # -- the steps ------------------------------------------------------------------------------

    async def backup(self, planner: PlannerClient, watch: EventWatch) -> Envelope[Any]:
        answer = await planner.request(RequestBackup(reason="demo: the first base"), self.ref)
        if isinstance(answer, RequestRejected):
            raise TourFailed(f"the planner refused the backup: {answer.reason}")
        backup_id = answer.ref_id
        with self._bar("base backup") as (progress, task):

            def follow(event: Envelope[Any]) -> bool:
                if event.type == "job.progress" and event.data.percent is not None:
                    progress.update(task, completed=event.data.percent)
                return event.type in ("backup.completed", "backup.failed") and (
                    event.data.backup_id == backup_id
                )

            done = await watch.wait_for(follow, timeout=120, what="the base backup")
            progress.update(task, completed=100)
        if done.type == "backup.failed":
            raise TourFailed(f"the base backup failed: {done.data.failure.reason}")
        self.console.print(
            f"[green]✓[/] base backup {backup_id}: {done.data.size_bytes / 2**20:.1f} MiB, "
            f"consistent at {done.data.consistent_at}"
        )
        return done

    def write(self) -> Ledger:
        ledger = Ledger.start(self.cluster)
        with self._bar("writer", total=self.writes) as (progress, task):
            for _ in range(self.writes):
                ledger.write()
                progress.advance(task)
                time.sleep(self.pause_s)
        last = ledger.entries[-1]
        self.console.print(
            f"[green]✓[/] writer: {len(ledger.entries)} commits, {last.rows} rows, ledger kept"
        )
        self.cluster.psql("SELECT pg_switch_wal()")
        return ledger

    async def wait_covered(self, catalog: CatalogClient, last: Entry) -> Any:
        """Until the catalog's window reaches past the last commit (its segment archived)."""
        deadline = time.monotonic() + 60
        with self.console.status("waiting for the catalog's window to cover the writing…"):
            while True:
                view = await catalog.windows(DB_UID)
                if any(w.end >= last.lsn for w in view.windows):
                    return view
                if time.monotonic() > deadline:
                    raise TourFailed(
                        f"the restorable window never reached {last.lsn}: "
                        f"{[(str(w.start), str(w.end)) for w in view.windows]}"
                    )
                await asyncio.sleep(0.3)

    async def restore(
        self, planner: PlannerClient, watch: EventWatch, at: datetime
    ) -> Envelope[Any]:
        port = free_port()
        self.clone_dir.parent.mkdir(parents=True, exist_ok=True)
        os.chmod(self.clone_dir.parent, 0o711)  # noqa: S103 (traversal for the OS user)
        request = RequestRestore(
            target=TargetTime(at=at),
            mode=RestoreMode.CLONE,
            clone=CloneSpec(data_dir=str(self.clone_dir), port=port, node=NODE),
            reason="demo: point-in-time restore into a clone",
        )
        answer = await planner.request(request, self.ref)
        if isinstance(answer, RequestRejected):
            raise TourFailed(f"the planner refused the restore: {answer.reason}")
        restore_id = answer.ref_id
        with self._bar("restore into a clone") as (progress, task):

            def follow(event: Envelope[Any]) -> bool:
                if event.type == "restore.progress" and str(event.data.restore_id) == restore_id:
                    if event.data.percent is not None:
                        progress.update(task, completed=event.data.percent)
                    progress.update(task, description=f"restore: {event.data.phase}")
                return event.type in ("restore.completed", "restore.failed") and (
                    str(event.data.restore_id) == restore_id
                )

            done = await watch.wait_for(follow, timeout=180, what="the restore")
            progress.update(task, completed=100)
        if done.type == "restore.failed":
            raise TourFailed(f"the restore failed: {done.data.failure.reason}")
        self.console.print(
            f"[green]✓[/] restored into {self.clone_dir} (port {port}): reached "
            f"{done.data.reached} on {done.data.lineage.key}"
        )
        return done

    def clone_socket(self) -> tuple[int, Path]:
        """The clone's port and socket directory, from its `postmaster.pid`."""
        lines = (self.clone_dir / "postmaster.pid").read_text().splitlines()
        return int(lines[3]), Path(lines[4])

    def stop_clone(self) -> None:
        if (self.clone_dir / "postmaster.pid").exists():
            clone = LocalCluster(self.clone_dir.parent, port=0)
            clone.stop()

    # -- the whole tour -------------------------------------------------------------------------

    async def run(self) -> str:
        from services.cli.stackcmds import bring_up

        with self.console.status("creating a PostgreSQL cluster protected by Tidemark…"):
            env = self.protect_cluster()
        self.console.print(
            f"[green]✓[/] PostgreSQL cluster {DB_UID} on port {self.cluster.port}, "
            "archiving through Tidemark"
        )
        self.stack = EmbeddedStack(state_dir=self.state_dir, node=NODE, extra_env=env)
        await bring_up(self.stack, 90.0)
        assert self.stack.nats is not None
        # As the tool user: the tour does what a platform tool would, with its permissions.
        bus = self.stack.client_settings()
        nc = await nats.connect(bus.servers(), name="tidemark-demo", **credential_options(bus))
        try:
            watch = EventWatch(nc, DB_UID)
            await watch.start()
            planner = PlannerClient(nc)
            catalog = CatalogClient(nc)
            backup = await self.backup(planner, watch)
            ledger = await asyncio.to_thread(self.write)
            view = await self.wait_covered(catalog, ledger.entries[-1])
            at, expected = ledger.pick_moment(backup.data.completed_at, self.rng)
            self.console.print(
                f"  chose a moment inside the window: {at.isoformat()} "
                f"(the ledger says {expected.rows} rows there)"
            )
            await self.restore(planner, watch, at)
            port, host = self.clone_socket()
            rows, checksum = await asyncio.to_thread(
                table_state, self.cluster, port=port, host=host
            )
            if (rows, checksum) != (expected.rows, expected.checksum):
                raise TourFailed(
                    f"the clone holds {rows} rows (checksum {checksum}); the ledger says "
                    f"{expected.rows} rows (checksum {expected.checksum}) at {at.isoformat()}"
                )
            self.console.print(
                f"[green]✓[/] the clone equals the ledger at that moment: {rows} rows, "
                f"checksum {checksum}"
            )
            view = await catalog.windows(DB_UID)
            self.show_window(view)
            return (
                f"PITR verified: target {at.isoformat()}, {rows} rows "
                f"(checksum {checksum}) restored into a clone on port {port}"
            )
        finally:
            await nc.drain()

    def show_window(self, view: Any) -> None:
        for window in view.windows:
            self.console.print(
                f"  restorable window on {window.lineage}: {_when(window.start_time)} → "
                f"{_when(window.end_time)} ({window.start} → {window.end})"
            )
        if view.rpo_lag_s is not None:
            self.console.print(f"  RPO lag: {view.rpo_lag_s:.1f}s since the newest archived log")
        if self.stack.timeline_url:
            self.console.print(f"  timeline page: {self.stack.timeline_url}")

    def cleanup(self) -> None:
        with contextlib.suppress(Exception):
            self.stop_clone()
        with contextlib.suppress(Exception):
            self.cluster.stop()

    @contextlib.contextmanager
    def _bar(self, description: str, total: float = 100.0) -> Any:
        with Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            TaskProgressColumn(),
            TimeElapsedColumn(),
            console=self.console,
            transient=True,
        ) as progress:
            yield progress, progress.add_task(description, total=total)


def _when(moment: datetime | None) -> str:
    return moment.isoformat(timespec="milliseconds") if moment is not None else "?"
