"""Reaching a hosted cluster as its OS user: ``psql -X -At`` over the unix socket.

PostgreSQL on a node is reached the way its own administrators reach it: as the cluster's OS
user (usually ``postgres``) over the local socket, where peer authentication admits that user
without a password. A driver inside the Tidemark process would connect as *our* OS user, which
peer authentication refuses, and would need a password we never want to hold. So queries run as
``psql`` started as the database user, and ``pg_basebackup`` is started the same way
(:func:`spawn`): one place knows how to build that process (user switch, clean environment,
socket, port, role, an optional ``PGPASSFILE``), and one knows how to end it (:func:`kill`).

Values reach SQL as psql variables (``-v name=value``, written ``:'name'`` in the statement), so
psql quotes them as literals and nothing is pasted into SQL text.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from services.engines.base import EngineError
from services.engines.postgres.oscmd import (
    OsCommandError,
    OsUser,
    database_os_user,
    pg_bindir,
    switch_user_kwargs,
    user_env,
)
from services.engines.settings import HostedDatabase

__all__ = [
    "CODE_NOT_POSTGRES",
    "CODE_OS",
    "CODE_SQL",
    "PgTarget",
    "kill",
    "query",
    "query_row",
    "spawn",
]

CODE_SQL = "TM-PG-SQL"
"""A query failed (the message carries psql's error)."""
CODE_OS = "TM-PG-OS"
"""The database OS user, the binaries or the socket cannot be used as configured."""
CODE_NOT_POSTGRES = "TM-PG-CONFIG"
"""The database handed to the PostgreSQL engine has no PostgreSQL section."""

TOOLS: tuple[str, ...] = ("psql", "pg_basebackup")
"""Client binaries the engine runs; a bindir without them is not the one to use."""

FIELD_SEPARATOR = "\x1f"
"""Between columns of psql's unaligned output: a byte no value we read can contain (``|`` can)."""

#: Messages after which the same query may well succeed later: the server is starting, stopping,
#: or full. Anything else (a wrong port, a missing role, a syntax error) needs a person.
_TRANSIENT = (
    "the database system is starting up",
    "the database system is shutting down",
    "the database system is in recovery mode",
    "sorry, too many clients already",
    "remaining connection slots are reserved",
)


@dataclass(frozen=True)
class PgTarget:
    """How to reach one hosted cluster: who to run as, which binaries, which socket."""

    uid: str
    user: OsUser
    bindir: Path
    socket_dir: Path
    port: int
    dbname: str
    role: str
    password_file: Path | None = None

    @classmethod
    def of(cls, db: HostedDatabase) -> PgTarget:
        """The target for ``db``; :class:`EngineError` when its user or binaries are missing."""
        pg = db.postgres
        if pg is None:
            raise EngineError.of(
                f"database {db.uid} is not a PostgreSQL database", code=CODE_NOT_POSTGRES
            )
        try:
            user = database_os_user(pg.os_user)
            bindir = pg.bin_dir if pg.bin_dir is not None else pg_bindir(TOOLS)
        except OsCommandError as exc:
            raise EngineError.of(f"database {db.uid}: {exc}", code=CODE_OS) from None
        return cls(
            uid=db.uid,
            user=user,
            bindir=bindir,
            socket_dir=pg.socket_dir,
            port=pg.port,
            dbname=pg.dbname,
            # Peer authentication maps an OS user to the role of the same name.
            role=pg.os_user,
            password_file=pg.password_file,
        )

    def tool(self, name: str) -> str:
        return os.fspath(self.bindir / name)

    @property
    def connection_args(self) -> list[str]:
        """``-h <socket dir> -p <port>``: the socket, never TCP (no password, no network)."""
        return ["-h", os.fspath(self.socket_dir), "-p", str(self.port)]

    def env(self) -> dict[str, str]:
        """A clean environment for the database user: nothing of ours leaks in (no venv, no PG*
        variables aimed at another server); the role, and a pgpass file if one is configured
        (a password is never an argument: argv is visible to every user of the machine)."""
        extra = {"PGUSER": self.role, "PGAPPNAME": "tidemark", "PGCONNECT_TIMEOUT": "10"}
        if self.password_file is not None:
            extra["PGPASSFILE"] = os.fspath(self.password_file)
        return user_env(self.user, extra)


async def spawn(
    target: PgTarget,
    argv: Sequence[str],
    *,
    stdin: int | None = asyncio.subprocess.DEVNULL,
    stdout: int | None = asyncio.subprocess.PIPE,
    stderr: int | None = asyncio.subprocess.PIPE,
    limit: int = 1 << 16,
) -> asyncio.subprocess.Process:
    """Start ``argv`` as the database user, in a process group of its own (so :func:`kill`
    reaches anything it starts), from ``/`` (a root-only working directory makes tools warn)."""
    kwargs: dict[str, Any] = switch_user_kwargs(target.user)
    try:
        return await asyncio.create_subprocess_exec(
            *argv,
            stdin=stdin,
            stdout=stdout,
            stderr=stderr,
            env=target.env(),
            cwd="/",
            start_new_session=True,
            limit=limit,
            **kwargs,
        )
    except OSError as exc:
        raise EngineError.of(
            f"database {target.uid}: cannot start {argv[0]} as {target.user.name}: {exc}",
            code=CODE_OS,
        ) from None


async def kill(process: asyncio.subprocess.Process) -> None:
    """SIGKILL ``process``'s group and reap it; for a process that has exited, only reap it.

    Its pipes are read to their end first: asyncio's ``wait()`` returns only once the pipes are
    closed, and a reader that stopped reading (its buffer full, because we stopped consuming
    when the job failed or was cancelled) never sees the end, so ``wait()`` would hang forever.
    Nobody else may be reading them by now. The whole is shielded: a second cancellation must
    not leave a zombie behind."""
    if process.returncode is None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(process.pid, signal.SIGKILL)

    async def reap() -> None:
        for stream in (process.stdout, process.stderr):
            if stream is not None:
                while await stream.read(1 << 20):
                    pass
        await process.wait()

    await asyncio.shield(reap())


def is_transient(message: str) -> bool:
    """Whether ``message`` (a client's error output) says a retry may succeed."""
    lowered = message.lower()
    return any(pattern in lowered for pattern in _TRANSIENT)


async def query(
    target: PgTarget,
    sql: str,
    *,
    variables: Mapping[str, str] | None = None,
    timeout: float = 60.0,
) -> list[list[str]]:
    """Run ``sql`` (one or more statements) and return the rows of its output, split into
    columns. ``variables`` become psql variables: ``:'name'`` in ``sql`` is the value quoted as a
    literal. Raises :class:`EngineError` (``TM-PG-SQL``) with psql's message on any error.

    Statements are read from stdin, because psql interpolates variables there and not in ``-c``,
    and each runs in its own transaction (``ALTER SYSTEM`` refuses to run inside one).
    """
    argv = [
        target.tool("psql"),
        "-X",
        "-A",
        "-t",
        "-q",
        "-v",
        "ON_ERROR_STOP=1",
        "-F",
        FIELD_SEPARATOR,
        *target.connection_args,
        "-d",
        target.dbname,
    ]
    for name, value in (variables or {}).items():
        argv += ["-v", f"{name}={value}"]
    process = await spawn(target, argv, stdin=asyncio.subprocess.PIPE)
    try:
        async with asyncio.timeout(timeout):
            out, err = await process.communicate(sql.encode())
    except TimeoutError:
        raise EngineError.of(
            f"database {target.uid}: query did not finish within {timeout:g}s: {sql[:120]!r}",
            code=CODE_SQL,
            retryable=True,
        ) from None
    finally:
        await kill(process)
    if process.returncode != 0:
        message = err.decode("utf-8", "replace").strip() or f"psql exit {process.returncode}"
        raise EngineError.of(
            f"database {target.uid}: {message}", code=CODE_SQL, retryable=is_transient(message)
        )
    text = out.decode("utf-8", "replace")
    return [line.split(FIELD_SEPARATOR) for line in text.splitlines() if line]


async def query_row(
    target: PgTarget,
    sql: str,
    *,
    variables: Mapping[str, str] | None = None,
    timeout: float = 60.0,
) -> list[str]:
    """The single row ``sql`` returns; :class:`EngineError` if it returns another number."""
    rows = await query(target, sql, variables=variables, timeout=timeout)
    if len(rows) != 1:
        raise EngineError.of(
            f"database {target.uid}: expected one row, got {len(rows)}: {sql[:120]!r}",
            code=CODE_SQL,
        )
    return rows[0]
