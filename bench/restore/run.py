"""`python -m bench restore`: one database, both archives, both restores, then the report.

    load ─▶ archive to both ─▶ our base backup ─▶ pgBackRest full backup ─▶ WAL ─▶ switch, wait
    until both archives hold it ─▶ stop the source ─▶ [timed] ours into a clone, counted ─▶
    [timed] pgbackrest restore, started, promoted, counted

Everything lives in one directory under `TIDEMARK_BENCH_RESTORE_WORK`, removed at the end. The
two restores run one after the other with nothing else of the benchmark running (the source,
the archiver and the other restored cluster are stopped), from the same disk, after a `sync`.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from bench.archive.cluster import BenchCluster
from bench.archive.ours import push_side, store_probe, streaming
from bench.archive.outcome import PeerUnavailable
from bench.archive.peers.pgbackrest import PgBackRest, ensure_pgbackrest
from bench.restore import ours, theirs
from bench.restore.settings import RestoreBenchSettings, load_settings
from bench.restore.source import (
    LOAD_SETTINGS,
    MIB,
    SERVER_SETTINGS,
    TABLE,
    Closed,
    Generated,
    Loaded,
    archive_both,
    close_wal,
    generate_wal,
    load_table,
    wait_archived,
)
from schemas.messages.restores import RestorePlan
from services.engines.base import BackupOutcome

COUNT_SQL = f"SELECT count(*) FROM {TABLE}"  # noqa: S608 - a constant


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def tree_mib(root: Path) -> float:
    """Bytes of the files under `root`, in MiB (what an archive holds on disk)."""
    total = 0
    for directory, _, files in os.walk(root):
        for name in files:
            total += os.path.getsize(os.path.join(directory, name))
    return total / MIB


@dataclass
class Report:
    settings: RestoreBenchSettings
    loaded: Loaded | None = None
    generated: Generated | None = None
    closed: Closed | None = None
    ours_backup_s: float = 0.0
    ours_backup_mib: float = 0.0
    ours_wal_mib: float = 0.0
    theirs_backup_s: float = 0.0
    theirs_backup_mib: float = 0.0
    theirs_wal_mib: float = 0.0
    expected_rows: int = 0
    load_before: dict[str, float] = field(default_factory=dict)
    """The 1-minute load average just before each restore (other work on the machine)."""
    pgbackrest: str = ""
    """Its version, or why it could not be run."""
    ours_restore: ours.OursTimed | None = None
    theirs_restore: theirs.TheirsTimed | None = None


class Bench:
    def __init__(self, settings: RestoreBenchSettings, work: Path) -> None:
        self.settings = settings
        self.work = work
        self.report = Report(settings)
        self.source = BenchCluster(work / "source")
        self.ours_dir = work / "ours"
        self.store_url = f"file://{self.ours_dir}/store"
        self.peer: PgBackRest | None = None
        self.system_id = 0

    def run(self) -> Report:
        binary: Path | None = None
        try:
            binary, self.report.pgbackrest = ensure_pgbackrest()
        except PeerUnavailable as exc:
            self.report.pgbackrest = f"not available ({exc})"
            log(f"pgbackrest: {self.report.pgbackrest}")
        base = self.prepare(binary)
        self.time_ours(base)
        if self.peer is not None:
            self.time_theirs(self.peer)
        return self.report

    # -- untimed: the database, both archives, both backups ----------------------------------

    def prepare(self, binary: Path | None) -> RestorePlan:
        settings, report, source = self.settings, self.report, self.source
        log(f"loading {settings.data_mib} MiB into {TABLE} (wal_level=minimal, no archiving)")
        source.initdb()
        source.start(LOAD_SETTINGS)
        try:
            report.loaded = load_table(source, settings.data_mib)
            self.system_id = int(source.system_identifier())
        finally:
            source.stop()
        self.ours_dir.mkdir(mode=0o755)
        pipeline = push_side(self.ours_dir, source.user, self.system_id, source.data_dir / "pg_wal")
        if binary is not None:
            self.peer = theirs.make_peer(binary, self.work / "pgbackrest", source)
        command = archive_both(
            pipeline.archive_command, self.peer.archive_command if self.peer else None
        )
        archiver = ours.archiver_settings(self.store_url, settings.compression)
        with streaming(pipeline, self.ours_dir, archiver):
            source.start({**SERVER_SETTINGS, "archive_mode": True, "archive_command": command})
            try:
                base = self.backups_and_wal()
            finally:
                source.stop()
        if self.peer is not None:
            self.peer.wait_idle()
            report.theirs_backup_mib = tree_mib(self.peer.repo / "backup")
            report.theirs_wal_mib = tree_mib(self.peer.repo / "archive")
        report.ours_wal_mib = (
            tree_mib(self.ours_dir / "store" / ours.PREFIX) - report.ours_backup_mib
        )
        return asyncio.run(ours.restore_plan(self.store_url, base))

    def backups_and_wal(self) -> BackupOutcome:
        settings, report, source = self.settings, self.report, self.source
        db = ours.hosted_database(source, self.system_id)
        log("our base backup (PostgresEngine.backup)")
        start = time.perf_counter()
        base = asyncio.run(ours.take_base_backup(db, self.store_url, settings.compression))
        report.ours_backup_s = time.perf_counter() - start
        report.ours_backup_mib = base.size_bytes / MIB
        if self.peer is not None:
            log("pgbackrest backup --type=full")
            report.theirs_backup_s = theirs.take_backup(self.peer)
        assert report.loaded is not None
        log(f"writing {settings.wal_mib} MiB of WAL")
        report.generated = generate_wal(source, settings.wal_mib, report.loaded.rows, log)
        report.closed = close_wal(source)
        probes: dict[str, Callable[[], set[str]]] = {"our store": store_probe(self.store_url, 1)}
        if self.peer is not None:
            probes["pgBackRest's repository"] = self.peer.probe(1)
        log(f"waiting until both archives hold {report.closed.last_segment}")
        wait_archived(source, report.closed.last_segment, probes)
        report.expected_rows = report.loaded.rows + report.generated.inserted
        rows = int(source.psql(COUNT_SQL))
        if rows != report.expected_rows:
            raise RuntimeError(f"the source holds {rows} rows, {report.expected_rows} written")
        return base

    # -- timed: the restores -----------------------------------------------------------------

    def quiesce(self, before: str) -> None:
        # Dirty pages still being written back would bill the preparation to a restore.
        os.sync()
        self.report.load_before[before] = os.getloadavg()[0]

    def time_ours(self, plan: RestorePlan) -> None:
        assert self.report.closed is not None
        target = self.work / "ours-restore"
        target.mkdir(mode=0o755)
        data_dir = target / "data"
        db = ours.hosted_database(self.source, self.system_id)
        self.quiesce("ours")
        log("timed: our restore (clone)")
        try:
            timed = asyncio.run(
                ours.timed_restore(
                    self.source,
                    db,
                    plan,
                    store_url=self.store_url,
                    target_lsn=self.report.closed.target_lsn,
                    data_dir=data_dir,
                    port=free_port(),
                    count_sql=COUNT_SQL,
                )
            )
        finally:
            ours.stop_clone(self.source, data_dir)
            shutil.rmtree(target, ignore_errors=True)
        if timed.rows != self.report.expected_rows:
            raise RuntimeError(
                f"our restored cluster counts {timed.rows} rows in {TABLE}, "
                f"{self.report.expected_rows} were written"
            )
        self.report.ours_restore = timed
        log(f"  ours: {timed.seconds:.2f} s")

    def time_theirs(self, peer: PgBackRest) -> None:
        self.quiesce("pgBackRest")
        log("timed: pgbackrest restore (latest)")
        target = self.work / "pgbackrest-restore"
        try:
            timed = theirs.timed_restore(peer, target, SERVER_SETTINGS, COUNT_SQL)
        finally:
            shutil.rmtree(target, ignore_errors=True)
        if timed.rows != self.report.expected_rows:
            raise RuntimeError(
                f"pgBackRest's restored cluster counts {timed.rows} rows in {TABLE}, "
                f"{self.report.expected_rows} were written"
            )
        self.report.theirs_restore = timed
        log(f"  pgBackRest: {timed.seconds:.2f} s")


def _ratio(ours_s: float, theirs_s: float | None) -> str:
    return "n/a" if theirs_s is None else f"{ours_s / theirs_s:.3f}"


def print_report(report: Report) -> None:
    """`measured …` lines, the target, then the figures, `name=value`, the issue's three last."""
    settings = report.settings
    assert report.loaded is not None
    assert report.generated is not None
    assert report.closed is not None
    assert report.ours_restore is not None
    loaded, generated, closed, mine = (
        report.loaded,
        report.generated,
        report.closed,
        report.ours_restore,
    )
    out: list[str] = [
        f"measured data: {TABLE} {loaded.heap_bytes / MIB:.0f} MiB heap, "
        f"{loaded.total_bytes / MIB:.0f} MiB with its index, {loaded.rows} rows at the backups",
        f"measured backups: ours {report.ours_backup_mib:.0f} MiB stored "
        f"({settings.compression}) in {report.ours_backup_s:.1f} s"
        + (
            f"; pgBackRest full {report.theirs_backup_mib:.0f} MiB (lz4) "
            f"in {report.theirs_backup_s:.1f} s"
            if report.theirs_restore is not None
            else ""
        ),
        f"measured wal: {generated.wal_bytes / MIB:.0f} MiB written after both backups, "
        f"{generated.inserted} rows inserted, up to {closed.last_segment}; archived: ours "
        f"{report.ours_wal_mib:.0f} MiB ({settings.compression})"
        + (f", pgBackRest {report.theirs_wal_mib:.0f} MiB (lz4)" if report.theirs_restore else ""),
        f"measured machine: {os.cpu_count()} cores; load average before "
        + ", ".join(f"{name} {load:.2f}" for name, load in report.load_before.items())
        + " (one run; other work may share the machine)",
        "measured ours: "
        + ", ".join(f"{name} {seconds:.2f} s" for name, seconds in mine.phases.items())
        + f", count {mine.count_seconds:.2f} s = {mine.seconds:.2f} s; reached {mine.reached} "
        f"on timeline {mine.timeline}, {mine.rows} rows; {mine.cpu_seconds:.1f} CPU s in the "
        "restoring process",
        f"measured ours wal_fetch: {mine.stats.served} files served, "
        f"{mine.stats.fetched_bytes / MIB:.0f} MiB fetched at {mine.stats.fetch_mib_s:.1f} MiB/s "
        f"while fetching, {mine.stats.prefetch_hits} prefetch hits, "
        f"{mine.stats.served_bytes / MIB / max(mine.stats.serve_seconds, 1e-9):.1f} MiB/s "
        f"consumed by recovery; {mine.stats.taken} taken from the cache by restore_command's mv, "
        f"{mine.stats.handed_over} handed over to wal-fetch by rename; answering took "
        f"{mine.stats.answer_seconds:.2f} s in all, {mine.stats.waited_seconds:.2f} s of it "
        "waiting for downloads",
    ]
    theirs_s: float | None = None
    if report.theirs_restore is not None:
        their = report.theirs_restore
        theirs_s = their.seconds
        out.append(
            f"measured pgbackrest: restore {their.restore_seconds:.2f} s, start "
            f"{their.start_seconds:.2f} s, recovery {their.recovery_seconds:.2f} s, count "
            f"{their.count_seconds:.2f} s = {their.seconds:.2f} s; {their.rows} rows "
            f"({report.pgbackrest})"
        )
    else:
        out.append(f"pgbackrest: {report.pgbackrest}")
    ratio = _ratio(mine.seconds, theirs_s)
    if theirs_s is not None:
        met = "met" if mine.seconds <= theirs_s else "NOT met"
        out.append(f"target restore_ratio_vs_pgbackrest <= 1.0 {met}")
    out += [
        f"pgbackrest_restore_s={'n/a' if theirs_s is None else f'{theirs_s:.2f}'}",
        f"restore_s={mine.seconds:.2f}",
        f"restore_ratio_vs_pgbackrest={ratio}",
        f"wal_fetch_mib_s={mine.stats.fetch_mib_s:.1f}",
    ]
    print("\n".join(out), flush=True)


def main(argv: list[str] | None = None) -> int:
    """Run the restore benchmark (configured by `TIDEMARK_BENCH_RESTORE_*`, not arguments)."""
    if argv:
        log(f"python -m bench restore takes no arguments (got {' '.join(argv)}); see docs")
        return 2
    settings = load_settings()
    log(
        f"restore benchmark: {settings.data_mib} MiB of data, {settings.wal_mib} MiB of WAL, "
        f"ours compressed {settings.compression}"
    )
    settings.work_dir.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="tidemark-bench-restore-", dir=settings.work_dir))
    work.chmod(0o755)  # the database user traverses it to its clusters, spool and repository
    try:
        report = Bench(settings, work).run()
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print_report(report)
    return 0
