"""`python -m services.archiver`: run the archiver against any NATS URL (`--nats-url`)."""

from services.archiver.service import ArchiverService
from services.runtime import run_service

if __name__ == "__main__":
    run_service(ArchiverService)
