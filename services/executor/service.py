"""The executor: one per node, runs engine operations (RMAN, Data Pump, pg_basebackup, restores)
for the databases on its node, journals each job locally, and reports job events.

It will consume `tm.cmd.executor.<node>.>` and `tm.cmd.executor.any.>`; the handlers arrive
with the executor issue.
"""

from __future__ import annotations

from dataclasses import dataclass

from services.runtime import Service


@dataclass
class ExecutorService(Service):
    name: str = "executor"
