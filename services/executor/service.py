"""The executor: one per node, runs engine operations (pg_basebackup, restores, verifications;
RMAN and Data Pump when the Oracle engine lands) for the databases on its node, journals each
job locally, and reports job events.

On start it opens the journal (jobs.sqlite) and the object store (the archiver's: same URL and
prefix, so backups sit beside the logs), reports every job a previous process left running as
interrupted (jobs.py `recover`), starts the node heartbeat (nodes.py), then binds its consumers
(handlers.py): `tm.cmd.executor.<node>.backup|restore|verify` and `….cancel`.

Engines come from an `EngineRegistry`; `build_engines` is the seam a test (or a build with
other drivers) overrides.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field

from services.blobstore import BlobStore, open_store
from services.bus import Publisher
from services.engines.registry import EngineRegistry
from services.executor.handlers import cancel_consumer, job_consumer
from services.executor.jobs import JobRunner
from services.executor.journal import Journal
from services.executor.nodes import NodeBeat
from services.runtime import ConsumerSpec, Service

log = logging.getLogger("tidemark.executor")


@dataclass
class ExecutorService(Service):
    name: str = "executor"
    engines: EngineRegistry | None = None
    runner: JobRunner | None = field(default=None, init=False)
    _journal: Journal | None = field(default=None, init=False)
    _store: BlobStore | None = field(default=None, init=False)
    _beat: NodeBeat | None = field(default=None, init=False)

    def build_engines(self) -> EngineRegistry:
        """The engine drivers; by default the registry's, each made on first use."""
        return EngineRegistry(self.settings.executor)

    async def on_start(self) -> None:
        executor = self.settings.executor
        state_dir = self.settings.state_dir
        if self.engines is None:
            self.engines = self.build_engines()
        self._journal = Journal(executor.journal_for(state_dir))
        self._store = open_store(self.settings.archiver.store_url_for(state_dir))
        self.runner = JobRunner(
            settings=executor,
            journal=self._journal,
            engines=self.engines,
            store=self._store,
            prefix=self.settings.archiver.prefix,
            publish=self.publisher.publish,
            node=self.settings.node,
            source=self.source,
            scratch_dir=executor.scratch_for(state_dir),
        )
        await self.runner.recover()
        runner = self.runner
        self._beat = NodeBeat(
            self.js, self.settings.node, executor, lambda: (runner.running, runner.waiting)
        )
        await self._beat.start()
        log.info(
            "executor on %s hosts %s",
            self.settings.node,
            ", ".join(d.uid for d in executor.databases) or "no databases",
        )

    def consumers(self, publisher: Publisher) -> Sequence[ConsumerSpec]:
        if self.runner is None:
            return ()
        node = self.settings.node
        return (
            job_consumer(self.runner, node, self.settings.executor.queue_limit),
            cancel_consumer(self.runner, node),
        )

    async def on_stop(self) -> None:
        # Consumers are stopped first (Service.stop); handlers they cancelled may still be
        # reporting their jobs interrupted, so wait for those before closing the journal.
        if self.runner is not None:
            await self.runner.wait_idle(self.settings.executor.cancel_grace_s + 5.0)
        if self._beat is not None:
            await self._beat.stop()
        if self._store is not None:
            await self._store.close()
        if self._journal is not None:
            self._journal.close()
