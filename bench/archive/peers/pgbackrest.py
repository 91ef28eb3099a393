"""pgBackRest, in its best configuration on this machine, with a posix repository; shared by the
archive benchmark (`archive-push`) and the restore benchmark (`backup`, `restore`, `archive-get`).

Installed from the distribution when missing (`apt-get install -y pgbackrest`, 2.45 on Debian
bookworm). Everything it touches is in the run's scratch directory: a bench-only config file
(always passed with `--config`, with an empty `--config-include-path`, so the package's
system-wide `/etc/pgbackrest*` is never read), the repository, spool, lock and log paths.

Configuration common to both: `archive-async=y` (pushes and gets ahead of PostgreSQL's calls),
`process-max=2` (one per core), no `archive-push-queue-max` (it would drop WAL, never what a
benchmark of durability wants); each benchmark adds its compression (`compress_options`: the
archive benchmark's matches ours; the restore benchmark's is `lz4`). PostgreSQL calls
`archive-push %p` once per segment; the first call starts the asynchronous process, which pushes
every `.ready` segment ahead with two workers while each later call only waits for its segment
to be acknowledged.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import subprocess
import time
from collections.abc import Mapping
from pathlib import Path

from bench.archive.backlog import Backlog, archive_backlog, fresh_dir, run_checked, wait_until
from bench.archive.outcome import PeerUnavailable
from bench.archive.probes import Probe, directory_probe
from bench.archive.settings import Compression
from services.engines.postgres.oscmd import OsUser, run_as, user_env

STANZA = "bench"
PROCESS_MAX = 2


def ensure_pgbackrest() -> tuple[Path, str]:
    """The pgbackrest binary and its version line, installing the package when missing."""
    found = shutil.which("pgbackrest") or shutil.which("pgbackrest", path="/usr/bin:/usr/sbin")
    if found is None:
        if os.geteuid() != 0:
            raise PeerUnavailable("pgbackrest is not installed and we are not root to apt-get it")
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        try:
            run_checked(["apt-get", "update"], "apt-get update", env=env)
            run_checked(["apt-get", "install", "-y", "pgbackrest"], "apt-get install", env=env)
        except (OSError, RuntimeError, subprocess.TimeoutExpired) as exc:
            raise PeerUnavailable(f"pgbackrest could not be installed: {exc}") from exc
        found = shutil.which("pgbackrest", path="/usr/bin:/usr/sbin")
        if found is None:
            raise PeerUnavailable("apt-get installed pgbackrest but no pgbackrest binary appeared")
    version = run_checked([found, "version"], "pgbackrest version").strip()
    return Path(found), version


def compress_options(compression: Compression) -> dict[str, str]:
    """pgBackRest's words for the archive benchmark's compression (`zst` at our level)."""
    if compression.kind == "none":
        return {"compress-type": "none"}
    return {"compress-type": "zst", "compress-level": str(compression.level)}


def supports_zstd(binary: Path) -> bool:
    """Whether this build links libzstd (`compress-type=zst` exists only if it does)."""
    try:
        linked = run_checked(["ldd", binary], "ldd pgbackrest")
    except (OSError, RuntimeError):
        return False
    return "libzstd" in linked


class PgBackRest:
    """One repository, stanza and config; `drain` is the archive benchmark's timed part."""

    def __init__(
        self,
        binary: Path,
        work: Path,
        pgdata: Path,
        user: OsUser,
        settings: Mapping[str, str],
        *,
        stanza_settings: Mapping[str, str] | None = None,
    ) -> None:
        """Write the config and create the stanza (offline: from `pgdata/global/pg_control`).

        `settings` go to `[global]` on top of the common ones (`compress_options(...)` at least);
        `stanza_settings` to the stanza, after `pg1-path` (e.g. `pg1-socket-path`, `pg1-port`
        for a backup of a running cluster)."""
        self.binary = binary
        self.pgdata = pgdata
        self.user = user
        self.repo = fresh_dir(work, "repo", user)
        self.spool = fresh_dir(work, "spool", user)
        self.lock = fresh_dir(work, "lock", user)
        self.logs = fresh_dir(work, "log", user)
        self.include = fresh_dir(work, "conf.d")
        self.include.chmod(0o755)  # the database user lists it (and finds nothing)
        self.config = work / "pgbackrest.conf"
        common = {
            "repo1-type": "posix",
            "repo1-path": str(self.repo),
            "spool-path": str(self.spool),
            "lock-path": str(self.lock),
            "log-path": str(self.logs),
            "log-level-console": "warn",
            "log-level-file": "warn",
            "archive-async": "y",
            "process-max": str(PROCESS_MAX),
            "archive-timeout": "120",
        }
        stanza = {"pg1-path": str(pgdata), **(stanza_settings or {})}
        self.config.write_text(
            "[global]\n"
            + "".join(f"{name}={value}\n" for name, value in {**common, **settings}.items())
            + f"\n[{STANZA}]\n"
            + "".join(f"{name}={value}\n" for name, value in stanza.items()),
            encoding="utf-8",
        )
        self.config.chmod(0o644)
        self.run("stanza-create", "--no-online")

    @property
    def options(self) -> str:
        return f"--config={self.config} --config-include-path={self.include} --stanza={STANZA}"

    @property
    def archive_command(self) -> str:
        return f"{self.binary} {self.options} archive-push %p"

    def run(self, *args: str, timeout: float = 300) -> None:
        """`pgbackrest <options> <args>` as the database user; `RuntimeError` on failure."""
        argv = [str(self.binary), *self.options.split(), *args]
        done = run_as(self.user, argv, cwd=self.pgdata, env=user_env(self.user), timeout=timeout)
        if done.returncode != 0:
            raise RuntimeError(
                f"pgbackrest {' '.join(args)} failed (exit {done.returncode}): "
                f"{(done.stderr or done.stdout).strip()[-1500:]}"
            )

    def probe(self, timeline: int) -> Probe:
        """Segment names the repository holds (`<wal>-<sha1>[.zst]` under `archive/<stanza>`)."""
        return directory_probe(self.repo / "archive" / STANZA, timeline)

    def drain(self, backlog: Backlog) -> float:
        """Push the backlog; seconds from the first call until the repository holds it all."""
        wanted = set(backlog.names)
        archived = self.probe(int(backlog.names[0][:8], 16))
        start = time.perf_counter()
        archive_backlog(backlog, self.archive_command)
        done = wait_until(lambda: wanted <= archived(), 120, "pgBackRest repository")
        elapsed = done - start
        self.wait_idle()
        return elapsed

    def wait_idle(self, timeout: float = 60) -> None:
        """Until the asynchronous process has let go of its locks (so its files can go)."""
        deadline = time.monotonic() + timeout
        for lock_file in self.lock.glob("*.lock"):
            while time.monotonic() < deadline:
                with contextlib.suppress(FileNotFoundError), lock_file.open("a") as handle:
                    try:
                        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    except BlockingIOError:
                        time.sleep(0.05)
                        continue
                    fcntl.flock(handle, fcntl.LOCK_UN)
                break
