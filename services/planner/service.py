"""The planner: turns intents (backup policy, restore request, migration plan) into commands
and drives each as a durable state machine in the `tm_plans` bucket.

Its intake consumer (`tm.cmd.planner.>`) and workflows arrive with the planner issue; until then
it runs, ensures the topology and reports healthy.
"""

from __future__ import annotations

from dataclasses import dataclass

from services.runtime import Service


@dataclass
class PlannerService(Service):
    name: str = "planner"
