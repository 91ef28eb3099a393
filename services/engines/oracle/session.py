"""A session to one Oracle database: the V$ views the services read, as typed rows.

    OracleSession (Protocol)      what the archiver and the executor ask of a database
     ├── OracleDbSession          python-oracledb: thin by default, thick when settings say so
     └── (tests/oracle_sim)       the simulated session, over the simulated database

Every statement is a constant of `rows.py`, every value a bind variable: nothing a setting or
a message carries is ever pasted into SQL. Rows are fetched in batches of `arraysize` (one round
trip per batch instead of one per row; V$ARCHIVED_LOG holds thousands of rows) and mapped by
column name, so the simulated session shares the mapping (`*_from` functions).

**Modes.** Thin mode (pure Python, asyncio-native through `oracledb.connect_async`) needs
Oracle Database 12.1 or later. Thick mode (`oracledb.init_oracle_client`, Oracle Client
libraries) is for 11.2 sources, for startup/shutdown, and for external authentication; its
calls are blocking and run in a thread, one at a time. A process runs in one mode only: the
first thick session switches the whole process, and fails if a thin connection was opened first.

**Credentials.** A user and a password *file* (read when connecting, kept nowhere), or an
external password store (a wallet, `/@alias`, thick mode only: thin mode knows no external
authentication). A password is never an argument, a log line or part of a message; a DSN that
carries one (`user/password@host`) is refused by the settings.

**Times.** V$ views give DATE values in the database server's time zone, without saying which.
`time_zone` names it (IANA), and the session checks on connecting that the server's current
offset (SYSTIMESTAMP) agrees, because a wrong guess would shift every log's time, and with it
every restorable time the catalog computes. Rows carry aware UTC datetimes.

**Errors.** Driver errors become `OracleSessionError` with the ORA/DPY code and a retry verdict
from the engine's classification table (`errors.py`); a retryable one also drops the
connection, so the next call connects afresh.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, Protocol
from zoneinfo import ZoneInfo

from services.engines.oracle.errors import classify
from services.engines.oracle.rows import (
    ARCHIVED_LOGS_SQL,
    BACKUP_DATAFILES_SQL,
    BACKUP_DATAFILES_TAGGED_SQL,
    BACKUP_PIECES_SQL,
    DATABASE_SQL,
    INCARNATIONS_SQL,
    LOG_HISTORY_SQL,
    LONGOPS_SQL,
    RMAN_STATUS_SQL,
    THREADS_SQL,
    TIMEZONE_SQL,
    ArchivedLogRow,
    BackupDatafileRow,
    BackupPieceRow,
    DatabaseInfo,
    IncarnationRow,
    LogHistoryRow,
    LongOpRow,
    RmanProgress,
    RmanStatusRow,
    ThreadRow,
    archived_log_from,
    backup_datafile_from,
    backup_piece_from,
    database_from,
    incarnation_from,
    log_history_from,
    longop_from,
    rman_status_from,
    thread_from,
)

__all__ = [
    "ARCHIVED_LOGS_SQL",
    "BACKUP_DATAFILES_SQL",
    "BACKUP_DATAFILES_TAGGED_SQL",
    "BACKUP_PIECES_SQL",
    "DATABASE_SQL",
    "INCARNATIONS_SQL",
    "LOG_HISTORY_SQL",
    "LONGOPS_SQL",
    "RMAN_STATUS_SQL",
    "THREADS_SQL",
    "ArchivedLogRow",
    "BackupDatafileRow",
    "BackupPieceRow",
    "ConnectSettings",
    "DatabaseInfo",
    "IncarnationRow",
    "LogHistoryRow",
    "LongOpRow",
    "OracleDbSession",
    "OracleSession",
    "OracleSessionError",
    "RmanProgress",
    "RmanStatusRow",
    "ThreadRow",
]


# -- the protocol ------------------------------------------------------------------------------


class OracleSession(Protocol):
    """What the services read from an Oracle database. Implementations raise
    `OracleSessionError` (with its retry verdict) and reconnect on the next call after a
    connection failure."""

    async def database(self) -> DatabaseInfo: ...

    async def incarnations(self) -> list[IncarnationRow]: ...

    async def archived_logs(self, dest_id: int, after_recid: int = 0) -> list[ArchivedLogRow]:
        """Available copies at LOG_ARCHIVE_DEST_`dest_id` with RECID > `after_recid`."""
        ...

    async def log_history(
        self, thread: int, from_sequence: int, *, resetlogs_id: int | None = None
    ) -> list[LogHistoryRow]:
        """Switches of `thread` from `from_sequence` on, on the incarnation `resetlogs_id`
        (None: the current one)."""
        ...

    async def threads(self) -> list[ThreadRow]: ...

    async def backup_pieces(self, command_id: str) -> list[BackupPieceRow]:
        """The pieces of the RMAN job run with `SET COMMAND ID TO command_id`."""
        ...

    async def backup_datafiles(self, command_id: str) -> list[BackupDatafileRow]:
        """The datafiles in that job's backup sets."""
        ...

    async def backup_datafiles_tagged(self, tag: str) -> list[BackupDatafileRow]:
        """The datafiles in the sets whose pieces carry `tag`."""
        ...

    async def rman_progress(self, command_id: str) -> RmanProgress: ...

    async def close(self) -> None: ...


