"""`python -m tests.integration.executor_child`: the real executor process with a `FakeEngine`
(test only). It exists so a test can SIGKILL an executor in the middle of a job: the engine is
the only thing swapped, through `ExecutorService.build_engines`, the service's own seam.

`FAKE_ENGINE_SLEEP_S` is how long each fake operation takes. Everything else is configured as
for `python -m services.executor` (`TIDEMARK_*` environment, `--nats-url`, `--node`).
"""

from __future__ import annotations

import os

from schemas import Engine
from services.engines.registry import EngineRegistry
from services.executor.service import ExecutorService
from services.runtime import run_service
from tests.doubles.fake_engine import FakeEngine


class FakeEngineExecutor(ExecutorService):
    """The executor, its PostgreSQL engine replaced by a labelled fake."""

    def build_engines(self) -> EngineRegistry:
        fake = FakeEngine(sleep_s=float(os.environ.get("FAKE_ENGINE_SLEEP_S", "0.1")))
        return EngineRegistry(self.settings.executor, drivers={Engine.POSTGRES: fake})


if __name__ == "__main__":
    run_service(FakeEngineExecutor)
