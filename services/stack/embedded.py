"""The embedded stack: nats-server and the four services as child processes of `tidemark up`.

State lives in one directory (`.state/` by default): JetStream's store, each service's log, and
`stack.json`, which tells `tidemark status` and other commands where this stack's NATS is and
which file holds the tool user's password. A service that exits unexpectedly is restarted (with
backoff) until the stack is stopped.

NATS requires a user (`auth`, on by default): each service connects as its role's user and the
CLI as `tidemark-tool`, with the permissions of `services/bus/permissions.py`. The passwords are
fresh each start, in 0600 files under `<state>/secrets/` (see `services/stack/credentials.py`).
The server listens on loopback without TLS; `TIDEMARK_NATS__TLS_*` in the environment reach the
services unchanged, for a stack pointed at a NATS of its own elsewhere.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from services.bus.permissions import Role
from services.settings import NatsSettings
from services.stack.credentials import client_env, client_settings, write_passwords
from services.stack.declarations import services_env
from services.stack.lock import StateDirLock
from services.stack.natsserver import NatsServer, free_port
from services.stack.probe import read_health

SERVICES = ("catalog", "archiver", "executor", "planner")
# Inherited identity settings would fight the stack's own users (a .creds file for elsewhere).
_INHERITED_IDENTITY = (
    "TIDEMARK_NATS__USER",
    "TIDEMARK_NATS__PASSWORD_FILE",
    "TIDEMARK_NATS__CREDENTIALS_FILE",
)
STACK_FILE = "stack.json"
DEFAULT_NATS_PORT = 4222
DEFAULT_TIMELINE_PORT = 8470
log = logging.getLogger("tidemark.stack")


def _port_free(port: int) -> bool:
    import socket

    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


@dataclass
class ServiceProcess:
    name: str
    process: subprocess.Popen[bytes] | None = None
    restarts: int = 0
    next_restart: float = 0.0


@dataclass
class EmbeddedStack:
    state_dir: Path
    node: str = "embedded"
    nats_port: int | None = None
    services: tuple[str, ...] = SERVICES
    extra_env: dict[str, str] = field(default_factory=dict)
    health_ports: dict[str, int] = field(default_factory=dict)
    """A service's health port (/healthz, /readyz, /metrics for a Prometheus scrape); none: off."""
    nats: NatsServer | None = None
    procs: dict[str, ServiceProcess] = field(default_factory=dict)
    stopping: bool = False
    timeline_port: int | None = None
    auth: bool = True
    """Users and permissions on the stack's nats-server (off: anyone may do anything)."""
    passwords: dict[Role, Path] = field(default_factory=dict)
    lock: StateDirLock | None = None

    @property
    def logs_dir(self) -> Path:
        return self.state_dir / "logs"

    def start_nats(self) -> NatsServer:
        # Before anything in the directory is touched: another stack may own it (StateDirLocked).
        self.lock = StateDirLock(self.state_dir)
        self.lock.acquire()
        self.logs_dir.mkdir(exist_ok=True)
        port = self.nats_port
        if port is None:
            port = DEFAULT_NATS_PORT if _default_port_free(DEFAULT_NATS_PORT) else free_port()
        self.passwords = write_passwords(self.state_dir) if self.auth else {}
        self.nats = NatsServer(
            store_dir=self.state_dir / "nats",
            port=port,
            log_file=self.logs_dir / "nats.log",
            users=self.passwords,
        )
        self.nats.start()
        if self.timeline_port is None:
            free = _default_port_free(DEFAULT_TIMELINE_PORT)
            self.timeline_port = DEFAULT_TIMELINE_PORT if free else free_port()
        self._write_stack_file()
        return self.nats

    @property
    def timeline_url(self) -> str | None:
        return f"http://127.0.0.1:{self.timeline_port}/" if self.timeline_port else None

    def client_settings(self, role: Role = Role.TOOL) -> NatsSettings:
        """How to connect to this stack's NATS as `role` (the tool user by default)."""
        assert self.nats is not None
        return client_settings(self.nats.url, role, self.passwords)

    def service_env(self, name: str) -> dict[str, str]:
        assert self.nats is not None
        env = {k: v for k, v in os.environ.items() if k not in _INHERITED_IDENTITY}
        env.update(client_env(Role(name), self.passwords))
        env.update(
            {
                "TIDEMARK_NATS__URL": self.nats.url,
                "TIDEMARK_NODE": self.node,
                "TIDEMARK_STATE_DIR": str(self.state_dir.resolve()),
                "PYTHONUNBUFFERED": "1",
                "TIDEMARK_SUPERVISOR_PID": str(os.getpid()),
                "TIDEMARK_CATALOG__HTTP_PORT": str(self.timeline_port or 0),
            }
        )
        if name in ("archiver", "executor"):
            # Read at each start: a restart after `tidemark protect` sees the new database.
            env.update(services_env(self.state_dir))
        env.update(self.extra_env)
        if name in self.health_ports:
            env["TIDEMARK_HEALTH_PORT"] = str(self.health_ports[name])
            env["TIDEMARK_HEALTH_HOST"] = "127.0.0.1"
        return env

    def spawn(self, name: str) -> None:
        entry = self.procs.setdefault(name, ServiceProcess(name))
        with open(self.logs_dir / f"{name}.log", "ab") as out:
            entry.process = subprocess.Popen(
                [sys.executable, "-m", f"services.{name}"],
                env=self.service_env(name),
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # the stack, not the terminal, decides when they stop
            )
        self._write_stack_file()

    def start_services(self) -> None:
        for name in self.services:
            self.spawn(name)

    def supervise_once(self) -> list[str]:
        """Restart services that died; returns the names restarted."""
        restarted = []
        now = time.monotonic()
        for entry in self.procs.values():
            proc = entry.process
            if self.stopping or proc is None or proc.poll() is None:
                continue
            if now < entry.next_restart:
                continue
            log.warning("%s exited with %s; restarting", entry.name, proc.returncode)
            entry.restarts += 1
            entry.next_restart = now + min(30.0, 0.5 * 2 ** min(entry.restarts, 6))
            self.spawn(entry.name)
            restarted.append(entry.name)
        return restarted

    async def wait_healthy(self, timeout: float = 60.0) -> dict[str, dict[str, object]]:
        """Wait until every service reports `healthy` in the health bucket."""
        assert self.nats is not None
        deadline = time.monotonic() + timeout
        health: dict[str, dict[str, object]] = {}
        while time.monotonic() < deadline:
            for entry in self.procs.values():
                if entry.process is not None and entry.process.poll() is not None:
                    raise RuntimeError(
                        f"{entry.name} exited with {entry.process.returncode} during start-up; "
                        f"see {self.logs_dir / (entry.name + '.log')}:\n{self.log_tail(entry.name)}"
                    )
            health = await read_health(self.client_settings())
            ready = {h["service"] for h in health.values() if h.get("state") == "healthy"}
            if set(self.services) <= ready:
                return health
            await asyncio.sleep(0.2)
        missing = set(self.services) - {
            h["service"] for h in health.values() if h.get("state") == "healthy"
        }
        raise TimeoutError(f"services not healthy after {timeout}s: {', '.join(sorted(missing))}")

    def stop(self, timeout: float = 20.0) -> None:
        """SIGTERM every service (they drain), wait, SIGKILL stragglers, then stop NATS."""
        self.stopping = True
        for entry in self.procs.values():
            if entry.process is not None and entry.process.poll() is None:
                entry.process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + timeout
        for entry in self.procs.values():
            if entry.process is None:
                continue
            try:
                entry.process.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                log.warning("%s did not stop in %ss; killing it", entry.name, timeout)
                entry.process.kill()
                entry.process.wait()
        if self.nats is not None:
            self.nats.stop()
        if self.lock is None or not self.lock.held:
            return  # not ours: stack.json and the passwords belong to the stack that holds it
        with contextlib.suppress(FileNotFoundError):
            (self.state_dir / STACK_FILE).unlink()
        # The passwords die with the server that knew them; the next start makes new ones.
        for path in self.passwords.values():
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
        self.lock.release()

    def exit_codes(self) -> dict[str, int | None]:
        return {
            name: (e.process.returncode if e.process is not None else None)
            for name, e in self.procs.items()
        }

    def log_tail(self, name: str, lines: int = 15) -> str:
        try:
            text = (self.logs_dir / f"{name}.log").read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def _write_stack_file(self) -> None:
        assert self.nats is not None
        info = {
            "nats_url": self.nats.url,
            "monitor_url": self.nats.monitor_url,
            "timeline_url": self.timeline_url,
            "supervisor_pid": os.getpid(),
            "nats_pid": self.nats.process.pid if self.nats.process else None,
            # The tool user's password file (never the password): what the CLI connects with.
            **self._tool_identity(),
            "services": {n: e.process.pid for n, e in self.procs.items() if e.process is not None},
        }
        path = self.state_dir / STACK_FILE
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(info, indent=2))
        tmp.replace(path)

    def _tool_identity(self) -> dict[str, str]:
        settings = self.client_settings()
        if settings.user is None or settings.password_file is None:
            return {}
        return {"nats_user": settings.user, "nats_password_file": str(settings.password_file)}


def read_stack_file(state_dir: Path) -> dict[str, object] | None:
    try:
        data = json.loads((state_dir / STACK_FILE).read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _default_port_free(port: int) -> bool:
    """Take a default port only if it is free and defaults are wanted: with
    `TIDEMARK_STACK_DEFAULT_PORTS=0` (the test suite sets it) a stack always takes free ports,
    so it never holds the ports a user's own `tidemark up` expects to find."""
    if os.environ.get("TIDEMARK_STACK_DEFAULT_PORTS", "1") == "0":
        return False
    return _port_free(port)
