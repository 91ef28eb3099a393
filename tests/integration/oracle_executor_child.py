"""`python -m tests.integration.oracle_executor_child`: the real executor process whose Oracle
engine runs the migration steps' SQL against simulated databases (test only, not Oracle). It
exists so a test can SIGKILL an executor in the middle of a Data Pump job: only the SQL seam
of `OracleEngine` is swapped (`datapump_sql=`), through `ExecutorService.build_engines`.

`TM_TEST_ORACLE_SIM_ROOTS` maps each database uid to its simulated database's directory (the
one its `oracle_home`'s simulated tools were installed over). Everything else is configured as
for `python -m services.executor` (`TIDEMARK_*` environment, `--nats-url`, `--node`).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from schemas import Engine
from services.engines.oracle.engine import OracleEngine
from services.engines.registry import EngineRegistry
from services.executor.service import ExecutorService
from services.runtime import run_service
from tests.oracle_sim.datapump_sql import SimulatedDataPumpSql

ROOTS_ENV = "TM_TEST_ORACLE_SIM_ROOTS"


class SimulatedOracleExecutor(ExecutorService):
    """The executor, its Oracle engine's SQL answered by the simulated dictionaries."""

    def build_engines(self) -> EngineRegistry:
        roots = {uid: Path(root) for uid, root in json.loads(os.environ[ROOTS_ENV]).items()}
        engine = OracleEngine(
            self.settings.executor,
            datapump_sql=lambda db: SimulatedDataPumpSql.of(roots[db.uid]),
        )
        return EngineRegistry(self.settings.executor, drivers={Engine.ORACLE: engine}, loadable={})


if __name__ == "__main__":
    run_service(SimulatedOracleExecutor)
