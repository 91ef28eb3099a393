"""`python -m services.planner`: run the planner against any NATS URL (`--nats-url`)."""

from services.planner.service import PlannerService
from services.runtime import run_service

if __name__ == "__main__":
    run_service(PlannerService)
