"""A session to one Oracle database: the V$ views the services read, as typed rows.

    OracleSession (Protocol)      what the archiver and the executor ask of a database
     ├── OracleDbSession          python-oracledb: thin by default, thick when settings say so
     └── (tests/oracle_sim)       the simulated session, over the simulated database

Every statement is a module constant below, every value a bind variable: nothing a setting or
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
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Protocol
from zoneinfo import ZoneInfo

from services.engines.oracle.errors import classify

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

Row = Mapping[str, Any]
"""One fetched row, keyed by lower-case column name ('#' kept: ``thread#``)."""

# -- statements --------------------------------------------------------------------------------

DATABASE_SQL = """\
SELECT dbid, name, db_unique_name, log_mode, force_logging, current_scn, database_role,
       platform_name, open_mode, resetlogs_change#
  FROM v$database"""

INCARNATIONS_SQL = """\
SELECT incarnation#, resetlogs_change#, resetlogs_time, resetlogs_id, prior_incarnation#, status
  FROM v$database_incarnation
 ORDER BY incarnation#"""

ARCHIVED_LOGS_SQL = """\
SELECT recid, dest_id, name, thread#, sequence#, resetlogs_id, resetlogs_change#,
       first_change#, next_change#, first_time, next_time, blocks, block_size, completion_time,
       archived, status, standby_dest, deleted
  FROM v$archived_log
 WHERE dest_id = :dest_id AND recid > :after_recid
   AND archived = 'YES' AND status = 'A' AND standby_dest = 'NO'
   AND name IS NOT NULL
 ORDER BY thread#, sequence#"""
"""Available copies at one destination, newer than a RECID. One row per copy per destination:
rows of other destinations, deleted ('D'), unavailable or expired copies, and copies sent to a
standby (STANDBY_DEST='YES': not a file here) are not logs we can read."""

LOG_HISTORY_SQL = """\
SELECT recid, thread#, sequence#, first_change#, next_change#, first_time, resetlogs_change#
  FROM v$log_history
 WHERE thread# = :thread AND sequence# >= :from_sequence
   AND resetlogs_change# = NVL(:resetlogs_change, (SELECT resetlogs_change# FROM v$database))
 ORDER BY sequence#"""
"""Log switches of one thread on one incarnation (V$LOG_HISTORY has no RESETLOGS_ID: an
incarnation is named by its RESETLOGS_CHANGE#; NULL means the current one). Every switch
leaves a row, so this is the truth a destination is checked against for gaps."""

THREADS_SQL = """\
SELECT thread#, status, enabled, sequence#
  FROM v$thread
 ORDER BY thread#"""

# Every V$RMAN_STATUS row of the RMAN session that ran `SET COMMAND ID TO :command_id`, not only
# the rows carrying the id: the control file autobackup is a recursive operation of the
# session, and its pieces belong to the job too. One RMAN session runs one job.

BACKUP_PIECES_SQL = """\
SELECT p.set_stamp, p.set_count, p.piece#, p.copy#, p.handle, p.tag, p.status, p.bytes,
       p.compressed, p.encrypted, p.completion_time, s.backup_type, s.incremental_level
  FROM v$backup_piece p
  JOIN v$backup_set s ON s.set_stamp = p.set_stamp AND s.set_count = p.set_count
 WHERE (p.rman_status_recid, p.rman_status_stamp) IN (
        SELECT r.recid, r.stamp FROM v$rman_status r
         WHERE (r.session_recid, r.session_stamp) IN (
               SELECT c.session_recid, c.session_stamp FROM v$rman_status c
                WHERE c.command_id = :command_id))
 ORDER BY p.set_stamp, p.set_count, p.piece#, p.copy#"""
"""The pieces an RMAN job wrote (V$BACKUP_PIECE.RMAN_STATUS_RECID/STAMP name the owning
V$RMAN_STATUS row)."""

BACKUP_DATAFILES_SQL = """\
SELECT d.set_stamp, d.set_count, d.file#, d.incremental_level, d.incremental_change#,
       d.checkpoint_change#, d.checkpoint_time, d.absolute_fuzzy_change#, d.resetlogs_change#,
       d.completion_time
  FROM v$backup_datafile d
 WHERE (d.set_stamp, d.set_count) IN (
       SELECT p.set_stamp, p.set_count FROM v$backup_piece p
        WHERE (p.rman_status_recid, p.rman_status_stamp) IN (
              SELECT r.recid, r.stamp FROM v$rman_status r
               WHERE (r.session_recid, r.session_stamp) IN (
                     SELECT c.session_recid, c.session_stamp FROM v$rman_status c
                      WHERE c.command_id = :command_id)))
 ORDER BY d.file#, d.set_stamp, d.set_count"""
"""The datafiles (file 0: the control file) in the sets an RMAN job wrote: their checkpoint and
absolute fuzzy SCNs are where recovery from this backup can first stop."""

BACKUP_DATAFILES_TAGGED_SQL = """\
SELECT d.set_stamp, d.set_count, d.file#, d.incremental_level, d.incremental_change#,
       d.checkpoint_change#, d.checkpoint_time, d.absolute_fuzzy_change#, d.resetlogs_change#,
       d.completion_time
  FROM v$backup_datafile d
 WHERE (d.set_stamp, d.set_count) IN (
       SELECT p.set_stamp, p.set_count FROM v$backup_piece p WHERE p.tag = :tag)
 ORDER BY d.file#, d.set_stamp, d.set_count"""
"""The same rows for every set whose pieces carry `tag`: what the engine reads after a backup
(every attempt of one backup uses its tag, so an attempt that failed halfway adds its sets'
earlier checkpoints, which only moves the recorded start back: more redo, never too little)."""

RMAN_STATUS_SQL = """\
SELECT recid, row_level, row_type, command_id, operation, status, mbytes_processed,
       start_time, end_time, input_bytes, output_bytes
  FROM v$rman_status
 WHERE (session_recid, session_stamp) IN (
       SELECT c.session_recid, c.session_stamp FROM v$rman_status c
        WHERE c.command_id = :command_id)
 ORDER BY recid"""

LONGOPS_SQL = """\
SELECT sid, serial#, opname, sofar, totalwork, units, time_remaining, elapsed_seconds
  FROM v$session_longops
 WHERE opname LIKE 'RMAN%' AND totalwork > 0 AND sofar < totalwork
 ORDER BY sid, serial#"""
"""RMAN work in progress. Long operations carry no command id, so these are every RMAN job's
on the database: the executor runs one job per database at a time, which makes them this
job's. 'aggregate' rows cover the whole job, the others one channel's file."""

TIMEZONE_SQL = "SELECT TO_CHAR(SYSTIMESTAMP, 'TZH:TZM') AS tz_offset FROM dual"

# -- rows --------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class DatabaseInfo:
    """V$DATABASE: which database this is and whether its redo can be trusted."""

    dbid: int
    name: str
    db_unique_name: str
    log_mode: str
    force_logging: str
    current_scn: int
    database_role: str
    platform_name: str
    open_mode: str
    resetlogs_change: int

    @property
    def archivelog(self) -> bool:
        return self.log_mode == "ARCHIVELOG"


@dataclass(frozen=True, slots=True)
class IncarnationRow:
    """V$DATABASE_INCARNATION: one OPEN RESETLOGS (STATUS CURRENT, PARENT or ORPHAN)."""

    incarnation: int
    resetlogs_change: int
    resetlogs_time: datetime
    resetlogs_id: int
    prior_incarnation: int
    status: str


@dataclass(frozen=True, slots=True)
class ArchivedLogRow:
    """One V$ARCHIVED_LOG row: one copy of one log at one destination, covering
    [first_change, next_change) of its thread."""

    recid: int
    dest_id: int
    name: str
    thread: int
    sequence: int
    resetlogs_id: int
    resetlogs_change: int
    first_change: int
    next_change: int
    first_time: datetime
    next_time: datetime
    blocks: int
    block_size: int
    completion_time: datetime
    archived: str
    status: str
    standby_dest: str
    deleted: str

    @property
    def available(self) -> bool:
        """The copy is complete, present and ours to read (see `ARCHIVED_LOGS_SQL`)."""
        return (self.archived, self.status, self.standby_dest) == ("YES", "A", "NO")


@dataclass(frozen=True, slots=True)
class LogHistoryRow:
    """One V$LOG_HISTORY row: a log switch. No NEXT_TIME: the next switch's FIRST_TIME is it."""

    recid: int
    thread: int
    sequence: int
    first_change: int
    next_change: int
    first_time: datetime
    resetlogs_change: int


@dataclass(frozen=True, slots=True)
class ThreadRow:
    """V$THREAD: a redo thread (one per RAC instance), ENABLED DISABLED/PRIVATE/PUBLIC."""

    thread: int
    status: str
    enabled: str
    sequence: int

    @property
    def is_enabled(self) -> bool:
        return self.enabled != "DISABLED"


@dataclass(frozen=True, slots=True)
class BackupPieceRow:
    """V$BACKUP_PIECE joined to its V$BACKUP_SET (BACKUP_TYPE D full, I incremental, L logs)."""

    set_stamp: int
    set_count: int
    piece: int
    copy: int
    handle: str
    tag: str | None
    status: str
    bytes: int
    compressed: bool
    encrypted: bool
    completion_time: datetime
    backup_type: str
    incremental_level: int | None


@dataclass(frozen=True, slots=True)
class BackupDatafileRow:
    """V$BACKUP_DATAFILE: one file in a backup set (file 0 is the control file)."""

    set_stamp: int
    set_count: int
    file: int
    incremental_level: int | None
    incremental_change: int
    checkpoint_change: int
    checkpoint_time: datetime
    absolute_fuzzy_change: int | None
    resetlogs_change: int
    completion_time: datetime

    @property
    def recoverable_after(self) -> int:
        """Redo must be applied beyond this SCN before the file is consistent (M_B's part)."""
        return max(self.checkpoint_change, self.absolute_fuzzy_change or 0)


@dataclass(frozen=True, slots=True)
class RmanStatusRow:
    """V$RMAN_STATUS: a session (level 0), command (1) or recursive operation (2+) of a job."""

    recid: int
    row_level: int
    row_type: str
    command_id: str | None
    operation: str
    status: str
    mbytes_processed: float | None
    start_time: datetime
    end_time: datetime | None
    input_bytes: int | None
    output_bytes: int | None


@dataclass(frozen=True, slots=True)
class LongOpRow:
    """V$SESSION_LONGOPS: one RMAN long operation in progress."""

    sid: int
    serial: int
    opname: str
    sofar: int
    totalwork: int
    units: str | None
    time_remaining: int | None
    elapsed_seconds: int | None

    @property
    def aggregate(self) -> bool:
        return "aggregate" in self.opname.lower()


@dataclass(frozen=True, slots=True)
class RmanProgress:
    """How far an RMAN job has got: its V$RMAN_STATUS rows and RMAN's long operations."""

    statuses: tuple[RmanStatusRow, ...] = ()
    longops: tuple[LongOpRow, ...] = ()

    @property
    def running(self) -> bool:
        return any(s.status.startswith("RUNNING") for s in self.statuses)

    @property
    def failed(self) -> bool:
        return any(s.status in ("FAILED", "COMPLETED WITH ERRORS") for s in self.statuses)

    def done_total(self) -> tuple[int, int] | None:
        """(sofar, totalwork) of the aggregate rows (the whole job), else of all channels."""
        rows = [op for op in self.longops if op.aggregate] or list(self.longops)
        if not rows:
            return None
        return sum(op.sofar for op in rows), sum(op.totalwork for op in rows)

    @property
    def eta_s(self) -> int | None:
        remaining = [op.time_remaining for op in self.longops if op.time_remaining is not None]
        return max(remaining) if remaining else None


# -- mapping (shared with the simulated session) ------------------------------------------------


def as_utc(value: datetime, zone: ZoneInfo | None = None) -> datetime:
    """An aware UTC datetime from a DATE value read in the server's `zone` (naive), or from an
    already aware value."""
    if value.tzinfo is None:
        value = value.replace(tzinfo=zone or UTC)
    return value.astimezone(UTC)


def _opt_utc(value: datetime | None, zone: ZoneInfo | None) -> datetime | None:
    return None if value is None else as_utc(value, zone)


def _opt_int(value: Any) -> int | None:
    return None if value is None else int(value)


def _yes(value: object) -> bool:
    return value == "YES"


def database_from(row: Row) -> DatabaseInfo:
    return DatabaseInfo(
        dbid=int(row["dbid"]),
        name=row["name"],
        db_unique_name=row["db_unique_name"],
        log_mode=row["log_mode"],
        force_logging=row["force_logging"],
        current_scn=int(row["current_scn"]),
        database_role=row["database_role"],
        platform_name=row["platform_name"],
        open_mode=row["open_mode"],
        resetlogs_change=int(row["resetlogs_change#"]),
    )


def incarnation_from(row: Row, zone: ZoneInfo | None = None) -> IncarnationRow:
    return IncarnationRow(
        incarnation=int(row["incarnation#"]),
        resetlogs_change=int(row["resetlogs_change#"]),
        resetlogs_time=as_utc(row["resetlogs_time"], zone),
        resetlogs_id=int(row["resetlogs_id"]),
        prior_incarnation=int(row["prior_incarnation#"] or 0),
        status=row["status"],
    )


def archived_log_from(row: Row, zone: ZoneInfo | None = None) -> ArchivedLogRow:
    return ArchivedLogRow(
        recid=int(row["recid"]),
        dest_id=int(row["dest_id"]),
        name=row["name"],
        thread=int(row["thread#"]),
        sequence=int(row["sequence#"]),
        resetlogs_id=int(row["resetlogs_id"]),
        resetlogs_change=int(row["resetlogs_change#"]),
        first_change=int(row["first_change#"]),
        next_change=int(row["next_change#"]),
        first_time=as_utc(row["first_time"], zone),
        next_time=as_utc(row["next_time"], zone),
        blocks=int(row["blocks"]),
        block_size=int(row["block_size"]),
        completion_time=as_utc(row["completion_time"], zone),
        archived=row["archived"],
        status=row["status"],
        standby_dest=row["standby_dest"],
        deleted=row.get("deleted") or "NO",
    )


def log_history_from(row: Row, zone: ZoneInfo | None = None) -> LogHistoryRow:
    return LogHistoryRow(
        recid=int(row["recid"]),
        thread=int(row["thread#"]),
        sequence=int(row["sequence#"]),
        first_change=int(row["first_change#"]),
        next_change=int(row["next_change#"]),
        first_time=as_utc(row["first_time"], zone),
        resetlogs_change=int(row["resetlogs_change#"]),
    )


def thread_from(row: Row) -> ThreadRow:
    return ThreadRow(
        thread=int(row["thread#"]),
        status=row["status"],
        enabled=row["enabled"],
        sequence=int(row["sequence#"]),
    )


def backup_piece_from(row: Row, zone: ZoneInfo | None = None) -> BackupPieceRow:
    return BackupPieceRow(
        set_stamp=int(row["set_stamp"]),
        set_count=int(row["set_count"]),
        piece=int(row["piece#"]),
        copy=int(row["copy#"]),
        handle=row["handle"],
        tag=row["tag"],
        status=row["status"],
        bytes=int(row["bytes"]),
        compressed=_yes(row["compressed"]),
        encrypted=_yes(row["encrypted"]),
        completion_time=as_utc(row["completion_time"], zone),
        backup_type=row["backup_type"],
        incremental_level=_opt_int(row["incremental_level"]),
    )


def backup_datafile_from(row: Row, zone: ZoneInfo | None = None) -> BackupDatafileRow:
    return BackupDatafileRow(
        set_stamp=int(row["set_stamp"]),
        set_count=int(row["set_count"]),
        file=int(row["file#"]),
        incremental_level=_opt_int(row["incremental_level"]),
        incremental_change=int(row["incremental_change#"]),
        checkpoint_change=int(row["checkpoint_change#"]),
        checkpoint_time=as_utc(row["checkpoint_time"], zone),
        absolute_fuzzy_change=_opt_int(row["absolute_fuzzy_change#"]),
        resetlogs_change=int(row["resetlogs_change#"]),
        completion_time=as_utc(row["completion_time"], zone),
    )


def rman_status_from(row: Row, zone: ZoneInfo | None = None) -> RmanStatusRow:
    mbytes = row["mbytes_processed"]
    return RmanStatusRow(
        recid=int(row["recid"]),
        row_level=int(row["row_level"]),
        row_type=row["row_type"],
        command_id=row["command_id"],
        operation=row["operation"],
        status=row["status"],
        mbytes_processed=None if mbytes is None else float(mbytes),
        start_time=as_utc(row["start_time"], zone),
        end_time=_opt_utc(row["end_time"], zone),
        input_bytes=_opt_int(row["input_bytes"]),
        output_bytes=_opt_int(row["output_bytes"]),
    )


def longop_from(row: Row) -> LongOpRow:
    return LongOpRow(
        sid=int(row["sid"]),
        serial=int(row["serial#"]),
        opname=row["opname"],
        sofar=int(row["sofar"]),
        totalwork=int(row["totalwork"]),
        units=row["units"],
        time_remaining=_opt_int(row["time_remaining"]),
        elapsed_seconds=_opt_int(row["elapsed_seconds"]),
    )


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
        self, thread: int, from_sequence: int, *, resetlogs_change: int | None = None
    ) -> list[LogHistoryRow]:
        """Switches of `thread` from `from_sequence` on, on the incarnation that began at
        `resetlogs_change` (None: the current one)."""
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

    async def execute(self, sql: str) -> None:
        """A statement with no rows (ALTER DATABASE BEGIN BACKUP, ...)."""
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

    async def execute(self, sql: str) -> None:
        cursor = self._connection.cursor()
        try:
            await cursor.execute(sql)
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

    def _execute(self, sql: str) -> None:
        cursor = self._connection.cursor()
        try:
            cursor.execute(sql)
        finally:
            cursor.close()

    async def execute(self, sql: str) -> None:
        async with self._lock:
            await asyncio.to_thread(self._execute, sql)

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
        import oracledb

        link = await self._connected()
        try:
            await link.execute(sql)
            return
        except oracledb.Error as exc:
            error = session_error(exc, f"running {sql}")
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
        self, thread: int, from_sequence: int, *, resetlogs_change: int | None = None
    ) -> list[LogHistoryRow]:
        rows = await self._rows(
            "reading V$LOG_HISTORY",
            LOG_HISTORY_SQL,
            thread=thread,
            from_sequence=from_sequence,
            resetlogs_change=resetlogs_change,
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
