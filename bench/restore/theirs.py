"""pgBackRest's side: the second half of the benchmark's `archive_command`, a full backup, and
the timed restore to the latest point.

The peer is the archive benchmark's (`bench.archive.peers.pgbackrest`: installed from Debian when
missing, a bench-only config, a posix repository in the run's directory, `archive-async=y`,
`process-max=2`) with lz4 compression — pgBackRest's fastest — for the WAL and the backup, and
`start-fast=y`. During recovery its `archive-get` is asynchronous too (the same `archive-async`),
fetching ahead with two processes, which is its best configuration here.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from bench.archive.backlog import wait_until
from bench.archive.cluster import BenchCluster, SettingValue
from bench.archive.peers.pgbackrest import PgBackRest
from services.engines.postgres.oscmd import chown_to

SETTINGS = {"compress-type": "lz4", "start-fast": "y"}
LONG = 7200.0
"""Seconds any one pgBackRest command or recovery may take before the run is called failed."""


def make_peer(binary: Path, work: Path, source: BenchCluster) -> PgBackRest:
    """The repository and stanza for `source` (its socket for the online backup)."""
    work.mkdir(mode=0o755)
    return PgBackRest(
        binary,
        work,
        source.data_dir,
        source.user,
        SETTINGS,
        stanza_settings={"pg1-socket-path": str(source.base), "pg1-port": str(source.port)},
    )


def take_backup(peer: PgBackRest) -> float:
    """`pgbackrest backup --type=full`; its seconds."""
    start = time.perf_counter()
    peer.run("backup", "--type=full", timeout=LONG)
    return time.perf_counter() - start


@dataclass(frozen=True)
class TheirsTimed:
    seconds: float
    """From `pgbackrest restore` to the expected count answered on the restored cluster."""
    restore_seconds: float
    """`pgbackrest restore` itself: the files, and the recovery settings."""
    start_seconds: float
    """Postmaster start until it accepts connections (consistent, recovery still running)."""
    recovery_seconds: float
    """Until `pg_is_in_recovery()` is false: the WAL replayed, the server promoted."""
    count_seconds: float
    rows: int


def timed_restore(
    peer: PgBackRest, base: Path, server: Mapping[str, SettingValue], count_sql: str
) -> TheirsTimed:
    """`pgbackrest restore --type=default` (the latest point) into a new `base/data`, started
    on its own port with `server` settings and archiving off, then counted; stopped after."""
    cluster = BenchCluster(base)
    base.mkdir(mode=0o700)
    chown_to(base, cluster.user)
    cluster.data_dir.mkdir(mode=0o700)
    chown_to(cluster.data_dir, cluster.user)
    try:
        start = time.perf_counter()
        peer.run(
            "restore",
            "--type=default",
            f"--pg1-path={cluster.data_dir}",
            "--archive-mode=off",
            timeout=LONG,
        )
        restored = time.perf_counter()
        # Overwrites the source's bench.conf that came with the files: its own port and
        # socket, and no archiving into the source's archives.
        cluster.start({**server, "archive_mode": False}, timeout=LONG)
        accepting = time.perf_counter()
        promoted = wait_until(
            lambda: cluster.psql("SELECT pg_is_in_recovery()") == "f",
            LONG,
            "pgBackRest's restored cluster leaving recovery",
            interval=0.2,
        )
        rows = int(cluster.psql(count_sql))
        end = time.perf_counter()
    finally:
        cluster.stop()
        peer.wait_idle()
    return TheirsTimed(
        seconds=end - start,
        restore_seconds=restored - start,
        start_seconds=accepting - restored,
        recovery_seconds=promoted - accepting,
        count_seconds=end - promoted,
        rows=rows,
    )
