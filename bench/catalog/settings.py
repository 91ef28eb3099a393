"""What the catalog benchmark is asked to do, from `TIDEMARK_BENCH_CATALOG_*` variables.

Every knob has a default that reproduces the published figures; see docs/benchmarks.md.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from services.catalog.settings import CatalogSettings

_ENV = "TIDEMARK_BENCH_CATALOG_"


@dataclass(frozen=True)
class BenchSettings:
    logs: int
    """Redo logs of the one database, spread evenly over `threads`."""
    threads: int
    backups: int
    """Backups, evenly spaced along the history; each is published once its logs are."""
    batch: int
    """The catalog's `ingest_batch` (its default unless set)."""
    queries: int
    """Requests of each kind (window, restore plan, ping) per round, interleaved."""
    rounds: int
    """Rounds of the query and rebuild measurements; figures are medians (p99: of all)."""
    rescans: int
    """Times the rescan baseline (a history rebuilt from every log) is run."""
    rebuild_objects: int
    """Log objects in the filesystem store that `catalog rebuild` reads."""
    cache_dir: Path
    """Where the rebuild's object store is kept between runs (it is slow to write)."""
    work_dir: Path
    """Where each run's scratch directory goes (nats-server, SQLite), removed afterwards."""


def _int(name: str, default: int, minimum: int = 1) -> int:
    raw = os.environ.get(_ENV + name)
    value = default if raw in (None, "") else int(raw)
    if value < minimum:
        raise ValueError(f"{_ENV}{name}={value}: must be at least {minimum}")
    return value


def load_settings() -> BenchSettings:
    return BenchSettings(
        logs=_int("LOGS", 1_000_000, minimum=1000),
        threads=_int("THREADS", 2),
        backups=_int("BACKUPS", 500),
        batch=_int("BATCH", CatalogSettings().ingest_batch),
        queries=_int("QUERIES", 500),
        rounds=_int("ROUNDS", 3),
        rescans=_int("RESCANS", 3),
        rebuild_objects=_int("REBUILD_OBJECTS", 100_000, minimum=1000),
        # /var/tmp: on disk (never tmpfs), like the archive benchmark's.
        cache_dir=Path(os.environ.get(_ENV + "CACHE", "") or "/var/tmp/tidemark-bench"),  # noqa: S108
        work_dir=Path(os.environ.get(_ENV + "WORK", "") or "/var/tmp"),  # noqa: S108
    )
