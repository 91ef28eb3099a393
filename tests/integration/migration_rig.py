"""What the PostgreSQL migration tests share: an empty target directory, instances over the
test clusters, and a writer that keeps a ledger of every commit the source acknowledged."""

from __future__ import annotations

import shutil
import socket
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import psycopg

from services.engines.postgres.migration import PgInstance
from services.engines.postgres.oscmd import chown_to, run_as, user_env
from tests.fixtures.postgres import PgCluster


def instance_of(cluster: PgCluster) -> PgInstance:
    return PgInstance(
        data_dir=cluster.data_dir,
        socket_dir=cluster.socket_dir,
        port=cluster.port,
        bindir=cluster.bindir,
        user=cluster.db_user,
        role=cluster.superuser,
    )


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@contextmanager
def empty_target(source: PgCluster) -> Iterator[PgInstance]:
    """A target instance with an empty directory; stopped and removed afterwards."""
    base = Path(tempfile.mkdtemp(prefix="tidemark-mig-", dir="/tmp"))
    base.chmod(0o700)
    chown_to(base, source.db_user)
    target = PgInstance(
        data_dir=base / "data",
        socket_dir=base,
        port=_free_port(),
        bindir=source.bindir,
        user=source.db_user,
        role=source.superuser,
    )
    try:
        yield target
    finally:
        if (target.data_dir / "postmaster.pid").exists():
            run_as(
                target.user,
                [target.bindir / "pg_ctl", "-D", target.data_dir, "-m", "immediate", "stop"],
                cwd=base,
                env=user_env(target.user),
                timeout=60,
            )
        shutil.rmtree(base, ignore_errors=True)


@dataclass
class Writer:
    """Inserts ids 1, 2, 3… into `ledger` over TCP, reconnecting after errors, and records the
    ids whose COMMIT the server acknowledged, with when. `defiant` sessions turn the read-only
    default off for themselves, as any client may (the hazard the shutdown fence covers)."""

    dsn: str
    defiant: bool = False
    start_id: int = 1
    acked: dict[int, float] = field(default_factory=dict)
    failures: int = 0
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def _run(self) -> None:
        next_id = self.start_id
        while not self._stop.is_set():
            try:
                with psycopg.connect(self.dsn, autocommit=True, connect_timeout=2) as conn:
                    if self.defiant:
                        conn.execute("SET default_transaction_read_only = off")
                    while not self._stop.is_set():
                        conn.execute("INSERT INTO ledger (id) VALUES (%s)", (next_id,))
                        self.acked[next_id] = time.monotonic()
                        next_id += 2
            except Exception:  # terminated, read-only, refused: try again, never count it
                self.failures += 1
                next_id += 2  # an id whose fate is unknown is never reused
                time.sleep(0.01)

    def start(self) -> Writer:
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=30)


def ids_on(instance: PgInstance) -> set[int]:
    return {int(row[0]) for row in instance.rows("SELECT id FROM ledger")}
