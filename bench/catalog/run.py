"""`python -m bench catalog`: ingest, queries and rebuild of a catalog holding one database with
a million logs, each against a baseline measured in the same run (docs/benchmarks.md).

1. The workload's events go into TM_EVT on a fresh nats-server (untimed); the same log rows go
   into a bare SQLite table with `executemany` (the ingest baseline).
2. The catalog service starts, in its own process, on an empty SQLite store, and ingests them
   all (timed: `ingest.py`).
3. Still running, it answers interleaved window, restore-plan and ping requests (`queries.py`).
4. Stopped, it is started again on its full store, timed until it answers (its start-up loads
   the store into its index); its window must be the workload's.
5. The rescan baseline answers the same questions from scratch (`rescan.py`).
6. `catalog rebuild` reads a 100,000-log filesystem bucket (`bucket.py`, cached) into a fresh
   store, against a bare listing of it (`rebuild.py`).
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from bench.catalog.baseline import executemany_rate, stored_row
from bench.catalog.bucket import ensure_bucket
from bench.catalog.ingest import IngestResult, publish_events, time_ingest
from bench.catalog.queries import CatalogClient, Latencies, check_times, measure_queries
from bench.catalog.rebuild import measure_rebuild
from bench.catalog.report import Results, print_report
from bench.catalog.rescan import measure_rescans
from bench.catalog.service import bus, catalog_process, catalog_url, nats_server, wait_serving
from bench.catalog.settings import BenchSettings, load_settings
from bench.catalog.workload import Workload
from services.catalog.store import CatalogStore, StoreCounts


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


@contextlib.contextmanager
def scratch(settings: BenchSettings) -> Iterator[Path]:
    settings.work_dir.mkdir(parents=True, exist_ok=True)
    path = Path(tempfile.mkdtemp(prefix="tidemark-bench-catalog-", dir=settings.work_dir))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


async def live(
    settings: BenchSettings, workload: Workload, work: Path
) -> tuple[IngestResult, float, Latencies, list[int], float]:
    """Steps 1-4: the ingest and its baseline, the queries, a restart on the full store."""
    with nats_server(work) as server:
        nc, js = await bus(server.url)
        try:
            rows: list[tuple[Any, ...]] = []
            log(f"publishing {workload.logs + workload.backups} events")
            last = await publish_events(
                js, workload, log, lambda found: rows.append(stored_row(found))
            )
            bare = executemany_rate(rows, work / "bare.db", settings.batch, workload.log(1, 1))
            log(f"bare executemany: {bare:.0f} rows/s")
            rows.clear()  # hundreds of MB the rest of the run does not need
            spawned = time.perf_counter()
            with catalog_process(work, server.url, settings.batch) as proc:
                ingest = await time_ingest(js, proc, work, workload, last, spawned)
                log(f"ingest: {ingest.logs_per_s:.0f} logs/s ({ingest.seconds:.1f} s)")
                letters = (await js.stream_info("TM_DLQ")).state.messages
                if letters:
                    raise RuntimeError(f"{letters} events were dead-lettered during the ingest")
                # A fresh catalog replays the stream, and refuses queries (503) until it has
                # seen that nothing is left: a moment after the last ack.
                await CatalogClient(nc).wait_caught_up()
                queries, planned = await measure_queries(
                    nc, workload, settings.queries, settings.rounds, log
                )
            check_store(work, workload)
            log("restarting the catalog on its full store")
            spawned = time.perf_counter()
            with catalog_process(work, server.url, settings.batch) as proc:
                await wait_serving(nc, proc, work)
                client = CatalogClient(nc)
                startup_s = await client.wait_caught_up() - spawned
                await client.check_window(workload)
        finally:
            await nc.close()
    return ingest, bare, queries, planned, startup_s


def check_store(work: Path, workload: Workload) -> None:
    """The stopped catalog's store holds the whole workload."""
    store = CatalogStore.open(catalog_url(work))
    try:
        counts = store.counts()
    finally:
        store.close()
    expected = StoreCounts(databases=1, lineages=1, logs=workload.logs, backups=workload.backups)
    if counts != expected:
        raise RuntimeError(f"the catalog stored {counts}, not {expected}")


def main(argv: list[str] | None = None) -> int:
    """Run the catalog benchmark (configured by `TIDEMARK_BENCH_CATALOG_*`, not by arguments)."""
    if argv:
        log(f"python -m bench catalog takes no arguments (got {' '.join(argv)}); see docs")
        return 2
    settings = load_settings()
    workload = Workload(settings.logs, settings.threads, settings.backups)
    workload.check_keys()
    check_times(workload)
    log(
        f"catalog benchmark: {workload.logs} logs over {workload.threads} threads, "
        f"{workload.backups} backups, {settings.rounds} round(s)"
    )
    with scratch(settings) as work:
        ingest, bare, queries, planned, startup_s = asyncio.run(live(settings, workload, work))
    log(f"rescan baseline: {settings.rescans} run(s) of each question")
    rescan_window, rescan_plan = measure_rescans(workload, settings.rescans)
    backups = max(1, settings.backups * settings.rebuild_objects // settings.logs)
    small = Workload(settings.rebuild_objects, settings.threads, backups)
    root = ensure_bucket(settings.cache_dir, small, log)
    with scratch(settings) as work:
        rebuilt = measure_rebuild(root, small, work, settings.rounds, log)
    print_report(
        settings,
        Results(
            ingest=ingest,
            executemany_per_s=bare,
            queries=queries,
            planned_objects=planned,
            rescan_window_ms=rescan_window,
            rescan_plan_ms=rescan_plan,
            startup_s=startup_s,
            rebuild=rebuilt,
            rebuild_backups=backups,
        ),
    )
    return 0
