"""Where a cluster lives, and running its tools as its OS user."""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import shutil
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from services.engines.base import EngineError
from services.engines.postgres.oscmd import OsUser, run_as, user_env

T = TypeVar("T")

CODE_STEP = "TM-PG-MIGRATION"
FIELD_SEPARATOR = "\x1f"
ROLE_PATTERN = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")


class MigrationStepError(RuntimeError):
    """A migration step could not complete. `retryable` says whether rerunning it can help."""

    def __init__(self, reason: str, *, retryable: bool = False) -> None:
        super().__init__(reason)
        self.reason = reason
        self.retryable = retryable


@dataclass(frozen=True)
class PgInstance:
    """One PostgreSQL cluster: its data directory, socket directory and port, the bindir of
    its release, the OS user that owns it, and the role Tidemark connects as (trusted or peer
    on the socket: no password is held)."""

    data_dir: Path
    socket_dir: Path
    port: int
    bindir: Path
    user: OsUser
    role: str = "tidemark"
    session_options: str = ""
    """Settings of every session the tools open (`PGOPTIONS`): a fenced cluster's own writes
    (a subscription of the way back, sequences set) run with its read-only default lifted."""

    def __post_init__(self) -> None:
        if not ROLE_PATTERN.fullmatch(self.role):
            raise ValueError(f"not a plain role name: {self.role!r}")

    @property
    def conninfo(self) -> str:
        """libpq keywords another cluster (a standby, pg_rewind) uses to reach this one."""
        return f"host={self.socket_dir} port={self.port} user={self.role} dbname=postgres"

    def run(
        self,
        tool: str,
        args: Sequence[str | os.PathLike[str]],
        *,
        input: str | None = None,
        env: Mapping[str, str] | None = None,
        timeout: float = 600.0,
    ) -> str:
        if self.session_options:
            env = {**(env or {}), "PGOPTIONS": self.session_options}
        done = run_as(
            self.user,
            [self.bindir / tool, *args],
            cwd=self.data_dir.parent,
            env=user_env(self.user, env),
            input=input,
            timeout=timeout,
        )
        if done.returncode != 0:
            # Server errors name no secrets: we pass none (trusted socket, no password).
            detail = (done.stderr or done.stdout).strip()[-2000:]
            raise MigrationStepError(f"{tool} failed (exit {done.returncode}): {detail}")
        return done.stdout

    def rows(self, sql: str, variables: Mapping[str, str] | None = None) -> list[list[str]]:
        """Run one statement through psql; values reach it as `:'name'` literals, never pasted."""
        args: list[str] = ["-X", "-A", "-t", "-q", "-v", "ON_ERROR_STOP=1", "-F", FIELD_SEPARATOR]
        for name, value in (variables or {}).items():
            args += ["-v", f"{name}={value}"]
        args += [
            "-h",
            str(self.socket_dir),
            "-p",
            str(self.port),
            "-U",
            self.role,
            "-d",
            "postgres",
        ]
        out = self.run("psql", args, input=sql, timeout=60.0)
        return [line.split(FIELD_SEPARATOR) for line in out.splitlines() if line]

    def value(self, sql: str, variables: Mapping[str, str] | None = None) -> str:
        rows = self.rows(sql, variables)
        if len(rows) != 1 or len(rows[0]) != 1:
            raise MigrationStepError(f"expected one value from {sql[:80]!r}, got {rows!r}")
        return rows[0][0]

    def pg_ctl(self, *args: str, timeout: float = 120.0) -> str:
        return self.run("pg_ctl", ["-D", str(self.data_dir), "-w", "-t", str(int(timeout)), *args])

    def is_running(self) -> bool:
        done = run_as(
            self.user,
            [self.bindir / "pg_ctl", "-D", self.data_dir, "status"],
            cwd=self.data_dir.parent,
            env=user_env(self.user),
            timeout=30,
        )
        return done.returncode == 0

    def start(self) -> None:
        if not self.is_running():
            self.pg_ctl("-l", str(self.data_dir.parent / f"{self.data_dir.name}.log"), "start")

    def control_data(self) -> dict[str, str]:
        out = self.run("pg_controldata", [str(self.data_dir)], env={"LC_ALL": "C"})
        fields = (line.split(":", 1) for line in out.splitlines() if ":" in line)
        return {key.strip(): value.strip() for key, value in fields}

    def wait_until(self, sql: str, *, timeout: float, what: str, interval: float = 0.05) -> None:
        """Poll until `sql` answers `t`; a timeout is retryable (the step can wait again)."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                if self.value(sql) == "t":
                    return
            except MigrationStepError:
                pass  # not accepting connections yet
            if time.monotonic() > deadline:
                raise MigrationStepError(f"{what} not reached in {timeout:g} s", retryable=True)
            time.sleep(interval)


def clear_dir(path: Path) -> None:
    """Empty `path` (kept itself): only for a directory proven to be this migration's own."""
    for child in path.iterdir():
        if child.is_dir() and not child.is_symlink():
            shutil.rmtree(child)
        else:
            child.unlink()


def dir_size(path: Path) -> int:
    """Bytes of the files under `path`; a file removed while it is counted counts nothing (a
    copy or a recovery may be writing there)."""
    total = 0
    for child in path.rglob("*"):
        with contextlib.suppress(OSError):
            if child.is_file():
                total += child.stat().st_size
    return total


async def blocking(fn: Callable[[], T]) -> T:
    """Run a step's blocking part in a worker thread; its `MigrationStepError` becomes the
    engine's error (retryable as it says)."""
    try:
        return await asyncio.to_thread(fn)
    except MigrationStepError as exc:
        raise EngineError.of(exc.reason, code=CODE_STEP, retryable=exc.retryable) from None
