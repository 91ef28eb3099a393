"""The cluster a restore works on, as its OS user: start, stop, query, and what its server
binaries say (the ``prepare`` phase's checks run through it; see ``restore.py``).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import time
from dataclasses import dataclass
from pathlib import Path

from services.engines.base import EngineError
from services.engines.postgres import walfetch
from services.engines.postgres.oscmd import (
    OsCommandError,
    OsUser,
    chown_to,
    database_os_user,
    pg_bindir,
    run_as,
    user_env,
)
from services.engines.settings import PostgresInstance

__all__ = ["POLL_S", "START_GRACE_S", "Instance", "server_major"]

POLL_S = 0.2
START_GRACE_S = 30.0
"""How long a just-started server may take to write ``postmaster.pid``."""


def _fail(reason: str, *, retryable: bool = False, code: str | None = None) -> EngineError:
    # Every phase of a restore fails through this one: a server's FATAL line can be long, and
    # an event carries at most 2000 characters of reason.
    return EngineError.of(reason[:2000], retryable=retryable, code=code)


# -- the instance being restored ------------------------------------------------------------------


@dataclass
class Instance:
    """A cluster this module starts, stops and queries, as its OS user."""

    data_dir: Path
    port: int
    socket_dir: Path
    user: OsUser
    bindir: Path
    dbname: str = "postgres"
    password_file: Path | None = None
    log_file: Path | None = None
    pid: int | None = None

    @classmethod
    def of(cls, pg: PostgresInstance) -> Instance:
        try:
            user = database_os_user(pg.os_user)
            bindir = pg.bin_dir if pg.bin_dir is not None else pg_bindir()
        except OsCommandError as exc:
            raise _fail(str(exc)) from exc
        return cls(
            data_dir=pg.data_dir,
            port=pg.port,
            socket_dir=pg.socket_dir,
            user=user,
            bindir=bindir,
            dbname=pg.dbname,
            password_file=pg.password_file,
        )

    def _env(self) -> dict[str, str]:
        extra: dict[str, str] = {}
        if self.password_file is not None:
            # A reference, in libpq's own .pgpass format (as the backup reads it): the password
            # itself never enters an environment that pg_ctl would hand on to the server.
            extra["PGPASSFILE"] = os.fspath(self.password_file)
        debug = os.environ.get(walfetch.DEBUG_ENV)
        if debug:  # the server's restore_command inherits it: wal-fetch's timings in its log
            extra[walfetch.DEBUG_ENV] = debug
        return user_env(self.user, extra)

    async def run(self, *argv: str | os.PathLike[str], timeout: float = 120.0) -> tuple[int, str]:
        """Run a PostgreSQL tool as the OS user; ``(exit status, stdout + stderr)``."""
        cwd = self.data_dir if self.data_dir.is_dir() else Path("/")
        done = await asyncio.to_thread(
            run_as, self.user, argv, cwd=cwd, env=self._env(), timeout=timeout
        )
        return done.returncode, (done.stdout + done.stderr).strip()

    async def pg_ctl(
        self, *args: str | os.PathLike[str], timeout: float = 180.0
    ) -> tuple[int, str]:
        return await self.run(self.bindir / "pg_ctl", "-D", self.data_dir, *args, timeout=timeout)

    async def psql(self, sql: str, timeout: float = 60.0) -> tuple[int, str]:
        """One statement through ``psql -X -A -t``; rows one per line, columns ``|``-separated."""
        return await self.run(
            self.bindir / "psql",
            "-X",
            "-A",
            "-t",
            "-q",
            "-v",
            "ON_ERROR_STOP=1",
            "-h",
            self.socket_dir,
            "-p",
            str(self.port),
            "-d",
            self.dbname,
            "-c",
            sql,
            timeout=timeout,
        )

    async def query(self, sql: str) -> str:
        code, out = await self.psql(sql)
        if code != 0:
            raise _fail(f"query {sql!r} failed on the restored cluster: {out}")
        return out

    async def is_running(self) -> bool:
        code, _ = await self.pg_ctl("status")
        return code == 0

    async def start(self, log_file: Path) -> None:
        """``pg_ctl start`` without waiting (recovery may take hours); :meth:`alive` follows it.

        A second start of the same instance (recovery started again after a FATAL) first waits
        for the previous postmaster to be gone, and follows the new one, not the old pid."""
        deadline = time.monotonic() + START_GRACE_S
        while self.alive():
            if time.monotonic() > deadline:
                raise _fail(f"PostgreSQL (pid {self.pid}) is still running; cannot start it again")
            await asyncio.sleep(0.05)
        self.pid = None
        self.log_file = log_file
        if not log_file.parent.exists():
            log_file.parent.mkdir(mode=0o700, parents=True)
            chown_to(log_file.parent, self.user)
        pid_file = self.data_dir / "postmaster.pid"
        code, out = await self.pg_ctl("start", "-W", "-s", "-l", log_file)
        if code != 0:
            raise _fail(f"pg_ctl start failed: {out} {self.log_tail()}")
        deadline = time.monotonic() + START_GRACE_S
        while self.pid is None:
            with contextlib.suppress(FileNotFoundError, ValueError, IndexError):
                self.pid = int(pid_file.read_text().splitlines()[0])
            if self.pid is not None:
                break
            if time.monotonic() > deadline or self.fatal_line():
                raise _fail(f"PostgreSQL did not start: {self.failure_reason()}")
            await asyncio.sleep(0.05)

    def alive(self) -> bool:
        """The postmaster started by :meth:`start` still runs (a zombie does not count)."""
        if self.pid is None:
            return False
        _reap(self.pid)
        try:
            stat = Path(f"/proc/{self.pid}/stat").read_text()
        except (FileNotFoundError, ProcessLookupError):
            return False
        return stat.rpartition(")")[2].split()[0] not in {"Z", "X"}

    async def stop(self, mode: str = "fast") -> None:
        if not (await self.is_running()):
            return
        code, out = await self.pg_ctl("stop", "-w", "-t", "300", "-m", mode, timeout=330)
        if code != 0 and await self.is_running():
            raise _fail(f"pg_ctl stop -m {mode} failed: {out}", retryable=True)
        if self.pid is not None:
            _reap(self.pid)

    def log_tail(self, lines: int = 20) -> str:
        if self.log_file is None:
            return ""
        try:
            text = self.log_file.read_text(encoding="utf-8", errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def fatal_line(self) -> str | None:
        """The first FATAL or PANIC message in this start's server log, without its prefix."""
        if self.log_file is None:
            return None
        try:
            text = self.log_file.read_text(encoding="utf-8", errors="replace")
        except OSError:
            return None
        for line in text.splitlines():
            match = _FATAL.search(line)
            # Our own polling connections are refused with FATALs while the server starts:
            # those say nothing about why it stopped.
            if match and not _REFUSED_CONNECTION.search(match[2]):
                return f"{match[1]}: {match[2].strip()}"
        return None

    def failure_reason(self) -> str:
        fatal = self.fatal_line()
        if fatal:
            return f"PostgreSQL {fatal}"
        return f"the server exited; last log lines: {self.log_tail(8)}"


_FATAL = re.compile(r"\b(FATAL|PANIC):\s+(.*)$")
_REFUSED_CONNECTION = re.compile(
    r"the database system is (starting up|not yet accepting connections|shutting down|"
    r"in recovery mode|not accepting connections)"
)


def _reap(pid: int) -> None:
    """Collect ``pid``'s exit status if it is our child, so it does not linger as a zombie."""
    with contextlib.suppress(ChildProcessError, OSError):
        os.waitpid(pid, os.WNOHANG)


async def server_major(bindir: Path, user: OsUser) -> int:
    done = await asyncio.to_thread(run_as, user, [bindir / "postgres", "-V"], cwd="/")
    match = re.search(r"\(PostgreSQL\) (\d+)", done.stdout)
    if done.returncode != 0 or match is None:
        raise _fail(f"cannot tell the server version of {bindir}: {done.stdout}{done.stderr}")
    return int(match[1])
