"""`python -m services.catalog`: run the catalog against any NATS URL (`--nats-url`)."""

from services.catalog.service import CatalogService
from services.runtime import run_service

if __name__ == "__main__":
    run_service(CatalogService)
