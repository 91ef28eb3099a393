"""What the archive benchmark is asked to do, from `TIDEMARK_BENCH_*` environment variables.

Every knob has a default that reproduces the published figures; see docs/benchmarks.md.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from services.archiver.settings import ArchiverSettings

CompressionKind = Literal["none", "zstd"]

_ENV = "TIDEMARK_BENCH_"


@dataclass(frozen=True)
class Compression:
    """How every contender compresses segments: ours, pgBackRest and barman-cloud alike."""

    kind: CompressionKind
    level: int

    def __str__(self) -> str:
        return "none" if self.kind == "none" else f"zstd-{self.level}"


@dataclass(frozen=True)
class BenchSettings:
    rounds: int
    """Rounds of every contender, interleaved; figures are medians over rounds."""
    segments: int
    """Segments in each backlog (16 MiB each)."""
    pgbench_scale: int
    """`pgbench -i -s` scale producing the pgbench mix."""
    compression: Compression
    cache_dir: Path
    """Where the segment corpus and the barman-cloud virtualenv are kept between runs; must be
    reachable by the database OS user."""
    work_dir: Path
    """Where each run's scratch directories go (staged backlogs, repositories, spools)."""
    lag_seconds: float
    """How long PostgreSQL produces segments during the lag measurement."""
    lag_interval: float
    """Seconds between segment switches during the lag measurement (the steady rate)."""
    lag_tps: int
    """pgbench TPC-B transactions per second filling the segments during the lag measurement."""


def _int(name: str, default: int, minimum: int = 1) -> int:
    raw = os.environ.get(_ENV + name)
    value = default if raw in (None, "") else int(raw)
    if value < minimum:
        raise ValueError(f"{_ENV}{name}={value}: must be at least {minimum}")
    return value


def _float(name: str, default: float) -> float:
    raw = os.environ.get(_ENV + name)
    value = default if raw in (None, "") else float(raw)
    if value <= 0:
        raise ValueError(f"{_ENV}{name}={value}: must be positive")
    return value


def _compression() -> Compression:
    """The archiver's own default (`ArchiverSettings`) unless the environment says otherwise."""
    shipped = ArchiverSettings()
    kind = os.environ.get(_ENV + "COMPRESSION", "") or shipped.compression
    if kind not in ("none", "zstd"):
        raise ValueError(f"{_ENV}COMPRESSION={kind!r}: Tidemark supports none or zstd")
    level = _int("ZSTD_LEVEL", shipped.zstd_level)
    return Compression("zstd" if kind == "zstd" else "none", level)


def load_settings() -> BenchSettings:
    return BenchSettings(
        rounds=_int("ROUNDS", 3),
        segments=_int("SEGMENTS", 64, minimum=2),
        pgbench_scale=_int("PGBENCH_SCALE", 82),
        compression=_compression(),
        # /var/tmp: on disk (never tmpfs), and reachable by the database OS user, who must read
        # the corpus and write into every run's scratch directory.
        cache_dir=Path(os.environ.get(_ENV + "CACHE", "") or "/var/tmp/tidemark-bench"),  # noqa: S108
        work_dir=Path(os.environ.get(_ENV + "WORK", "") or "/var/tmp"),  # noqa: S108
        lag_seconds=_float("LAG_SECONDS", 30.0),
        lag_interval=_float("LAG_INTERVAL", 1.0),
        lag_tps=_int("LAG_TPS", 500),
    )
