"""`python -m services.executor`: run the executor against any NATS URL (`--nats-url`)."""

from services.executor.service import ExecutorService
from services.runtime import run_service

if __name__ == "__main__":
    run_service(ExecutorService)
