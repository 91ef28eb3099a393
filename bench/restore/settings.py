"""What the restore benchmark is asked to do, from `TIDEMARK_BENCH_RESTORE_*` environment
variables. Every knob has a default that reproduces the published figures; see
docs/benchmarks.md. A small run (`_DATA_MIB=64 _WAL_MIB=64`) is a smoke test.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from bench.archive.settings import Compression
from services.archiver.settings import ArchiverSettings

_ENV = "TIDEMARK_BENCH_RESTORE_"


@dataclass(frozen=True)
class RestoreBenchSettings:
    data_mib: int
    """The table's size (heap, without its index) when the base backups are taken."""
    wal_mib: int
    """WAL written after both base backups, which every restore replays."""
    work_dir: Path
    """Where the run's directory goes (clusters, our store, pgBackRest's repository, restored
    clusters); removed afterwards. Must be reachable by the database OS user."""
    compression: Compression
    """Ours: the base backup's parts and the archived WAL (pgBackRest uses lz4)."""


def _int(name: str, default: int) -> int:
    raw = os.environ.get(_ENV + name)
    value = default if raw in (None, "") else int(raw)
    if value < 1:
        raise ValueError(f"{_ENV}{name}={value}: must be at least 1")
    return value


def load_settings() -> RestoreBenchSettings:
    kind = os.environ.get(_ENV + "COMPRESSION", "") or "zstd"
    if kind not in ("none", "zstd"):
        raise ValueError(f"{_ENV}COMPRESSION={kind!r}: Tidemark stores none or zstd")
    return RestoreBenchSettings(
        data_mib=_int("DATA_MIB", 1100),
        wal_mib=_int("WAL_MIB", 1100),
        # /var/tmp: on disk (never tmpfs), and reachable by the database OS user.
        work_dir=Path(os.environ.get(_ENV + "WORK", "") or "/var/tmp"),  # noqa: S108
        compression=Compression(
            "zstd" if kind == "zstd" else "none", ArchiverSettings().zstd_level
        ),
    )