class ConnectSettings(Protocol):
    """How to reach a database; the settings sections (archiver, executor) match this shape, so
    neither needs to import the engine."""

    @property
    def dsn(self) -> str: ...
    @property
    def user(self) -> str | None: ...
    @property
    def password_file(self) -> Path | None: ...
    @property
    def wallet_dir(self) -> Path | None: ...
    @property
    def thick_mode(self) -> bool: ...
    @property
    def client_lib_dir(self) -> Path | None: ...
    @property
    def time_zone(self) -> str: ...
    @property
    def arraysize(self) -> int: ...


# -- errors ------------------------------------------------------------------------------------


class OracleSessionError(Exception):
    """A query or connection failed. `code` is the ORA-/DPY- code when there is one."""

    def __init__(self, reason: str, *, code: str | None = None, retryable: bool = False) -> None:
        super().__init__(reason)
        self.reason = reason
        self.code = code
        self.retryable = retryable


def session_error(exc: BaseException, what: str) -> OracleSessionError:
    """`exc` (a python-oracledb error) as an `OracleSessionError` about `what`.

    The verdict comes from the engine's table; the driver's own `isrecoverable` (a connection
    or instance failure the driver knows another attempt may survive) also makes it retryable.
    """
    detail = exc.args[0] if exc.args else exc
    message = str(getattr(detail, "message", None) or detail).strip()
    verdict = classify(message.splitlines() or [message])
    recoverable = bool(getattr(detail, "isrecoverable", False))
    code = getattr(detail, "full_code", None) or verdict.code
    return OracleSessionError(
        f"{what}: {message}", code=code, retryable=verdict.retryable or recoverable
    )


# -- python-oracledb ---------------------------------------------------------------------------
# Imported where used: it takes a quarter of a second to load, and a node that archives only
# PostgreSQL (or a CLI that only reads settings) should not pay for it.


class _Link(Protocol):
    """One open connection: run a query, get its rows by column name."""

    async def rows(self, sql: str, binds: Mapping[str, object]) -> list[dict[str, Any]]: ...

    async def execute(self, sql: str, binds: Mapping[str, object] | None = None) -> None:
        """A statement with no rows (ALTER DATABASE BEGIN BACKUP, a PL/SQL block, ...)."""
        ...

    async def close(self) -> None: ...


def _named(
    description: Sequence[Sequence[Any]], batch: Sequence[Sequence[Any]]
) -> list[dict[str, Any]]:
    names = [str(column[0]).lower() for column in description]
    return [dict(zip(names, values, strict=True)) for values in batch]


class AsyncLink:
    """A thin-mode `oracledb.AsyncConnection` (or anything shaped like one)."""

    def __init__(self, connection: Any, arraysize: int) -> None:
        self._connection = connection
        self._arraysize = arraysize

    async def rows(self, sql: str, binds: Mapping[str, object]) -> list[dict[str, Any]]:
        cursor = self._connection.cursor()
        try:
            cursor.arraysize = self._arraysize
            await cursor.execute(sql, dict(binds))
            out: list[dict[str, Any]] = []
            while batch := await cursor.fetchmany(self._arraysize):
                out.extend(_named(cursor.description, batch))
            return out
        finally:
            cursor.close()

    async def execute(self, sql: str, binds: Mapping[str, object] | None = None) -> None:
        cursor = self._connection.cursor()
        try:
            await cursor.execute(sql, dict(binds or {}))
        finally:
            cursor.close()

    async def close(self) -> None:
        await self._connection.close()


