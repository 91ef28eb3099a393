"""Archive lag: from PostgreSQL calling `archive_command` to the segment being durable in a store.

The cached cluster runs TPC-B (`pgbench -R <tps>`, throttled, on the pgbench tables) and a
segment clock switches WAL every `lag_interval` seconds, so completed segments arrive at a steady
rate whatever the disk does. `archive_command` is wrapped to log the wall-clock time of each call
(`date +%s.%N`, before the contender starts); a poller thread watches the store through a probe
and notes when each segment first appears there. Lag = first seen - call time, per segment.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from bench.archive.cluster import BenchCluster
from bench.archive.probes import Probe
from bench.archive.settings import BenchSettings
from services.engines.postgres.oscmd import chown_to

#: How often the store is looked at; bounds the error on each lag from above.
POLL_INTERVAL = 0.01


@dataclass(frozen=True)
class LagResult:
    lags: tuple[float, ...]

    @property
    def p50(self) -> float:
        return percentile(self.lags, 50)

    @property
    def p99(self) -> float:
        return percentile(self.lags, 99)


def percentile(values: tuple[float, ...] | list[float], pct: float) -> float:
    """Nearest-rank percentile (with 30 samples, p99 is the worst one)."""
    if not values:
        raise ValueError("no samples")
    ordered = sorted(values)
    return ordered[max(0, math.ceil(pct / 100 * len(ordered)) - 1)]


def _timestamped(archive_command: str, calls_log: Path) -> str:
    # %% is how archive_command spells a literal %; PostgreSQL substitutes %f in both places.
    return f'echo "$(date +%%s.%%N) %f" >> {calls_log} && {archive_command}'


def _read_calls(calls_log: Path) -> dict[str, float]:
    calls: dict[str, float] = {}
    for line in calls_log.read_text(encoding="utf-8").splitlines():
        stamp, _, name = line.partition(" ")
        calls.setdefault(name.strip(), float(stamp))  # a retried call keeps its first time
    return calls


class _Watcher(threading.Thread):
    def __init__(self, probe: Probe) -> None:
        super().__init__(name="lag-watcher", daemon=True)
        self.probe = probe
        self.seen: dict[str, float] = {}
        self.stopping = threading.Event()
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            while not self.stopping.is_set():
                probed_at = time.time()
                for name in self.probe():
                    self.seen.setdefault(name, probed_at)
                time.sleep(POLL_INTERVAL)
        except BaseException as exc:
            self.error = exc


def measure_lag(
    cluster: BenchCluster,
    archive_command: str,
    make_probe: Callable[[int], Probe],
    settings: BenchSettings,
    work: Path,
) -> LagResult:
    """Run the cluster with `archive_command` under steady load; the lag of every segment."""
    # Segments a previous, interrupted run left ready are not part of this measurement.
    for stale in (cluster.data_dir / "pg_wal" / "archive_status").glob("*.ready"):
        stale.rename(stale.with_suffix(".done"))
    calls_log = work / "calls.log"
    calls_log.touch()
    chown_to(calls_log, cluster.user)
    cluster.start(
        {
            "archive_mode": "on",
            "archive_command": _timestamped(archive_command, calls_log),
            "archive_timeout": 0,
            "max_wal_size": "1GB",
            "shared_buffers": "128MB",
        }
    )
    try:
        watcher = _Watcher(make_probe(cluster.timeline()))
        watcher.start()
        started = time.time()
        load = cluster.pgbench_background(
            "-n", "-c", "2", "-j", "2", "-T", str(math.ceil(settings.lag_seconds)),
            "-R", str(settings.lag_tps),
        )  # fmt: skip
        try:
            next_switch = time.monotonic() + settings.lag_interval
            while load.poll() is None:
                time.sleep(max(0.0, next_switch - time.monotonic()))
                next_switch += settings.lag_interval
                if load.poll() is None:
                    cluster.psql("SELECT pg_switch_wal()")
        finally:
            if load.poll() is None:
                load.kill()
            _, stderr = load.communicate()
        if load.returncode != 0:
            raise RuntimeError(f"pgbench load failed: {stderr.decode(errors='replace')[-1500:]}")
        cluster.switch_segment()
        deadline = time.monotonic() + 120
        while True:
            calls = {n: t for n, t in _read_calls(calls_log).items() if t >= started - 1}
            if calls and set(calls) <= set(watcher.seen):
                break
            if watcher.error is not None:
                raise RuntimeError(f"store probe failed: {watcher.error!r}") from watcher.error
            if time.monotonic() > deadline:
                late = sorted(set(calls) - set(watcher.seen))
                raise TimeoutError(f"segments called but not durable after 120 s: {late[:5]}")
            time.sleep(0.1)
        watcher.stopping.set()
        watcher.join()
    finally:
        cluster.stop()
    return LagResult(tuple(watcher.seen[name] - t for name, t in sorted(calls.items())))
