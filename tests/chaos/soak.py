"""The soak itself: set up, make chaos for a while, settle, and hold the result to ground truth.

    emulator ← FaultProxy ← archiver, executor, planner (the store URL points at the proxy)
    PostgreSQL → walpush → spool → archiver → bucket → catalog
    Writer: a ledger commit every 100 to 200 ms, pg_switch_wal() every 3 to 5 s
    policy: a full backup every minute
    Monkey: every 10 to 30 s, SIGKILL a service or restart nats-server
    cluster mode (`make chaos-cluster`): three nats-servers at R3, a node SIGKILLed and restarted

Then faults stop, the writer stops with a last switch, and the system must settle on its own
(no `.ready` left in PostgreSQL, archiver backlog 0 with nothing awaiting the catalog, the
catalog's window past the last switch) before the checks in `truth.py` and the restores run.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import random
import re
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from schemas import Lsn
from schemas.catalog import WindowView
from schemas.messages import BackupPolicy, SetPolicy, TargetTime
from services.blobstore import open_store
from services.demo.ledger import MIN_GAP, Entry, Ledger
from services.stack.embedded import EmbeddedStack
from services.stack.probe import read_health
from tests.chaos.cluster import REPLICAS, ClusterStack
from tests.chaos.monkey import Monkey
from tests.chaos.proxy import BackgroundProxy, FaultKind, FaultProxy, FaultSettings
from tests.chaos.truth import compare, pending_in_pg, read_produced, stored_logs
from tests.chaos.writer import Writer
from tests.e2e.pitr_stack import PitrStack, Protected, StackFailed, protect
from tests.fixtures.gcs import GcsEmulator

UID = "chaos-pg"
LINEAGE = "tl-00000001"
BUCKET = "tidemark-chaos"
#: Every segment stays in pg_wal, so its bytes are there to check at the end (~1 GB in 5 min).
WAL_KEEP = "16GB"
_BACKLOG = re.compile(r"backlog (\d+) logs")
#: Words in the archiver's health detail that mean a log is not settled yet.
_UNSETTLED = ("BLOCKED", "unpublished", "awaiting catalog", "CONFLICTS", "UNREADABLE")


@dataclass(frozen=True)
class SoakSettings:
    minutes: float = 5.0
    restores: int = 5
    fault_rate: float = 0.15
    seed: int = 0
    keep: bool = False
    """Keep the state directory (service logs, clusters) instead of removing it."""
    settle_timeout_s: float = 300.0
    cluster: bool = False
    """NATS as three routed nodes at `bus.replicas = 3`, the monkey killing nodes
    (`make chaos-cluster`); else the embedded stack's one server, restarted."""