class ThreadLink:
    """A thick-mode (blocking) `oracledb.Connection`, used from a thread, one call at a time:
    a connection is not for concurrent use, and the event loop must not wait on the network."""

    def __init__(self, connection: Any, arraysize: int) -> None:
        self._connection = connection
        self._arraysize = arraysize
        self._lock = asyncio.Lock()

    def _rows(self, sql: str, binds: Mapping[str, object]) -> list[dict[str, Any]]:
        cursor = self._connection.cursor()
        try:
            cursor.arraysize = self._arraysize
            cursor.execute(sql, dict(binds))
            out: list[dict[str, Any]] = []
            while batch := cursor.fetchmany(self._arraysize):
                out.extend(_named(cursor.description, batch))
            return out
        finally:
            cursor.close()

    async def rows(self, sql: str, binds: Mapping[str, object]) -> list[dict[str, Any]]:
        async with self._lock:
            return await asyncio.to_thread(self._rows, sql, binds)

    def _execute(self, sql: str, binds: Mapping[str, object] | None) -> None:
        cursor = self._connection.cursor()
        try:
            cursor.execute(sql, dict(binds or {}))
        finally:
            cursor.close()

    async def execute(self, sql: str, binds: Mapping[str, object] | None = None) -> None:
        async with self._lock:
            await asyncio.to_thread(self._execute, sql, binds)

    async def close(self) -> None:
        async with self._lock:
            await asyncio.to_thread(self._connection.close)


_thick_lock = threading.Lock()
_thick_ready = False


def _init_thick(settings: ConnectSettings) -> None:
    """Switch this process to thick mode, once (python-oracledb allows one mode per process)."""
    global _thick_ready
    import oracledb

    with _thick_lock:
        if _thick_ready:
            return
        lib_dir = None if settings.client_lib_dir is None else str(settings.client_lib_dir)
        config_dir = None if settings.wallet_dir is None else str(settings.wallet_dir)
        try:
            oracledb.init_oracle_client(lib_dir=lib_dir, config_dir=config_dir)
        except oracledb.Error as exc:
            raise OracleSessionError(
                "thick mode: cannot load the Oracle Client libraries (or this process already "
                f"opened a thin-mode connection; one mode per process): {exc}"
            ) from exc
        _thick_ready = True


