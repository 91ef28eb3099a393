"""Every contender of the archive benchmark, behind one shape: `prepare()` (install, check;
untimed, raises `Unavailable`) and `drain(run) -> seconds` over a freshly staged backlog.

Filesystem group (both mixes): ours → `file://` store, pgBackRest → posix repo, the copy limit.
GCS-emulator group (pgbench mix): ours → `gs://` store, barman-cloud, the emulator limit.
Lag (pgbench load on the real cluster): ours, and pgBackRest for reference.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from bench.archive import ours
from bench.archive.backlog import Backlog
from bench.archive.emulator import BUCKET, Emulator
from bench.archive.lag import LagResult, measure_lag
from bench.archive.outcome import PeerUnavailable
from bench.archive.peers.barman_cloud import BarmanCloud, ensure_barman_cloud
from bench.archive.peers.limits import copy_limit, emulator_limit, payloads
from bench.archive.peers.pgbackrest import (
    PgBackRest,
    compress_options,
    ensure_pgbackrest,
    supports_zstd,
)
from bench.archive.segments import Corpus
from bench.archive.settings import BenchSettings, Compression


@dataclass
class Run:
    """One contender's scratch directory, staged backlog and (GCS group) fresh emulator."""

    work: Path
    backlog: Backlog
    emulator: Emulator | None = None

    @property
    def endpoint(self) -> str:
        assert self.emulator is not None, "a GCS contender runs with an emulator"
        return self.emulator.endpoint


@dataclass(frozen=True)
class Contender:
    key: str
    label: str
    drain: Callable[[Run], float]
    prepare: Callable[[], None] = lambda: None
    uses_emulator: bool = False


@dataclass(frozen=True)
class LagContender:
    key: str
    label: str
    measure: Callable[[Path], LagResult]
    prepare: Callable[[], None] = lambda: None


@dataclass
class Tools:
    """Peers found or installed on first use, with what the report should say about them."""

    settings: BenchSettings
    notes: dict[str, str] = field(default_factory=dict)

    @functools.cached_property
    def pgbackrest(self) -> tuple[Path, Compression]:
        binary, version = ensure_pgbackrest()
        compression = self.settings.compression
        if compression.kind == "zstd" and not supports_zstd(binary):
            compression = Compression("none", compression.level)
            self.notes["pgbackrest"] = (
                f"{version}, built without zstd: compared uncompressed against ours with "
                f"{self.settings.compression}"
            )
        else:
            self.notes["pgbackrest"] = (
                f"{version}, archive-async, process-max=2, compress {compression}, posix repo"
            )
        return binary, compression

    @functools.cached_property
    def barman(self) -> Path:
        tool, version = ensure_barman_cloud(self.settings.cache_dir, self.settings.compression)
        self.notes["barman-cloud"] = (
            f"{version} (PyPI, venv on the system Python), compress {self.settings.compression}, "
            "GCS emulator"
        )
        return tool


def _checked(prepare: Callable[[], object]) -> Callable[[], None]:
    def run() -> None:
        try:
            prepare()
        except PeerUnavailable:
            raise
        except Exception as exc:
            raise PeerUnavailable(f"{type(exc).__name__}: {exc}") from exc

    return run


def filesystem_contenders(tools: Tools, corpus: Corpus) -> list[Contender]:
    compression = tools.settings.compression
    system_id = int(corpus.system_identifier)

    def ours_fs(run: Run) -> float:
        url = f"file://{run.work}/store"
        return ours.drain_backlog_ours(run.backlog, url, compression, system_id)

    def pgbackrest(run: Run) -> float:
        binary, theirs = tools.pgbackrest
        peer = PgBackRest(
            binary, run.work, run.backlog.pgdata, run.backlog.user, compress_options(theirs)
        )
        return peer.drain(run.backlog)

    return [
        Contender("ours", "ours (file://)", ours_fs),
        Contender("pgbackrest", "pgBackRest", pgbackrest, _checked(lambda: tools.pgbackrest)),
        Contender("copy_limit", "copy limit", lambda run: copy_limit(run.backlog, run.work / "c")),
    ]


def gcs_contenders(tools: Tools, corpus: Corpus) -> list[Contender]:
    compression = tools.settings.compression
    system_id = int(corpus.system_identifier)

    def ours_gcs(run: Run) -> float:
        url = f"gs://{BUCKET}/tidemark?endpoint={run.endpoint}"
        return ours.drain_backlog_ours(run.backlog, url, compression, system_id)

    def barman(run: Run) -> float:
        assert run.emulator is not None
        return BarmanCloud(tools.barman, run.backlog, run.emulator, compression).drain()

    def limit(run: Run) -> float:
        assert run.emulator is not None
        return emulator_limit(run.emulator, payloads(run.backlog, compression))

    return [
        Contender("ours_gcs", "ours (gs://)", ours_gcs, uses_emulator=True),
        Contender("barman_cloud", "barman-cloud", barman, _checked(lambda: tools.barman), True),
        Contender("emulator_limit", "emulator limit", limit, uses_emulator=True),
    ]


def lag_contenders(tools: Tools, corpus: Corpus) -> list[LagContender]:
    settings = tools.settings
    cluster = corpus.cluster

    def ours_lag(work: Path) -> LagResult:
        url = f"file://{work}/store"
        system_id = int(corpus.system_identifier)
        return ours.lag_ours(cluster, url, settings.compression, system_id, settings, work)

    def pgbackrest_lag(work: Path) -> LagResult:
        binary, theirs = tools.pgbackrest
        peer = PgBackRest(binary, work, cluster.data_dir, cluster.user, compress_options(theirs))
        return measure_lag(cluster, peer.archive_command, peer.probe, settings, work)

    return [
        LagContender("ours", "ours (file://)", ours_lag),
        LagContender(
            "pgbackrest", "pgBackRest", pgbackrest_lag, _checked(lambda: tools.pgbackrest)
        ),
    ]
