"""`python -m services.catalog`: run the catalog against any NATS URL (`--nats-url`).

The catalog's process holds an index entry for every log it knows (millions of small objects,
as long-lived as the process) and allocates short-lived ones for every event it ingests. With
Python's default thresholds the cyclic collector walks the whole index every few thousand
events, a third of the ingest's CPU; collecting the young generation less often, and the old
ones far less often, leaves the index alone. Set here, for the catalog's own process only.
"""

import gc

from services.catalog.service import CatalogService
from services.runtime import run_service

if __name__ == "__main__":
    gc.set_threshold(50_000, 20, 100)
    run_service(CatalogService)
