"""The planner: turns intents (backup policies, backup and restore requests) into commands and
drives each as a durable state machine in the `tm_plans` bucket.

    handlers/        the consumers: intake (tm.cmd.planner.any.>: policy.set, backup.request,
                     restore.request, cancel), job_events (TM_EVT: job.*, backup.*,
                     restore.completed, backup.verified), queries (tm.qry.planner.policy)
    scheduler.py     every tick_s            cron slots, exactly once per (db, kind, minute)
    retention.py     every interval          recovery windows enforced in the blob store
    sagas/           the saga machinery every workflow runs on (record, driver, gates, windows)
    restores.py      the restore saga kind; phases.py its phases; locks.py one job per database
    migrations.py    the migration saga kind, its control commands and status query; its
                     clock (lag samples, windows, drain deadlines) ticks every tick_s
    programs.py      migration programs (waves): each entry started as its own migration
                     when its nodes have a slot, on the same clock

On start, after the topology exists and before the consumers bind, every non-final saga is
advanced from its recorded phase (`sagas/driver.py`), then the scheduler and retention loops
start. Any number of replicas may run: every decision is a KV create or compare-and-set.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field

from nats.micro.service import Service as MicroService

from services.blobstore import BlobStore, open_store
from services.bus import Publisher
from services.catalog.client import CatalogClient
from services.planner.backups import Backups
from services.planner.clock import Clock, SystemClock
from services.planner.context import PlannerContext
from services.planner.handlers.intake import INTAKE_DURABLE, INTAKE_SUBJECT, Intake
from services.planner.handlers.job_events import EVENT_SUBJECTS, EVENTS_DURABLE, Events
from services.planner.handlers.queries import serve_queries
from services.planner.metrics import planner_metrics
from services.planner.migrations import Migrations
from services.planner.policies import Policies
from services.planner.programs import Programs
from services.planner.restores import Restores
from services.planner.retention import Retention
from services.planner.scheduler import Scheduler
from services.planner.store import Nodes, PlanStore
from services.planner.verification import Verification
from services.runtime import ConsumerSpec, Service

log = logging.getLogger("tidemark.planner")


@dataclass
class PlannerService(Service):
    name: str = "planner"
    clock: Clock = field(default_factory=SystemClock)
    run_retention: bool = True
    """Tests turn the retention loop off to drive `retention.apply_all()` themselves."""
    ctx: PlannerContext | None = field(default=None, init=False)
    intake: Intake | None = field(default=None, init=False)
    events: Events | None = field(default=None, init=False)
    scheduler: Scheduler | None = field(default=None, init=False)
    retention: Retention | None = field(default=None, init=False)
    restores: Restores | None = field(default=None, init=False)
    migrations: Migrations | None = field(default=None, init=False)
    programs: Programs | None = field(default=None, init=False)
    verification: Verification | None = field(default=None, init=False)
    queries: MicroService | None = field(default=None, init=False)
    store: BlobStore | None = field(default=None, init=False)
    _stop_loops: asyncio.Event = field(default_factory=asyncio.Event, init=False)
    _loops: list[asyncio.Task[None]] = field(default_factory=list, init=False)

    async def on_start(self) -> None:
        assert self.nc is not None
        settings = self.settings.planner
        self.ctx = PlannerContext(
            publisher=self.publisher,
            plans=await PlanStore.open(self.js),
            nodes=await Nodes.open(self.js),
            catalog=CatalogClient(self.nc),
            clock=self.clock,
            settings=settings,
        )
        policies = Policies(self.ctx)
        backups = Backups(self.ctx)
        self.ctx.sagas.register(backups)
        self.restores = Restores(self.ctx)
        self.ctx.sagas.register(self.restores)
        migrations = self.migrations = Migrations(self.ctx)
        self.ctx.sagas.register(migrations)
        verification = self.verification = Verification(self.ctx)
        self.ctx.sagas.register(verification)
        await verification.prime()
        planner_metrics().watch(verification.verified)
        programs = self.programs = Programs(self.ctx, migrations)
        self.intake = Intake(self.ctx, policies, backups, self.restores, migrations, programs)
        self.events = Events(self.ctx, backups, self.restores, verification, migrations)
        self.scheduler = Scheduler(self.ctx, policies, verification.run)
        url = settings.store_url or self.settings.archiver.store_url_for(self.settings.state_dir)
        self.store = open_store(url)
        self.retention = Retention(self.ctx, policies, self.store)
        await self.ctx.sagas.resume_all()
        self.queries = await serve_queries(self.nc, policies, migrations, programs)
        self._stop_loops = asyncio.Event()
        self._loops = [
            asyncio.create_task(self.scheduler.run(self._stop_loops), name="scheduler"),
            asyncio.create_task(self._migration_clock(migrations, programs), name="migrations"),
        ]
        if self.run_retention:
            self._loops.append(
                asyncio.create_task(self.retention.run(self._stop_loops), name="retention")
            )

    async def _migration_clock(self, migrations: Migrations, programs: Programs) -> None:
        """Advance migrations whose wait may be over, then start the programs' entries whose
        slots freed; every decision is compare-and-set, so replicas ticking together decide
        the same thing once."""
        tick = self.settings.planner.tick_s
        while not self._stop_loops.is_set():
            try:
                await migrations.tick()
            except Exception as exc:  # NATS away for a moment: the next tick tries again
                log.warning("migration clock: %s", exc)
            try:
                await programs.tick()
            except Exception as exc:
                log.warning("program clock: %s", exc)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop_loops.wait(), tick)

    def consumers(self, publisher: Publisher) -> Sequence[ConsumerSpec]:
        if self.intake is None or self.events is None:
            return ()
        return (
            ConsumerSpec(
                stream="TM_CMD",
                durable=INTAKE_DURABLE,
                filter_subjects=[INTAKE_SUBJECT],
                handlers=self.intake.handlers(),
                concurrency=4,
            ),
            ConsumerSpec(
                stream="TM_EVT",
                durable=EVENTS_DURABLE,
                filter_subjects=EVENT_SUBJECTS,
                handlers=self.events.handlers(),
                # Created at the newest event: a first planner must not replay 30 days of
                # job events. After that the server keeps the position across restarts.
                deliver_new_only=True,
            ),
        )

    async def on_stop(self) -> None:
        if self.verification is not None:
            planner_metrics().unwatch(self.verification.verified)
        self._stop_loops.set()
        for task in self._loops:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self._loops = []
        if self.queries is not None:
            with contextlib.suppress(Exception):
                await self.queries.stop()
        if self.store is not None:
            with contextlib.suppress(Exception):
                await self.store.close()
