"""The source cluster every round migrates from, and the steady write load it runs under.

One PostgreSQL cluster from the test harness (`tests.fixtures.postgres.PgCluster`: its own
directory under `/tmp`, run as the database OS user, 127.0.0.1 on a free port and its unix
socket, data checksums on) with `wal_level=logical` (logical-upgrade's subscription needs it),
loaded once with `pgbench -i -s <scale>` (server-side generation, vacuum, primary keys), plus two
tables of ours: `ledger` (the ids the ledger writer's commits were acknowledged for) and
`migrate_probe` (the first writes on a promoted target). The two tables without a primary key,
`pgbench_history` and `migrate_probe`, get `REPLICA IDENTITY FULL`, as a DBA fixing
`logical_preflight`'s finding would.

The load (`Load`) runs from the start of a round's first copy until the cutover: throttled
TPC-B, `pgbench -c 2 -j 2 -R <tps>` over the socket (its clients end at the fence:
pgbench does not reconnect), and the ledger `Writer` of the migration tests over TCP,
inserting ids one commit at a time as fast as the server acknowledges them and reconnecting
after every error. The writer's ledger is what `lost_commits` is counted from.
"""

from __future__ import annotations

import contextlib
import itertools
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass

from bench.migrate.settings import MigrateBenchSettings
from services.engines.postgres.migration import PgInstance
from services.engines.postgres.oscmd import switch_user_kwargs, user_env
from tests.fixtures.postgres import PgCluster
from tests.integration.migration_rig import Writer, instance_of

MIB = 1 << 20
IDS_PER_LOAD = 1_000_000_000
"""Each load's writer starts at its own billion: ids already on the source are never reused."""


@dataclass(frozen=True)
class Source:
    cluster: PgCluster
    instance: PgInstance
    size_bytes: int
    load_seconds: float

    def tcp_dsn_at(self, port: int) -> str:
        """The source's credentials at another port: what a client uses on a copy of it."""
        return self.cluster.tcp_dsn.replace(f"port={self.cluster.port} ", f"port={port} ")


@contextlib.contextmanager
def loaded_source(settings: MigrateBenchSettings) -> Iterator[Source]:
    """Started and loaded; stopped (immediate) and removed afterwards, whatever ran it since."""
    cluster = PgCluster(
        settings={
            "shared_buffers": settings.shared_buffers,
            "max_wal_size": "1GB",
            "log_checkpoints": True,
            # logical-upgrade's subscription needs it; the physical methods run with it too.
            "wal_level": "logical",
        },
        timeout=120.0,
    )
    try:
        cluster.start()
        instance = instance_of(cluster)
        started = time.monotonic()
        instance.run(
            "pgbench",
            ["-i", "-q", "-I", "dtGvp", "-s", str(settings.scale), *_conn(cluster)],
            timeout=3 * 3600,
        )
        cluster.execute(
            "CREATE TABLE ledger (id bigint PRIMARY KEY); "
            "CREATE TABLE migrate_probe (round int, method text, at timestamptz DEFAULT now())"
        )
        # What a DBA does about logical_preflight's finding "no primary key and no replica
        # identity" (pgbench_history has no key, nor has our probe): both are insert-only, so
        # the whole row as identity costs nothing until a row is updated or deleted.
        cluster.execute(
            "ALTER TABLE pgbench_history REPLICA IDENTITY FULL; "
            "ALTER TABLE migrate_probe REPLICA IDENTITY FULL"
        )
        cluster.execute("CHECKPOINT")
        size = int(cluster.psql("SELECT pg_database_size('postgres')"))
        yield Source(cluster, instance, size, time.monotonic() - started)
    finally:
        cluster.cleanup()


def _conn(cluster: PgCluster) -> list[str]:
    """pgbench's connection: the socket, as the superuser, to `postgres` (the last argument)."""
    sock = ["-h", str(cluster.socket_dir), "-p", str(cluster.port)]
    return [*sock, "-U", cluster.superuser, "postgres"]


_load_numbers = itertools.count(1)
PGBENCH_LOAD = ("-n", "-c", "2", "-j", "2", "-T", "86400")
"""TPC-B from two clients for as long as it takes (the fence ends it), without a vacuum first."""


class Load:
    """The steady write load of one round (see the module's docstring)."""

    def __init__(self, source: Source, tps: int) -> None:
        self.source = source
        self.tps = tps
        self.started = time.monotonic()
        cluster = source.cluster
        self.pgbench = subprocess.Popen(
            [str(cluster.bindir / "pgbench"), *PGBENCH_LOAD, f"--rate={tps}", *_conn(cluster)],
            cwd=cluster.base,
            env=user_env(cluster.db_user),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            **switch_user_kwargs(cluster.db_user),
        )
        self.writer = Writer(cluster.tcp_dsn, start_id=next(_load_numbers) * IDS_PER_LOAD + 1)
        self.writer.start()
        self._stopped = False

    def check_running(self) -> None:
        """Raise unless pgbench still runs: a load that died early is no steady load."""
        if self.pgbench.poll() is not None:
            _, err = self.pgbench.communicate()
            raise RuntimeError(
                f"pgbench load ended before the cutover: {err.decode(errors='replace')[-1500:]}"
            )

    def stop(self) -> None:
        if self._stopped:
            return
        self._stopped = True
        self.writer.stop()
        if self.pgbench.poll() is None:
            self.pgbench.kill()
        self.pgbench.communicate()


@contextlib.contextmanager
def steady_load(source: Source, tps: int) -> Iterator[Load]:
    load = Load(source, tps)
    try:
        yield load
    finally:
        load.stop()
