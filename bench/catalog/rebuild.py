"""`catalog rebuild` from a filesystem bucket, timed, against the listing it cannot avoid.

Each round: the rebuild (`services.catalog.rebuild.rebuild`, exactly what `tidemark catalog
rebuild` runs: one listing, every object's metadata read and parsed, the store emptied and
refilled in one transaction, then loaded into an index) into a fresh SQLite store; and the
baseline, listing the same bucket through the same driver (`FilesystemStore.list`, which reads
every metadata sidecar) and doing nothing else. A first, untimed listing warms the page cache
for both. Rounds alternate the order of the two.
"""

from __future__ import annotations

import asyncio
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from bench.catalog.bucket import PREFIX
from bench.catalog.workload import Workload
from services.blobstore import FilesystemStore
from services.catalog.rebuild import rebuild
from services.catalog.settings import sqlite_url
from services.catalog.store import CatalogStore


@dataclass
class RebuildResult:
    objects: int
    """Log objects in the bucket."""
    listed: int
    """Every object the listing returns (logs, manifests, owner records)."""
    rebuild_s: list[float] = field(default_factory=list)
    listing_s: list[float] = field(default_factory=list)

    def per_100k(self) -> float:
        return statistics.median(self.rebuild_s) * 100_000 / self.objects

    def objects_per_s(self) -> float:
        """Objects read from the bucket into the store per second, over the median round."""
        return self.listed / statistics.median(self.rebuild_s)

    def ratio_vs_listing(self) -> float:
        pairs = zip(self.rebuild_s, self.listing_s, strict=True)
        return statistics.median(r / listed for r, listed in pairs)


async def _listing_s(root: Path) -> tuple[float, int]:
    store = FilesystemStore(root)
    started = time.perf_counter()
    count = 0
    async for _ in store.list(f"{PREFIX}/"):
        count += 1
    return time.perf_counter() - started, count


async def _rebuild_s(root: Path, db: Path, workload: Workload) -> float:
    store = CatalogStore.open(sqlite_url(db))
    try:
        started = time.perf_counter()
        report = await rebuild(FilesystemStore(root), store, PREFIX)
        elapsed = time.perf_counter() - started
    finally:
        store.close()
    if (report.stored.logs, report.stored.backups, report.skipped) != (
        workload.logs,
        workload.backups,
        0,
    ):
        raise RuntimeError(
            f"the rebuild stored {report.stored.logs} logs and {report.stored.backups} backups "
            f"({report.skipped} skipped): {report.warnings[:3]}"
        )
    return elapsed


def measure_rebuild(
    root: Path, workload: Workload, work: Path, rounds: int, log: Callable[[str], None]
) -> RebuildResult:
    _, objects = asyncio.run(_listing_s(root))  # warms the page cache
    result = RebuildResult(objects=workload.logs, listed=objects)
    for round_no in range(rounds):
        db = work / f"rebuilt-{round_no}.db"
        if round_no % 2 == 0:
            listed, _ = asyncio.run(_listing_s(root))
            rebuilt = asyncio.run(_rebuild_s(root, db, workload))
        else:
            rebuilt = asyncio.run(_rebuild_s(root, db, workload))
            listed, _ = asyncio.run(_listing_s(root))
        result.rebuild_s.append(rebuilt)
        result.listing_s.append(listed)
        log(
            f"  round {round_no + 1} rebuild of {objects} objects: {rebuilt:.1f} s "
            f"(listing alone {listed:.1f} s)"
        )
    return result