@dataclass
class Soak:
    settings: SoakSettings
    rng: random.Random = field(init=False)
    started: float = field(default_factory=time.monotonic)
    problems: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.rng = random.Random(self.settings.seed)

    def say(self, line: str) -> None:
        print(f"[{time.monotonic() - self.started:6.1f}s] {line}", flush=True)

    def problem(self, line: str) -> None:
        self.problems.append(line)
        self.say(f"PROBLEM: {line}")

    # -- the whole run ----------------------------------------------------------------------------

    async def run(self) -> int:
        root = Path(tempfile.mkdtemp(prefix="tm-chaos-", dir="/var/tmp"))
        os.chmod(root, 0o711)  # noqa: S103 (the database OS user traverses it)
        emulator = GcsEmulator(log_path=root / "gcs-emulator.log")
        proxy = FaultProxy("http://127.0.0.1:1", seed=self.settings.seed)
        background: BackgroundProxy | None = None
        db: Protected | None = None
        pitr: PitrStack | None = None
        try:
            await asyncio.to_thread(emulator.start)
            await asyncio.to_thread(emulator.create_bucket, BUCKET)
            proxy = FaultProxy(emulator.endpoint, FaultSettings(rate=0.0), seed=self.settings.seed)
            background = BackgroundProxy(proxy)
            background.start()
            db = await asyncio.to_thread(self._protect, root)
            pitr = await PitrStack.start(
                root,
                [db],
                store_url=f"gs://{BUCKET}/archive?endpoint={proxy.url}",
                stack_type=ClusterStack if self.settings.cluster else EmbeddedStack,
            )
            self.say(f"stack up under {root}; store gs://{BUCKET}/archive via {proxy.url}")
            if isinstance(pitr.stack, ClusterStack):
                assert pitr.stack.cluster is not None
                self.say(f"NATS: {REPLICAS} nodes at R{REPLICAS}, {pitr.stack.cluster.url}")
            return await self._soak(pitr, db, proxy, emulator)
        finally:
            if pitr is not None:
                with contextlib.suppress(Exception):
                    await pitr.close()
            elif db is not None:
                with contextlib.suppress(Exception):
                    await asyncio.to_thread(db.cluster.stop)
            if background is not None:
                background.stop()
            emulator.stop()
            if self.settings.keep:
                print(f"kept {root}")
            else:
                shutil.rmtree(root, ignore_errors=True)

    def _protect(self, root: Path) -> Protected:
        db = protect(root, UID)
        db.cluster.psql(f"ALTER SYSTEM SET wal_keep_size = '{WAL_KEEP}'")
        db.cluster.psql("SELECT pg_reload_conf()")
        return db

    async def _soak(
        self, pitr: PitrStack, db: Protected, proxy: FaultProxy, emulator: GcsEmulator
    ) -> int:
        s = self.settings
        ledger = await asyncio.to_thread(Ledger.start, db.cluster)
        policy = BackupPolicy(full_cron="* * * * *", verify_cron=None)
        await pitr.accepted(SetPolicy(policy=policy), db)
        self.say("policy: a full backup every minute")

        writer = Writer(db, ledger, random.Random(self.rng.random()))
        monkey = Monkey(pitr, random.Random(self.rng.random()), self.say)
        if isinstance(pitr.stack, ClusterStack):
            # Node kills are what this mode is for: as many as service kills, each node down
            # long enough for leaders to move and for it to have something to catch up on.
            monkey.cluster = pitr.stack.cluster
            monkey.nats_share = 0.5
            monkey.nats_pause_s = (2.0, 10.0)
        writer.start()
        requests_before = proxy.requests
        proxy.settings.rate = s.fault_rate
        self.say(f"chaos for {s.minutes:g} min: fault rate {s.fault_rate:g}, seed {s.seed}")
        until = time.monotonic() + s.minutes * 60
        ticker = asyncio.create_task(self._tick(writer, proxy, pitr, until))
        try:
            await monkey.run(until)
            await asyncio.sleep(max(0.0, until - time.monotonic()))
        finally:
            ticker.cancel()
            proxy.settings.rate = 0.0
            under_faults = proxy.requests - requests_before
            await asyncio.to_thread(writer.stop)
        if writer.error is not None:
            self.problem(f"the writer failed: {writer.error!r}")
        last = await asyncio.to_thread(db.switch_wal)
        self.say(
            f"chaos over: {len(ledger.entries)} commits, {len(writer.switches) + 1} switches; "
            f"faults off; settling (last switch at {last})"
        )

        settled = await self._settle(pitr, db, last)
        produced = await read_produced(db)
        store = open_store(f"gs://{BUCKET}/archive?endpoint={emulator.endpoint}")
        try:
            stored = await stored_logs(store, db.uid)
        finally:
            await store.close()
        verdict = compare(produced, stored)
        view = await pitr.catalog.windows(db.uid)
        summary = next(
            (d for d in (await pitr.catalog.databases()).databases if d.database.uid == db.uid),
            None,
        )
        catalog_logs = summary.logs if summary is not None else 0
        for w in view.windows:
            self.say(
                f"window on {w.lineage}: {w.start_time} .. {w.end_time}, "
                f"bases {', '.join(w.bases) or 'none'}"
            )

        verified = await self._restores(pitr, db, ledger, view.windows) if settled else 0

        print(f"nats={'cluster of 3, R3' if s.cluster else 'one server'}")
        for kind in FaultKind:
            print(f"fault_{kind.value}={proxy.counts[kind]}")
        print(f"store_requests={proxy.requests} ({under_faults} while faults were on)")
        for target, count in sorted(monkey.actions.items()):
            print(f"killed_{target}={count}")
        print(f"supervisor_restarts={sum(p.restarts for p in pitr.stack.procs.values())}")
        print(f"commits={len(ledger.entries)}")
        print(f"backups_indexed={len(view.backups)}")
        print(f"history_objects={stored.history}")
        print(f"segments_indexed={catalog_logs}")
        lost = verdict.lost + verdict.corrupt
        _count("corrupt", verdict.corrupt)
        _count("unexpected", verdict.unexpected)
        _count("not_done_in_pg", produced.not_done)
        _count("missing_from_pg_wal", produced.missing_from_pg_wal)
        for problem in self.problems:
            print(f"problem: {problem}")
        print(f"segments_produced={verdict.produced}")
        print(f"segments_stored={verdict.stored}")
        _count("lost", lost)
        _count("duplicated", verdict.duplicated)
        print(f"gaps={len(view.gaps)}" + "".join(f"\n  {g.description}" for g in view.gaps))
        print(f"restores_verified={verified}/{s.restores}")
        print(f"faults_injected={proxy.faults}")

        failed = (
            bool(self.problems)
            or not settled
            or bool(lost or verdict.duplicated or verdict.unexpected or view.gaps)
            or bool(produced.not_done or produced.missing_from_pg_wal)
            or catalog_logs != verdict.produced
            or verified != s.restores
        )
        return 1 if failed else 0

    async def _tick(self, writer: Writer, proxy: FaultProxy, pitr: PitrStack, until: float) -> None:
        while time.monotonic() < until:
            await asyncio.sleep(30)
            with contextlib.suppress(Exception):
                self.say(
                    f"{len(writer.ledger.entries)} commits, {len(writer.switches)} switches, "
                    f"{proxy.faults} faults in {proxy.requests} store requests, "
                    f"{sum(p.restarts for p in pitr.stack.procs.values())} service restarts"
                )

    # -- settling -------------------------------------------------------------------------------

    async def _settle(self, pitr: PitrStack, db: Protected, last: Lsn) -> bool:
        """Wait for every service to be healthy, then for every log to be stored and indexed."""
        deadline = time.monotonic() + self.settings.settle_timeout_s
        try:
            await self._all_healthy(pitr, deadline)
            # No new base may start while the restores run.
            await pitr.accepted(SetPolicy(policy=None), db)
            if not (await pitr.catalog.windows(db.uid)).backups:
                self.say("no backup survived the chaos; asking for one")
                await pitr.backup(db, "chaos: a base after the soak")
        except (StackFailed, TimeoutError, RuntimeError) as exc:
            self.problem(f"the stack did not come back: {exc}")
            return False
        state = ""
        while time.monotonic() < deadline:
            state = await self._unsettled(pitr, db, last)
            if not state:
                self.say("settled: spool drained, catalog past the last switch")
                return True
            await asyncio.sleep(1.0)
        self.problem(f"not settled after {self.settings.settle_timeout_s:.0f}s: {state}")
        return False

    async def _all_healthy(self, pitr: PitrStack, deadline: float) -> None:
        # `wait_healthy` refuses a service that exited meanwhile; the supervisor may still be
        # backing off from a kill, so ask again until the deadline.
        while True:
            try:
                await pitr.stack.wait_healthy(max(1.0, min(30.0, deadline - time.monotonic())))
                return
            except (RuntimeError, TimeoutError):
                if time.monotonic() > deadline:
                    raise
                await asyncio.sleep(1.0)

    async def _unsettled(self, pitr: PitrStack, db: Protected, last: Lsn) -> str:
        """What is not settled yet ("" when everything is)."""
        ready = await asyncio.to_thread(pending_in_pg, db)
        if ready:
            return f"PostgreSQL still has {len(ready)} segments to archive ({ready[0]}…)"
        try:
            health = await read_health(pitr.stack.client_settings())
        except Exception as exc:
            return f"no health: {exc}"
        detail = next(
            (str(h.get("detail", "")) for h in health.values() if h.get("service") == "archiver"),
            None,
        )
        mine = next((p for p in (detail or "").split("; ") if p.startswith(f"{db.uid}:")), "")
        backlog = _BACKLOG.search(mine)
        if backlog is None or int(backlog[1]) or any(w in mine for w in _UNSETTLED):
            return f"archiver: {mine or detail or 'no health record'}"
        try:
            view = await pitr.catalog.windows(db.uid)
        except Exception as exc:
            return f"catalog: {exc}"
        if not any(w.lineage == LINEAGE and w.end >= last for w in view.windows):
            ends = [f"{w.lineage} {w.end}" for w in view.windows]
            return f"catalog windows {ends} do not reach {last}"
        return ""

    # -- restores -------------------------------------------------------------------------------

    async def _restores(
        self, pitr: PitrStack, db: Protected, ledger: Ledger, windows: list[WindowView]
    ) -> int:
        """Restore into clones at `restores` random moments between commits inside the window;
        how many showed exactly the ledger's table."""
        targets = self._targets(ledger.entries, windows)
        if len(targets) < self.settings.restores:
            self.problem(f"only {len(targets)} restore targets inside the window")
        verified = 0
        for n, (at, expected) in enumerate(targets, 1):
            name = f"chaos-{n}"
            try:
                restored = await pitr.restore(db, TargetTime(at=at), clone=name)
                try:
                    shows = await asyncio.to_thread(restored.table)
                finally:
                    await asyncio.to_thread(restored.stop_clone)
                    shutil.rmtree(pitr.root / "clones" / name, ignore_errors=True)
            except (StackFailed, RuntimeError) as exc:
                self.problem(f"restore {n} to {at.isoformat()}: {exc}")
                continue
            if shows == (expected.rows, expected.checksum):
                verified += 1
                self.say(f"restore {n} to {at.isoformat()}: {shows[0]} rows, as the ledger says")
            else:
                self.problem(
                    f"restore {n} to {at.isoformat()}: the clone shows {shows}, "
                    f"the ledger {(expected.rows, expected.checksum)}"
                )
        return verified

    def _targets(
        self, entries: list[Entry], windows: list[WindowView]
    ) -> list[tuple[datetime, Entry]]:
        inside = [w for w in windows if w.lineage == LINEAGE and w.start_time and w.end_time]
        pairs = [
            (a, b)
            for a, b in itertools.pairwise(entries)
            if b.committed_at - a.committed_at > MIN_GAP
            and any(
                w.start_time is not None
                and w.end_time is not None
                and w.start_time < a.committed_at
                and b.committed_at <= w.end_time
                for w in inside
            )
        ]
        chosen = self.rng.sample(pairs, min(self.settings.restores, len(pairs)))
        return [(a.committed_at + (b.committed_at - a.committed_at) / 2, a) for a, b in chosen]


def _count(label: str, names: list[str]) -> None:
    """`label=N`, and the first few names when there are any."""
    print(f"{label}={len(names)}" + (f" {' '.join(names[:10])}" if names else ""))


def default_seed() -> int:
    return int.from_bytes(os.urandom(4), "big")
