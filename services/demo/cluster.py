"""A local PostgreSQL cluster for the demo: made with `initdb`, run as the database OS user.

The demo protects a real cluster, so it needs one that belongs to nobody else: a fresh data
directory inside the demo's state directory, a free port, sockets in its own directory, and
archiving on from the first start (`archive_command` is set before the server ever runs, so no
segment is written that Tidemark does not see).
"""

from __future__ import annotations

import os
import socket
import time
from dataclasses import dataclass, field
from pathlib import Path

from services.engines.postgres.oscmd import (
    OsUser,
    check_traversable,
    chown_to,
    database_os_user,
    pg_bindir,
    run_as,
)


class ClusterError(RuntimeError):
    """initdb, pg_ctl or psql failed; the message carries what the tool said."""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@dataclass
class LocalCluster:
    """One cluster under `base`: the data in `base/data`, sockets and `server.log` in `base`."""

    base: Path
    port: int = field(default_factory=free_port)
    user: OsUser = field(default_factory=database_os_user)
    bindir: Path = field(default_factory=pg_bindir)

    @property
    def data_dir(self) -> Path:
        return self.base / "data"

    @property
    def log_file(self) -> Path:
        return self.base / "server.log"

    def _tool(self, name: str) -> str:
        return str(self.bindir / name)

    def _run(self, argv: list[str], *, timeout: float = 120.0, what: str) -> str:
        done = run_as(self.user, argv, cwd=self.base, timeout=timeout)
        if done.returncode != 0:
            said = (done.stderr or done.stdout).strip().splitlines()[-5:]
            raise ClusterError(f"{what} failed (exit {done.returncode}): " + " / ".join(said))
        return done.stdout

    def create(self, settings: dict[str, str]) -> None:
        """initdb (with data checksums) and write `settings` into postgresql.conf."""
        self.base.mkdir(parents=True, exist_ok=True)
        os.chmod(self.base, 0o700)
        chown_to(self.base, self.user)
        check_traversable(self.base, self.user)
        self._run(
            [
                self._tool("initdb"),
                "-D",
                str(self.data_dir),
                "--data-checksums",
                "--auth=peer",
                "--username=postgres",
                "-E",
                "UTF8",
                "--locale=C",
            ],
            what="initdb",
        )
        base_settings = {
            "listen_addresses": "''",
            "port": str(self.port),
            "unix_socket_directories": f"'{self.base}'",
            "wal_level": "replica",
            "max_wal_senders": "5",
            "shared_buffers": "32MB",
            "track_commit_timestamp": "on",
            "lc_messages": "'C'",
        }
        base_settings.update(settings)
        lines = "".join(f"{name} = {value}\n" for name, value in base_settings.items())
        conf = self.data_dir / "postgresql.conf"
        with open(conf, "a", encoding="utf-8") as out:
            out.write("\n# set by the Tidemark demo\n" + lines)

    def start(self) -> None:
        self._run(
            [
                self._tool("pg_ctl"),
                "-D",
                str(self.data_dir),
                "-l",
                str(self.log_file),
                "-w",
                "-t",
                "60",
                "start",
            ],
            what="pg_ctl start",
        )

    def stop(self) -> None:
        if not (self.data_dir / "postmaster.pid").exists():
            return
        self._run(
            [self._tool("pg_ctl"), "-D", str(self.data_dir), "-m", "fast", "-w", "stop"],
            what="pg_ctl stop",
        )

    def psql(self, sql: str, *, port: int | None = None, host: Path | None = None) -> str:
        """Run `sql` as the database OS user over the socket; the unaligned output, stripped."""
        argv = [
            self._tool("psql"),
            "-X",
            "-At",
            "-v",
            "ON_ERROR_STOP=1",
            "-h",
            str(host or self.base),
            "-p",
            str(port or self.port),
            "-d",
            "postgres",
            "-c",
            sql,
        ]
        return self._run(argv, what="psql").strip()

    def system_id(self) -> int:
        return int(self.psql("SELECT system_identifier FROM pg_control_system()"))

    def wait_ready(self, *, port: int, host: Path, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while True:
            try:
                self.psql("SELECT 1", port=port, host=host)
                return
            except ClusterError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)
