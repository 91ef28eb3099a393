"""barman-cloud (`barman-cloud-wal-archive`, current PyPI release) into the GCS emulator.

Debian's `barman-cli-cloud` (3.4) has no Google Cloud Storage support, so the PyPI package goes
into a virtualenv made with the system Python (which the database user can execute) under the
benchmark cache, reused while its requirement line is unchanged. PostgreSQL runs
`barman-cloud-wal-archive --cloud-provider google-cloud-storage gs://<bucket>/barman bench %p`,
one process per segment, with `STORAGE_EMULATOR_HOST` set: that alone points the Google client at
the emulator, anonymously. Compression matches ours (`--zstd --compression-level`, or none).
"""

from __future__ import annotations

import shutil
import subprocess
import time
from pathlib import Path

from bench.archive.backlog import Backlog, archive_backlog, run_checked, wait_until
from bench.archive.emulator import BUCKET, Emulator
from bench.archive.outcome import PeerUnavailable
from bench.archive.probes import names_in
from bench.archive.settings import Compression
from services.engines.postgres.oscmd import OsCommandError, database_os_user, run_as, system_python

PREFIX = "barman"
SERVER = "bench"
_READY_MARK = ".tidemark-requirement"


def _requirement(compression: Compression) -> str:
    return "barman[google,zstandard]" if compression.kind == "zstd" else "barman[google]"


def ensure_barman_cloud(cache_dir: Path, compression: Compression) -> tuple[Path, str]:
    """`barman-cloud-wal-archive` in a venv on the system Python, and its version line."""
    venv = cache_dir / "barman-cloud-venv"
    tool = venv / "bin" / "barman-cloud-wal-archive"
    requirement = _requirement(compression)
    mark = venv / _READY_MARK
    if not (tool.exists() and mark.is_file() and mark.read_text() == requirement):
        try:
            python = system_python(database_os_user())
        except OsCommandError as exc:
            raise PeerUnavailable(f"barman-cloud needs a system Python: {exc}") from exc
        shutil.rmtree(venv, ignore_errors=True)
        try:
            run_checked([python, "-m", "venv", venv], f"{python} -m venv")
            run_checked(
                [venv / "bin" / "python", "-m", "pip", "install", "--quiet", requirement],
                f"pip install {requirement!r}",
            )
        except (OSError, RuntimeError, subprocess.TimeoutExpired) as exc:
            raise PeerUnavailable(f"barman-cloud could not be installed: {exc}") from exc
        mark.write_text(requirement)
    user = database_os_user()
    done = run_as(user, [tool, "--version"], cwd="/", timeout=120)
    if done.returncode != 0:
        raise PeerUnavailable(
            f"{tool} does not run as OS user {user.name!r}: {(done.stderr or done.stdout).strip()}"
        )
    return tool, (done.stdout or done.stderr).strip()


class BarmanCloud:
    """One drain of a backlog into the emulator's bucket; `drain` is the timed part."""

    def __init__(
        self, tool: Path, backlog: Backlog, emulator: Emulator, compression: Compression
    ) -> None:
        self.backlog = backlog
        self.emulator = emulator
        compress = (
            "" if compression.kind == "none" else f"--zstd --compression-level {compression.level} "
        )
        self.archive_command = (
            f"{tool} --cloud-provider google-cloud-storage {compress}"
            f"gs://{BUCKET}/{PREFIX} {SERVER} %p"
        )
        self.env = {"STORAGE_EMULATOR_HOST": emulator.endpoint}

    def archived(self) -> set[str]:
        keys = self.emulator.object_sizes(f"{PREFIX}/{SERVER}/wals/")
        return names_in(keys, int(self.backlog.names[0][:8], 16))

    def drain(self) -> float:
        """Push the backlog; seconds from the first call until the bucket holds it all."""
        wanted = set(self.backlog.names)
        start = time.perf_counter()
        archive_backlog(self.backlog, self.archive_command, self.env)
        done = wait_until(lambda: wanted <= self.archived(), 120, "barman-cloud bucket", 0.2)
        return done - start
