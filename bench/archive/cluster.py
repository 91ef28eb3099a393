"""A PostgreSQL cluster the benchmark keeps between runs (it produced the cached segments).

Unlike the test fixture's throwaway clusters, this one lives in the benchmark cache and is reused:
its `global/pg_control` is what pgBackRest checks the cached segments against, and its pgbench
tables feed the lag measurement. The postmaster is started directly as our child (not through
`pg_ctl`), so we reap it ourselves whatever PID 1 does. It listens on its unix socket only.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TypeVar

from services.engines.postgres.oscmd import (
    OsUser,
    chown_to,
    database_os_user,
    pg_bindir,
    run_as,
    user_env,
)

SettingValue = str | int | float | bool
T = TypeVar("T")
CONF_INCLUDE = "bench.conf"
SEGMENT_SIZE = 16 * 1024 * 1024
SUPERUSER = "postgres"


class ClusterError(RuntimeError):
    """A cluster operation failed; the message carries the command output or the log tail."""


def _conf_value(value: SettingValue) -> str:
    text = ("on" if value else "off") if isinstance(value, bool) else str(value)
    return "'" + text.replace("\\", "\\\\").replace("'", "''") + "'"


def _unused_port() -> int:
    # Only names the socket file (no TCP listener); unused so two benchmarks never share it.
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def parse_lsn(text: str) -> int:
    high, _, low = text.strip().partition("/")
    return (int(high, 16) << 32) | int(low, 16)


def wal_file_name(timeline: int, segno: int) -> str:
    """The WAL file name of segment number `segno` (16 MiB segments)."""
    per_log = 0x1_0000_0000 // SEGMENT_SIZE
    return f"{timeline:08X}{segno // per_log:08X}{segno % per_log:08X}"


def wal_segno(name: str) -> int:
    per_log = 0x1_0000_0000 // SEGMENT_SIZE
    return int(name[8:16], 16) * per_log + int(name[16:24], 16)


class BenchCluster:
    """One cluster in `base` (`base/data` is PGDATA), owned by the database OS user."""

    def __init__(self, base: Path, user: OsUser | None = None) -> None:
        self.base = base
        self.data_dir = base / "data"
        self.log_file = base / "server.log"
        self.user = user if user is not None else database_os_user()
        self.bindir = pg_bindir([*("initdb", "postgres", "psql", "pgbench")])
        self.port = _unused_port()
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def exists(self) -> bool:
        return (self.data_dir / "PG_VERSION").is_file()

    def initdb(self) -> None:
        self.base.mkdir(parents=True, exist_ok=True)
        self.base.chmod(0o700)
        chown_to(self.base, self.user)
        done = self.run(
            [
                self.bindir / "initdb",
                "--pgdata",
                self.data_dir,
                "--username",
                SUPERUSER,
                "--auth-local=trust",
                "--encoding=UTF8",
                "--locale=C",
                "--data-checksums",
                "--no-sync",
            ]
        )
        if done.returncode != 0:
            raise ClusterError(f"initdb failed (exit {done.returncode}):\n{done.stderr}")
        with (self.data_dir / "postgresql.conf").open("a", encoding="utf-8") as conf:
            conf.write(f"\ninclude = '{CONF_INCLUDE}'\n")

    def user_dir(self, name: str) -> Path:
        """`base/<name>`, owned by the database user: somewhere the server may write."""
        path = self.base / name
        path.mkdir(mode=0o700, exist_ok=True)
        chown_to(path, self.user)
        return path

    # -- running commands -----------------------------------------------------------------------

    def env(self, extra: Mapping[str, str] | None = None) -> dict[str, str]:
        return user_env(
            self.user,
            {
                "PGHOST": str(self.base),
                "PGPORT": str(self.port),
                "PGUSER": SUPERUSER,
                **(extra or {}),
            },
        )

    def run(
        self, argv: Sequence[str | os.PathLike[str]], *, timeout: float | None = 3600
    ) -> subprocess.CompletedProcess[str]:
        return run_as(self.user, argv, cwd=self.base, env=self.env(), timeout=timeout)

    def psql(self, sql: str, *, dbname: str = "postgres") -> str:
        argv: list[str | os.PathLike[str]] = [self.bindir / "psql", "-X", "-A", "-t", "-q"]
        argv += ["-v", "ON_ERROR_STOP=1", "-d", dbname, "-c", sql]
        done = self.run(argv)
        if done.returncode != 0:
            raise ClusterError(f"psql {sql[:120]!r} failed:\n{done.stderr}\n{self.log_tail()}")
        return done.stdout.strip()

    def pgbench(self, *args: str, dbname: str = "bench") -> None:
        done = self.run([self.bindir / "pgbench", *args, dbname])
        if done.returncode != 0:
            raise ClusterError(f"pgbench {' '.join(args)} failed:\n{done.stderr[-2000:]}")

    def pgbench_background(self, *args: str, dbname: str = "bench") -> subprocess.Popen[bytes]:
        """Start pgbench and return at once (the caller waits for it)."""
        return subprocess.Popen(
            [str(self.bindir / "pgbench"), *args, dbname],
            cwd=self.base,
            env=self.env(),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            user=self._switch_to(self.user.uid),
            group=self._switch_to(self.user.gid),
            extra_groups=self._switch_to(list(self.user.groups)),
        )

    def _switch_to(self, value: T) -> T | None:
        """`value` when we are root acting for another user; None (stay as we are) otherwise."""
        return value if os.geteuid() == 0 and not self.user.is_current else None

    def log_tail(self, lines: int = 30) -> str:
        with contextlib.suppress(FileNotFoundError):
            text = self.log_file.read_text(encoding="utf-8", errors="replace")
            return "\n".join(text.splitlines()[-lines:])
        return ""

    # -- lifecycle ------------------------------------------------------------------------------

    def start(self, settings: Mapping[str, SettingValue], timeout: float = 120.0) -> None:
        """Write `settings` (on top of socket-only defaults) and start the postmaster."""
        conf: dict[str, SettingValue] = {
            "listen_addresses": "",
            "port": self.port,
            "unix_socket_directories": str(self.base),
            "wal_level": "replica",
            "lc_messages": "C",
            "logging_collector": False,
            "log_line_prefix": "%m [%p] ",
            **settings,
        }
        text = "".join(f"{name} = {_conf_value(value)}\n" for name, value in conf.items())
        include = self.data_dir / CONF_INCLUDE
        include.write_text(text, encoding="utf-8")
        chown_to(include, self.user)
        log = self.log_file.open("ab")
        chown_to(self.log_file, self.user)
        try:
            self._process = subprocess.Popen(
                [str(self.bindir / "postgres"), "-D", str(self.data_dir)],
                cwd=self.base,
                env=self.env(),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # a Ctrl-C reaches us, and we stop it cleanly
                user=self._switch_to(self.user.uid),
                group=self._switch_to(self.user.gid),
                extra_groups=self._switch_to(list(self.user.groups)),
            )
        finally:
            log.close()
        deadline = time.monotonic() + timeout
        while True:
            if self._process.poll() is not None:
                self._process = None
                raise ClusterError(f"postgres exited while starting:\n{self.log_tail()}")
            done = self.run([self.bindir / "psql", "-X", "-A", "-t", "-c", "SELECT 1"], timeout=30)
            if done.returncode == 0:
                return
            if time.monotonic() > deadline:
                self.stop()
                raise ClusterError(f"postgres not ready after {timeout}s:\n{self.log_tail()}")
            time.sleep(0.2)

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def stop(self, timeout: float = 120.0) -> None:
        """Fast shutdown (SIGINT); SIGQUIT, then SIGKILL, if it does not finish in time."""
        process, self._process = self._process, None
        if process is None:
            return
        for sig, wait in ((signal.SIGINT, timeout), (signal.SIGQUIT, 10.0), (signal.SIGKILL, 10.0)):
            with contextlib.suppress(ProcessLookupError):
                process.send_signal(sig)
            try:
                process.wait(timeout=wait)
                return
            except subprocess.TimeoutExpired:
                continue

    # -- WAL positions --------------------------------------------------------------------------

    def timeline(self) -> int:
        return int(self.psql("SELECT timeline_id FROM pg_control_checkpoint()"))

    def system_identifier(self) -> str:
        return self.psql("SELECT system_identifier FROM pg_control_system()")

    def switch_segment(self) -> int:
        """Close the current segment after a checkpoint record; the LSN where the switch ended."""
        self.psql("CHECKPOINT")
        return parse_lsn(self.psql("SELECT pg_switch_wal()"))
