"""A backlog of ready segments, and the loop PostgreSQL's archiver runs over it.

Each contender drains its own fresh copy of the backlog: a minimal PGDATA owned by the database
user, holding what archivers look at (`PG_VERSION`, `global/pg_control`, the segments in
`pg_wal/` and its `archive_status/` directory), staged and synced to disk before the clock starts.

`archive_backlog` then does what PostgreSQL's archiver process does. With the clock running it
marks every segment `.ready` (as PostgreSQL has them when its archiver wakes up; an archiver
that is already running, like ours, thus cannot start on the backlog before the clock does),
then for each segment, oldest first, one at a time, runs `archive_command` through `/bin/sh -c`
as the database user with the data directory as working directory, `%p` replaced by
`pg_wal/<name>` and `%f` by `<name>`; on exit 0 it renames `.ready` to `.done`, otherwise it
stops (PostgreSQL would retry; a benchmark reports). Asynchronous archivers (pgBackRest
`archive-async`, ours reading ahead) read the other `.ready` files and work ahead, exactly as
they would under PostgreSQL.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from bench.archive.segments import Corpus, SegmentSet
from services.engines.postgres.oscmd import OsUser, chown_to, database_os_user, run_as, user_env


class ArchiveCommandFailed(RuntimeError):
    """`archive_command` exited non-zero: the contender could not archive a segment."""


@dataclass
class Backlog:
    pgdata: Path
    names: tuple[str, ...]
    total_bytes: int
    user: OsUser
    calls: list[tuple[str, float, float]] = field(default_factory=list)
    """(segment, start, end) of every archive_command call, `time.time()` seconds."""

    @property
    def wal_dir(self) -> Path:
        return self.pgdata / "pg_wal"

    @property
    def mib(self) -> float:
        return self.total_bytes / (1024 * 1024)


def stage_backlog(corpus: Corpus, segments: SegmentSet, work: Path) -> Backlog:
    """Copy `segments` into a fresh PGDATA under `work` (a new directory), not yet marked ready
    (`archive_backlog` marks them when the clock starts)."""
    user = database_os_user()
    pgdata = work / "pgdata"
    status = pgdata / "pg_wal" / "archive_status"
    status.mkdir(parents=True)
    (pgdata / "global").mkdir()
    shutil.copyfile(corpus.pg_version, pgdata / "PG_VERSION")
    shutil.copyfile(corpus.pg_control, pgdata / "global" / "pg_control")
    for path in segments.paths:
        shutil.copyfile(path, pgdata / "pg_wal" / path.name)
    for directory, _, files in os.walk(pgdata):
        chown_to(directory, user)
        os.chmod(directory, 0o700)
        for name in files:
            chown_to(os.path.join(directory, name), user)
            os.chmod(os.path.join(directory, name), 0o600)
    # Dirty pages still being written back would bill the staging to whoever runs first.
    os.sync()
    names = tuple(p.name for p in segments.paths)
    return Backlog(pgdata, names, segments.total_bytes, user)


def archive_backlog(
    backlog: Backlog, archive_command: str, env: Mapping[str, str] | None = None
) -> None:
    """Mark every segment ready, then run `archive_command` for each, in order, as PostgreSQL
    would. Call it with the clock running."""
    sh_env = user_env(backlog.user, env)
    status = backlog.wal_dir / "archive_status"
    for name in backlog.names:
        marker = status / f"{name}.ready"
        marker.touch(mode=0o600)
        chown_to(marker, backlog.user)
    for name in backlog.names:
        command = archive_command.replace("%p", f"pg_wal/{name}").replace("%f", name)
        start = time.time()
        done = run_as(
            backlog.user, ["/bin/sh", "-c", command], cwd=backlog.pgdata, env=sh_env, timeout=600
        )
        end = time.time()
        if done.returncode != 0:
            raise ArchiveCommandFailed(
                f"archive_command for {name} exited {done.returncode}: "
                f"{(done.stderr or done.stdout).strip()[-1500:]}"
            )
        backlog.calls.append((name, start, end))
        (status / f"{name}.ready").rename(status / f"{name}.done")


def wait_until(
    predicate: Callable[[], bool], timeout: float, what: str, interval: float = 0.01
) -> float:
    """Poll `predicate()` until true; `TimeoutError` naming `what` after `timeout` seconds.

    Returns the `time.perf_counter()` at which the successful probe *started*: what it found was
    already true then, so a slow probe (listing a bucket) is not billed to the contender.
    """
    deadline = time.monotonic() + timeout
    while True:
        probed_at = time.perf_counter()
        if predicate():
            return probed_at
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what}: not done after {timeout:.0f}s")
        time.sleep(interval)


def fresh_dir(parent: Path, name: str, user: OsUser | None = None) -> Path:
    """A new empty directory `parent/name` (0700), given to `user` if named."""
    path = parent / name
    path.mkdir(mode=0o700)
    if user is not None:
        chown_to(path, user)
    return path


def run_checked(
    argv: Sequence[str | os.PathLike[str]],
    what: str,
    *,
    env: Mapping[str, str] | None = None,
    timeout: float = 1800,
) -> str:
    """Run a setup command as ourselves; its stdout, or `RuntimeError` with its stderr."""
    done = subprocess.run(
        [os.fspath(a) for a in argv],
        capture_output=True,
        text=True,
        check=False,
        env=dict(env) if env is not None else None,
        timeout=timeout,
    )
    if done.returncode != 0:
        output = (done.stderr or done.stdout).strip()[-1500:]
        raise RuntimeError(f"{what} failed (exit {done.returncode}): {output}")
    return done.stdout
