"""The V$ views the Oracle engine reads: each statement as text, each row as a typed record,
and the mapping from a fetched row (by lower-case column name) to that record.

The real session (`session.py`) and the simulated one in the tests share these, so a column
renamed here is renamed for both. Every statement uses bind variables only. DATE values arrive
in the server's time zone; the `*_from` mappers make them aware UTC datetimes (`as_utc`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from zoneinfo import ZoneInfo

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
SELECT h.recid, h.thread#, h.sequence#, h.first_change#, h.next_change#, h.first_time,
       h.resetlogs_change#, h.resetlogs_time
  FROM v$log_history h
  JOIN v$database_incarnation i
    ON i.resetlogs_change# = h.resetlogs_change# AND i.resetlogs_time = h.resetlogs_time
 WHERE h.thread# = :thread AND h.sequence# >= :from_sequence
   AND (i.resetlogs_id = :resetlogs_id OR (:resetlogs_id IS NULL AND i.status = 'CURRENT'))
 ORDER BY h.sequence#"""
"""Log switches of one thread on one incarnation, named by its RESETLOGS_ID (NULL: the current
one). V$LOG_HISTORY has no RESETLOGS_ID and its RESETLOGS_CHANGE# alone is not an identity: two
restores to the same SCN make sibling incarnations with equal RESETLOGS_CHANGE#, told apart by
RESETLOGS_TIME, so the incarnation is joined on both. Every switch leaves a row, so this is the
truth a destination is checked against for gaps."""

THREADS_SQL = """\
SELECT thread#, status, enabled, sequence#, enable_change#, disable_change#
  FROM v$thread
 ORDER BY thread#"""
"""The redo threads of the current incarnation: ENABLED says whether recovery needs the thread's
redo (DISABLED: no; PUBLIC or PRIVATE: yes, whether its instance is OPEN or CLOSED), and
ENABLE_CHANGE# / DISABLE_CHANGE# where the latest enable and disable took effect (0: never)."""

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
       d.resetlogs_time, d.completion_time
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
       d.resetlogs_time, d.completion_time
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
    resetlogs_time: datetime | None = None


@dataclass(frozen=True, slots=True)
class ThreadRow:
    """V$THREAD: a redo thread (one per RAC instance), ENABLED DISABLED/PRIVATE/PUBLIC."""

    thread: int
    status: str
    enabled: str
    sequence: int
    #: ENABLE_CHANGE# and DISABLE_CHANGE#: the SCNs of the latest enable and disable; None
    #: where the view says 0 (never) or the row predates them.
    enable_change: int | None = None
    disable_change: int | None = None

    @property
    def is_enabled(self) -> bool:
        """Recovery needs this thread's redo: an enabled thread counts whether its instance is
        OPEN or CLOSED (a closed thread's current log is archived by a surviving instance)."""
        return self.enabled != "DISABLED"

    @property
    def disabled_at(self) -> int | None:
        """Where the thread's redo stops while it is disabled (DISABLE_CHANGE#); None when it
        is enabled, or disabled where the view does not say."""
        return None if self.is_enabled else self.disable_change

    @property
    def reenabled_at(self) -> int | None:
        """Where the redo of an enabled thread resumed after its latest disable (ENABLE_CHANGE#
        past DISABLE_CHANGE#); None for a thread never disabled or disabled now."""
        if not self.is_enabled or self.disable_change is None or self.enable_change is None:
            return None
        return self.enable_change if self.enable_change > self.disable_change else None


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
    #: With RESETLOGS_CHANGE#, the incarnation the file belongs to (siblings share the SCN).
    resetlogs_time: datetime | None = None

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
        resetlogs_time=_opt_utc(row.get("resetlogs_time"), zone),
    )


def thread_from(row: Row) -> ThreadRow:
    return ThreadRow(
        thread=int(row["thread#"]),
        status=row["status"],
        enabled=row["enabled"],
        sequence=int(row["sequence#"]),
        enable_change=int(row.get("enable_change#") or 0) or None,
        disable_change=int(row.get("disable_change#") or 0) or None,
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
        resetlogs_time=_opt_utc(row.get("resetlogs_time"), zone),
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