def read_password(path: Path) -> str:
    """The password in `path` (one line; a trailing newline is not part of it). The value goes
    straight to the driver and is kept nowhere."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise OracleSessionError(
            f"cannot read the password file {path}: {exc.strerror or exc}"
        ) from None
    password = text.rstrip("\r\n")
    if not password:
        raise OracleSessionError(f"the password file {path} is empty")
    return password


async def open_link(settings: ConnectSettings) -> _Link:
    """Connect as `settings` say (module docstring: modes, credentials)."""
    import oracledb

    if settings.wallet_dir is not None and settings.password_file is None:
        # External password store: the wallet's sqlnet.ora/tnsnames.ora are the config dir
        # (set when the client was initialised) and the DSN is the wallet's alias.
        credentials: dict[str, Any] = {"externalauth": True}
    else:
        if settings.password_file is None or settings.user is None:
            raise OracleSessionError("a user and a password_file, or a wallet_dir, are needed")
        credentials = {"user": settings.user, "password": read_password(settings.password_file)}
    what = f"connecting to {settings.dsn}"
    try:
        if settings.thick_mode:
            await asyncio.to_thread(_init_thick, settings)
            connection = await asyncio.to_thread(oracledb.connect, dsn=settings.dsn, **credentials)
            return ThreadLink(connection, settings.arraysize)
        connection = await oracledb.connect_async(dsn=settings.dsn, **credentials)
        return AsyncLink(connection, settings.arraysize)
    except oracledb.Error as exc:
        raise session_error(exc, what) from None
    finally:
        credentials.clear()


@dataclass
class OracleDbSession:
    """`OracleSession` over python-oracledb. Connects on first use and again after a
    connection failure; `opener` is the seam unit tests use (no Oracle runs here)."""

    settings: ConnectSettings
    opener: Callable[[ConnectSettings], Any] = open_link
    _link: _Link | None = field(default=None, init=False, repr=False)
    _zone: ZoneInfo = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self._zone = ZoneInfo(self.settings.time_zone)

    async def _connected(self) -> _Link:
        if self._link is None:
            link: _Link = await self.opener(self.settings)
            try:
                await self._check_time_zone(link)
            except BaseException:
                await link.close()
                raise
            self._link = link
        return self._link

    async def _check_time_zone(self, link: _Link) -> None:
        rows = await self._guarded(link, "reading the server's time zone", TIMEZONE_SQL, {})
        server = str(rows[0]["tz_offset"]).strip() if rows else ""
        offset = datetime.now(self._zone).utcoffset() or timedelta(0)
        minutes = int(offset.total_seconds()) // 60
        sign = "-" if minutes < 0 else "+"
        expected = f"{sign}{abs(minutes) // 60:02d}:{abs(minutes) % 60:02d}"
        if server != expected:
            raise OracleSessionError(
                f"{self.settings.dsn}: the server's clock runs at UTC{server}, but time_zone "
                f"{self.settings.time_zone!r} is UTC{expected} now; set time_zone to the "
                "server's zone, or every log time read from it would be shifted"
            )

    async def _guarded(
        self, link: _Link, what: str, sql: str, binds: Mapping[str, object]
    ) -> list[dict[str, Any]]:
        import oracledb

        try:
            return await link.rows(sql, binds)
        except oracledb.Error as exc:
            error = session_error(exc, what)
        if error.retryable:
            await self._drop(link)
        raise error

    async def _drop(self, link: _Link) -> None:
        if self._link is link:
            self._link = None
        with contextlib.suppress(Exception):  # it is broken already; the next call reconnects
            await link.close()

    async def _rows(self, what: str, sql: str, **binds: object) -> list[dict[str, Any]]:
        return await self._guarded(await self._connected(), what, sql, binds)

    async def execute(self, sql: str) -> None:
        """Run one statement that returns no rows; the statements are the callers' constants
        (snapshot.py), never built from input. Errors are classified as the queries' are."""
        await self.call(f"running {sql}", sql)

    # `DataPumpSql` (datapump.py, migration_steps.py): the callers' constant statements with
    # binds, identifiers included (checked by DBMS_ASSERT inside the statement).

    async def rows(self, what: str, sql: str, **binds: object) -> list[dict[str, Any]]:
        return await self._rows(what, sql, **binds)

    async def call(self, what: str, sql: str, **binds: object) -> None:
        import oracledb

        link = await self._connected()
        try:
            await link.execute(sql, binds)
            return
        except oracledb.Error as exc:
            error = session_error(exc, what)
        if error.retryable:
            await self._drop(link)
        raise error

    async def database(self) -> DatabaseInfo:
        rows = await self._rows("reading V$DATABASE", DATABASE_SQL)
        return database_from(rows[0])

    async def incarnations(self) -> list[IncarnationRow]:
        rows = await self._rows("reading V$DATABASE_INCARNATION", INCARNATIONS_SQL)
        return [incarnation_from(r, self._zone) for r in rows]

    async def archived_logs(self, dest_id: int, after_recid: int = 0) -> list[ArchivedLogRow]:
        rows = await self._rows(
            "reading V$ARCHIVED_LOG", ARCHIVED_LOGS_SQL, dest_id=dest_id, after_recid=after_recid
        )
        return [archived_log_from(r, self._zone) for r in rows]

    async def log_history(
        self, thread: int, from_sequence: int, *, resetlogs_id: int | None = None
    ) -> list[LogHistoryRow]:
        rows = await self._rows(
            "reading V$LOG_HISTORY",
            LOG_HISTORY_SQL,
            thread=thread,
            from_sequence=from_sequence,
            resetlogs_id=resetlogs_id,
        )
        return [log_history_from(r, self._zone) for r in rows]

    async def threads(self) -> list[ThreadRow]:
        return [thread_from(r) for r in await self._rows("reading V$THREAD", THREADS_SQL)]

    async def backup_pieces(self, command_id: str) -> list[BackupPieceRow]:
        rows = await self._rows("reading V$BACKUP_PIECE", BACKUP_PIECES_SQL, command_id=command_id)
        return [backup_piece_from(r, self._zone) for r in rows]

    async def backup_datafiles(self, command_id: str) -> list[BackupDatafileRow]:
        rows = await self._rows(
            "reading V$BACKUP_DATAFILE", BACKUP_DATAFILES_SQL, command_id=command_id
        )
        return [backup_datafile_from(r, self._zone) for r in rows]

    async def backup_datafiles_tagged(self, tag: str) -> list[BackupDatafileRow]:
        rows = await self._rows("reading V$BACKUP_DATAFILE", BACKUP_DATAFILES_TAGGED_SQL, tag=tag)
        return [backup_datafile_from(r, self._zone) for r in rows]

    async def rman_progress(self, command_id: str) -> RmanProgress:
        statuses = await self._rows("reading V$RMAN_STATUS", RMAN_STATUS_SQL, command_id=command_id)
        longops = await self._rows("reading V$SESSION_LONGOPS", LONGOPS_SQL)
        return RmanProgress(
            statuses=tuple(rman_status_from(r, self._zone) for r in statuses),
            longops=tuple(longop_from(r) for r in longops),
        )

    async def close(self) -> None:
        link, self._link = self._link, None
        if link is not None:
            await link.close()
