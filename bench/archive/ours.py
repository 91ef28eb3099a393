"""The adapter driving Tidemark's own archiving path, as the archiver service wires it:

    PostgreSQL ─archive_command─▶ walpush ─▶ <spool>/ready/ ─(notify.sock)─▶ Streamer
        ─▶ BlobStore (verified, create-only) ─▶ log.archived on NATS JetStream
    Streamer ◀─ pg_wal/archive_status/*.ready (read-ahead; walpush then finds stored/<file>)

The two entry points are the whole interface the rest of the benchmark uses:

- `drain_backlog_ours(backlog, store_url, compression, system_id) -> seconds`: PostgreSQL-style
  calls of our `archive_command` over a staged backlog, timed until the store durably holds
  every segment;
- `lag_ours(cluster, store_url, compression, system_id, settings, work) -> LagResult`: a real
  PostgreSQL producing segments at a steady rate through our `archive_command`.

Both run the real pieces: `Spool.init` + `install_walpush` + `Spool.archive_command` for the push
side; the archiver's `Streamer`, in a process of its own as deployed (`streamer_proc.py`), over
a `PostgresSpoolSource` reading ahead from the cluster's `pg_wal`
(`ArchivedDatabase.pg_wal_dir`, as on a database node where the archiver may read the data
directory), a `Journal` (SQLite), the store from `open_store(store_url)`, and a `Publisher` on
a real nats-server with the Tidemark topology, with `ArchiverSettings` defaults except the
compression under test. Only the catalog is absent (nothing releases spooled files, which a
drain does not need). Durability is judged from outside, by listing the store, exactly as for
the peers.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

from bench.archive.backlog import Backlog, archive_backlog, wait_until
from bench.archive.cluster import BenchCluster
from bench.archive.lag import LagResult, measure_lag
from bench.archive.probes import Probe, bucket_probe, directory_probe
from bench.archive.settings import BenchSettings, Compression
from schemas import Engine
from services.archiver.settings import ArchivedDatabase, ArchiverSettings
from services.engines.postgres.oscmd import OsUser, system_python
from services.engines.postgres.spool import Spool, install_walpush
from services.stack.natsserver import NatsServer

REPO_ROOT = Path(__file__).resolve().parents[2]
DATABASE_UID = "bench-db"
NODE = "bench"
SOURCE = f"archiver@{NODE}"


@dataclass(frozen=True)
class Pipeline:
    """What PostgreSQL needs to push into ours: the spool and the `archive_command`."""

    spool: Spool
    archive_command: str
    database: ArchivedDatabase


def push_side(work: Path, user: OsUser, system_id: int, pg_wal: Path) -> Pipeline:
    """A spool owned by the database user, walpush installed where it can run it, and the
    archiver's view of the database, reading ahead from `pg_wal`."""
    spool = Spool(work / "spool")
    spool.init(DATABASE_UID, owner=user)
    tool = install_walpush(work / "tools", user=user)
    database = ArchivedDatabase(
        uid=DATABASE_UID,
        engine=Engine.POSTGRES,
        name="bench",
        system_id=system_id,
        spool_dir=spool.path,
        pg_wal_dir=pg_wal,
    )
    return Pipeline(spool, spool.archive_command(system_python(user), tool), database)


def archiver_settings(store_url: str, compression: Compression) -> ArchiverSettings:
    return ArchiverSettings(
        store_url=store_url, compression=compression.kind, zstd_level=compression.level
    )


@contextmanager
def streaming(pipeline: Pipeline, work: Path, settings: ArchiverSettings) -> Iterator[None]:
    """The archiver's streamer, in its own process (`streamer_proc.py`), for the block's duration.

    The block starts once the streamer has claimed the database's prefix and bound
    `notify.sock`, as a long-running archiver would have before PostgreSQL's next call.
    """
    nats = NatsServer(store_dir=work / "nats")
    nats.start()
    config = {
        "nats_url": nats.url,
        "journal": str(work / "journal.sqlite"),
        "database": pipeline.database.model_dump(mode="json"),
        "settings": settings.model_dump(mode="json"),
        "node": NODE,
        "source": SOURCE,
    }
    log_path = work / "streamer.log"
    try:
        with log_path.open("wb") as log:
            proc = subprocess.Popen(
                [sys.executable, "-m", "bench.archive.streamer_proc", json.dumps(config)],
                cwd=REPO_ROOT,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        try:
            wait_until(
                lambda: pipeline.spool.notify_socket_path.exists() or proc.poll() is not None,
                60,
                "the streamer claiming its prefix",
            )
            if proc.poll() is not None:
                raise RuntimeError(f"the streamer failed: {_tail(log_path)}")
            yield
        finally:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
            try:
                code = proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                proc.kill()
                code = proc.wait()
        if code != 0:
            raise RuntimeError(f"the streamer exited {code}: {_tail(log_path)}")
    finally:
        nats.stop()


def _tail(path: Path) -> str:
    return path.read_text(encoding="utf-8", errors="replace").strip()[-1500:]


def store_probe(store_url: str, timeline: int) -> Probe:
    """Segments a `file://` or `gs://…?endpoint=` store holds (polled from outside ours)."""
    parts = urlsplit(store_url)
    if parts.scheme == "file":
        return directory_probe(Path(parts.path), timeline)
    if parts.scheme == "gs":
        endpoint = parse_qs(parts.query).get("endpoint", [""])[-1]
        if not endpoint:
            raise ValueError(f"{store_url}: the benchmark probes emulator buckets (endpoint=)")
        return bucket_probe(endpoint, parts.netloc, parts.path.strip("/"), timeline)
    raise ValueError(f"{store_url}: the benchmark probes file:// and gs:// stores only")


def drain_backlog_ours(
    backlog: Backlog, store_url: str, compression: Compression, system_id: int
) -> float:
    """Seconds from the first `archive_command` call until `store_url` durably holds all."""
    work = backlog.pgdata.parent
    pipeline = push_side(work, backlog.user, system_id, backlog.wal_dir)
    probe = store_probe(store_url, int(backlog.names[0][:8], 16))
    wanted = set(backlog.names)
    # Listing the single-threaded emulator competes with the uploads: look less often there.
    interval = 0.01 if store_url.startswith("file:") else 0.2
    with streaming(pipeline, work, archiver_settings(store_url, compression)):
        start = time.perf_counter()
        archive_backlog(backlog, pipeline.archive_command)
        done = wait_until(lambda: wanted <= probe(), 300, "Tidemark store", interval)
    return done - start


def lag_ours(
    cluster: BenchCluster,
    store_url: str,
    compression: Compression,
    system_id: int,
    settings: BenchSettings,
    work: Path,
) -> LagResult:
    """Lag from each `archive_command` call to the segment being durable in `store_url`."""
    pipeline = push_side(work, cluster.user, system_id, cluster.data_dir / "pg_wal")
    with streaming(pipeline, work, archiver_settings(store_url, compression)):
        return measure_lag(
            cluster,
            pipeline.archive_command,
            lambda timeline: store_probe(store_url, timeline),
            settings,
            work,
        )
