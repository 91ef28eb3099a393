"""The two segment sets every contender archives, made once by a real PostgreSQL and cached.

- **pgbench**: the WAL of `pgbench -i -s <scale>` (bulk COPY, index build, vacuum) — the
  compressible kind (zstd shrinks it many times);
- **random**: the WAL of inserting rows of random bytes (`gen_random_bytes`, stored uncompressed)
  — the incompressible kind, where compression only costs CPU.

Layout under the cache (`<cache>/corpus-s<scale>-n<segments>/`)::

    cluster/        the cluster that wrote them (its pg_control matches their system id)
    pgbench/        the pgbench segments, 16 MiB each, named as PostgreSQL named them
    random/         the random segments
    manifest.json   written last: a corpus without it is rebuilt from scratch
"""

from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from bench.archive.cluster import SEGMENT_SIZE, BenchCluster, parse_lsn, wal_file_name
from bench.archive.settings import BenchSettings

MIXES = ("pgbench", "random")
_MANIFEST_FORMAT = 1
#: Random rows stay under the TOAST threshold (~2 kB) so they are stored as written.
_RANDOM_ROW_BYTES = 1900
_RANDOM_BATCH_ROWS = 20_000

Log = Callable[[str], None]


@dataclass(frozen=True)
class SegmentSet:
    mix: str
    paths: tuple[Path, ...]

    @property
    def total_bytes(self) -> int:
        return sum(p.stat().st_size for p in self.paths)

    @property
    def mib(self) -> float:
        return self.total_bytes / (1024 * 1024)


@dataclass(frozen=True)
class Corpus:
    root: Path
    cluster: BenchCluster
    system_identifier: str
    sets: dict[str, SegmentSet]

    @property
    def pg_control(self) -> Path:
        return self.cluster.data_dir / "global" / "pg_control"

    @property
    def pg_version(self) -> Path:
        return self.cluster.data_dir / "PG_VERSION"


def ensure_corpus(settings: BenchSettings, log: Log) -> Corpus:
    """The cached corpus for these settings, made first if missing or incomplete."""
    root = settings.cache_dir / f"corpus-s{settings.pgbench_scale}-n{settings.segments}"
    corpus = _load(root)
    if corpus is not None:
        log(f"segments: cached in {root}")
        return corpus
    log(f"segments: producing both mixes with a real PostgreSQL in {root} (a few minutes, once)")
    if root.exists():
        shutil.rmtree(root)
    _make_traversable(root)
    cluster = BenchCluster(root / "cluster")
    cluster.initdb()
    collect = cluster.user_dir("collect")
    cluster.start(
        {
            "archive_mode": "on",
            "archive_command": f"cp %p {collect}/%f",
            "max_wal_size": "1GB",
            "shared_buffers": "128MB",
        }
    )
    try:
        cluster.psql("CREATE DATABASE bench")
        cluster.psql("CREATE EXTENSION IF NOT EXISTS pgcrypto", dbname="bench")
        timeline = cluster.timeline()
        names: dict[str, list[str]] = {}
        first = _after(cluster.switch_segment())
        log(f"segments: pgbench -i -s {settings.pgbench_scale}")
        cluster.pgbench("-i", "-q", "-s", str(settings.pgbench_scale))
        last = _last(cluster.switch_segment())
        names["pgbench"] = [wal_file_name(timeline, n) for n in range(first, last + 1)]
        log(f"segments: random bytea rows until {settings.segments} segments are full")
        first = _after(cluster.switch_segment())
        _fill_random(cluster, first + settings.segments)
        last = _last(cluster.switch_segment())
        names["random"] = [wal_file_name(timeline, n) for n in range(first, last + 1)]
        _wait_archived(cluster, collect, names["random"][-1])
        cluster.psql("DROP TABLE random_rows", dbname="bench")
        cluster.psql("CHECKPOINT")
        system_identifier = cluster.system_identifier()
    finally:
        cluster.stop()
    manifest: dict[str, object] = {
        "format": _MANIFEST_FORMAT,
        "system_identifier": system_identifier,
    }
    for mix in MIXES:
        chosen = names[mix][: settings.segments]
        if len(chosen) < settings.segments:
            log(f"segments: {mix} produced only {len(chosen)} segments; using them all")
        target = root / mix
        target.mkdir(mode=0o755)
        for name in chosen:
            shutil.move(collect / name, target / name)
            (target / name).chmod(0o644)
        manifest[mix] = chosen
    for leftover in collect.iterdir():
        leftover.unlink()
    tmp = root / "manifest.json.tmp"
    tmp.write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
    os.sync()
    tmp.rename(root / "manifest.json")
    corpus = _load(root)
    if corpus is None:
        raise RuntimeError(f"{root}: the corpus just made does not load back")
    return corpus


def _make_traversable(root: Path) -> None:
    """The database user must reach the corpus (cluster and segments) through every parent."""
    root.mkdir(parents=True, exist_ok=True)
    for directory in (root, *root.parents):
        if directory == Path("/"):
            break
        if directory.stat().st_mode & 0o005 != 0o005:
            directory.chmod(directory.stat().st_mode | 0o005)


def _after(switch_end: int) -> int:
    """The first segment written after a switch that ended at `switch_end`."""
    return -(-switch_end // SEGMENT_SIZE)


def _last(switch_end: int) -> int:
    """The segment a switch that ended at `switch_end` closed."""
    return (switch_end - 1) // SEGMENT_SIZE


def _fill_random(cluster: BenchCluster, until_segno: int) -> None:
    half = _RANDOM_ROW_BYTES // 2
    cluster.psql(
        "CREATE TABLE random_rows (id bigint, payload bytea);"
        "ALTER TABLE random_rows ALTER payload SET STORAGE EXTERNAL",
        dbname="bench",
    )
    # gen_random_bytes gives at most 1024 bytes per call. Only our integer constants go in.
    insert = (
        f"INSERT INTO random_rows SELECT g, gen_random_bytes({half}) || "  # noqa: S608
        f"gen_random_bytes({_RANDOM_ROW_BYTES - half}) "
        f"FROM generate_series(1, {_RANDOM_BATCH_ROWS}) g"
    )
    while True:
        lsn = cluster.psql("SELECT pg_current_wal_insert_lsn()")
        if parse_lsn(lsn) // SEGMENT_SIZE >= until_segno:
            return
        cluster.psql(insert, dbname="bench")


def _wait_archived(cluster: BenchCluster, collect: Path, name: str, timeout: float = 600) -> None:
    deadline = time.monotonic() + timeout
    while not (collect / name).is_file() or (collect / name).stat().st_size != SEGMENT_SIZE:
        if time.monotonic() > deadline:
            raise RuntimeError(
                f"segment {name} not archived after {timeout}s:\n{cluster.log_tail()}"
            )
        time.sleep(0.2)


def _load(root: Path) -> Corpus | None:
    try:
        manifest = json.loads((root / "manifest.json").read_text(encoding="utf-8"))
    except (FileNotFoundError, ValueError):
        return None
    if manifest.get("format") != _MANIFEST_FORMAT:
        return None
    cluster = BenchCluster(root / "cluster")
    if not cluster.exists:
        return None
    sets: dict[str, SegmentSet] = {}
    for mix in MIXES:
        paths = tuple(root / mix / name for name in manifest.get(mix, []))
        if not paths or any(not p.is_file() or p.stat().st_size != SEGMENT_SIZE for p in paths):
            return None
        sets[mix] = SegmentSet(mix, paths)
    return Corpus(root, cluster, str(manifest["system_identifier"]), sets)
