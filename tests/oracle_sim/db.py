"""The simulated Oracle database: one deterministic, file-backed model. Not Oracle.

Everything the simulated toolchain knows lives in one directory (`TIDEMARK_ORACLE_SIM_DIR`):

    state.json   the model below, rewritten atomically (temp file + rename) on every change
    state.lock   an flock taken around every read-modify-write, because the fake `rman`/`expdp`
                 executables are separate processes and a simulated session (python-oracledb's
                 stand-in) works on the same state in-process
    arch/        archived redo logs of destination 1, `<thread>_<sequence>_<resetlogs_id>.arc`
    oradata/     nothing but a place for datafile names to point at

The model, split the way Oracle splits it so that restores behave like restores:

- `controlfile` (`ControlFile`): what V$ views read and what `RESTORE CONTROLFILE` replaces:
  DBID, incarnations (V$DATABASE_INCARNATION), threads' current online log (V$THREAD, V$LOG),
  archived log records (V$ARCHIVED_LOG), log switch history (V$LOG_HISTORY), backup sets with
  their pieces and datafiles (V$BACKUP_SET/_PIECE/_DATAFILE/_REDOLOG) and RMAN job rows
  (V$RMAN_STATUS).
- `datafiles` + `table`: the database's data. One simulated table (`TM_SIM.ORDERS`: id, value)
  lives in datafile 4 (USERS); the other files carry only checkpoints, so fuzziness and
  per-file SCNs are real while the data stays small.
- `online`: redo not yet archived, per thread (changes since the current log began).
- `media`: datafiles restored and being recovered (between `RESTORE DATABASE` and
  `OPEN RESETLOGS`), with the SCN recovery reached and whether every file is consistent.
- `ledger`: every change ever made, on every incarnation. It is outside the simulated database:
  it is the test oracle, from which `expected_contents` says what the table must hold at any
  (SCN, incarnation).
- `injections`: failures queued for the next run of a tool.

Time is tied to SCNs: one SCN per simulated second on each incarnation, starting at that
incarnation's RESETLOGS time, so `time_of`/`scn_at` convert exactly and UNTIL TIME is testable.

Operations (each one locked transaction; a simulated session and the fake tools use only these):

    create(root, *, threads=2, dbid=...)    a new database at root, ARCHIVELOG mode, open
    create_instance(root)                   an instance started NOMOUNT with no database yet
                                            (a migration's new target: RESTORE CONTROLFILE
                                            gives it one)
    from_env()                              the database named by TIDEMARK_ORACLE_SIM_DIR
    insert(value, thread=1) -> Change       one committed row, redo on `thread`, SCN + 1
    advance(scns)                           idle time (SCN and clock move together)
    switch_logfile(thread) -> ArchivedLog   archive the thread's current log (ALTER SYSTEM
                                            SWITCH LOGFILE on that instance)
    archive_log_current() -> [ArchivedLog]  every enabled thread, closed ones too (ALTER SYSTEM
                                            ARCHIVE LOG CURRENT)
    close_thread(thread)                    the thread's instance shuts down (STATUS CLOSED)
    disable_thread(thread)                  ALTER DATABASE DISABLE THREAD (a CLOSED one only:
                                            ORA-01615; recovery needs none of its redo after)
    remove_archived_log(thread, seq, ...)   delete a log's file and mark its record 'D'
    execute(sql)                            the three statements a storage snapshot needs:
                                            ALTER DATABASE BEGIN BACKUP / END BACKUP (every
                                            datafile's checkpoint frozen in between: ORA-01146 /
                                            ORA-01142 when already / not in backup mode) and
                                            ALTER SYSTEM ARCHIVE LOG CURRENT; ALTER SYSTEM
                                            ENABLE / DISABLE RESTRICTED SESSION (a migration's
                                            fence: sessions are not modelled, so a restricted
                                            database refuses every insert with ORA-01035, as if
                                            the workload's sessions were killed and could not log
                                            on again); anything else is ORA-00900
    volume_image() / mount_volume_image(i)  what a storage snapshot of the data volume holds
                                            (datafile headers, blocks, control file), and the
                                            database mounted on a volume made from one, its
                                            files needing media recovery past END BACKUP
    database() / incarnations() / threads() / archived_logs(dest_id) / log_history()
    backup_sets() / backup_pieces() / backup_datafiles() / rman_status()
                                            rows of the V$ views, as plain dicts keyed by the
                                            view's column names (lower case, '#' kept)
    table_contents()                        the live table: {id: value}
    expected_contents(scn, resetlogs_id)    the table as of UNTIL SCN scn on that incarnation's
                                            path (changes with SCN < scn), from the ledger
    time_of(scn, resetlogs_id) / scn_at(t, resetlogs_id)
    inject_failure(tool, lines, exit_code)  the next run of `tool` prints `lines` and exits
    take_injection(tool)                    (the tools) pop the pending failure, if any
    record_run(tool, script) / runs(tool)   every run of a tool, with its script, in order
                                            (`runs.jsonl`: outside the database, like the
                                            ledger; a test asks it whether RMAN ran at all)
    transaction()                           the locked read-modify-write every operation uses

File formats are below (`REDO_MAGIC`, `PIECE_MAGIC`): a 512-byte header block, then JSON. A log
file is exactly (BLOCKS + 1) * BLOCK_SIZE bytes, which is what the archiver checks.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import math
import os
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

ENV_DIR = "TIDEMARK_ORACLE_SIM_DIR"
BLOCK_SIZE = 512
REDO_MAGIC = b"TIDEMARK SIMULATED ORACLE REDO v1\n"
PIECE_MAGIC = b"TIDEMARK SIMULATED ORACLE BACKUP PIECE v1\n"
T0 = datetime(2026, 1, 1, tzinfo=UTC)
"""RESETLOGS time of the first incarnation (SCN 1)."""
FIRST_SCN = 10_000
"""Where a new simulated database's SCN clock starts."""
USERS_FILE = 4
"""The datafile that holds the simulated table."""
DB_NAME = "TMSIM"


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Change(_Model):
    """One committed insert into TM_SIM.ORDERS: redo on `thread`, made at `scn`."""

    id: int
    value: str
    scn: int
    thread: int
    resetlogs_id: int


class Incarnation(_Model):
    incarnation: int
    resetlogs_scn: int
    resetlogs_id: int
    resetlogs_time: datetime
    prior: int
    status: Literal["CURRENT", "PARENT", "ORPHAN"]


class ThreadState(_Model):
    """An instance's redo thread and its current (not yet archived) online log."""

    thread: int
    enabled: bool = True
    status: Literal["OPEN", "CLOSED"] = "OPEN"
    sequence: int
    first_scn: int
    disable_scn: int = 0
    """V$THREAD DISABLE_CHANGE#: where the latest DISABLE THREAD took effect (0: never)."""


class ArchivedLog(_Model):
    """One V$ARCHIVED_LOG row (one copy of one log at one destination)."""

    recid: int
    name: str
    dest_id: int = 1
    thread: int
    sequence: int
    resetlogs_id: int
    resetlogs_scn: int
    resetlogs_time: datetime | None = None
    """With RESETLOGS_CHANGE#, the incarnation's identity (siblings share the SCN)."""
    first_scn: int
    next_scn: int
    first_time: datetime
    next_time: datetime
    blocks: int
    block_size: int = BLOCK_SIZE
    completion_time: datetime
    archived: bool = True
    standby_dest: bool = False
    status: Literal["A", "D", "U", "X"] = "A"


class BackupDatafile(_Model):
    """One V$BACKUP_DATAFILE row; file 0 is the control file."""

    file: int
    checkpoint_scn: int
    absolute_fuzzy_scn: int | None
    incremental_level: int | None
    incremental_scn: int
    resetlogs_id: int


class BackupPiece(_Model):
    piece: int
    handle: str
    bytes: int
    tag: str
    status: Literal["A", "D", "X", "U"] = "A"
    compressed: bool = False
    encrypted: bool = False


class BackupSet(_Model):
    """A backup set: V$BACKUP_SET, its pieces, its datafiles and the logs it holds."""

    recid: int
    stamp: int
    backup_type: Literal["D", "I", "L"]
    incremental_level: int | None
    cumulative: bool = False
    controlfile: bool = False
    spfile: bool = False
    completion_time: datetime
    command_id: str | None
    pieces: list[BackupPiece] = Field(default_factory=list)
    datafiles: list[BackupDatafile] = Field(default_factory=list)
    redologs: list[ArchivedLog] = Field(default_factory=list)


class RmanStatus(_Model):
    """One V$RMAN_STATUS row (COMMAND level only)."""

    recid: int
    command_id: str | None
    operation: str
    status: Literal["RUNNING", "COMPLETED", "FAILED", "COMPLETED WITH WARNINGS"]
    start_time: datetime
    end_time: datetime | None = None
    output_bytes: int = 0


class ControlFile(_Model):
    """What a control file records; `RESTORE CONTROLFILE` replaces all of it."""

    dbid: int
    db_name: str = DB_NAME
    current_incarnation: int = 1
    incarnations: list[Incarnation]
    threads: list[ThreadState]
    archived_logs: list[ArchivedLog] = Field(default_factory=list)
    log_history: list[ArchivedLog] = Field(default_factory=list)
    backup_sets: list[BackupSet] = Field(default_factory=list)
    rman_status: list[RmanStatus] = Field(default_factory=list)
    next_recid: int = 1

    def take_recid(self) -> int:
        self.next_recid += 1
        return self.next_recid - 1

    def incarnation(self, number: int | None = None) -> Incarnation:
        wanted = self.current_incarnation if number is None else number
        for inc in self.incarnations:
            if inc.incarnation == wanted:
                return inc
        raise KeyError(f"no incarnation {wanted}")

    def by_resetlogs_id(self, resetlogs_id: int) -> Incarnation:
        for inc in self.incarnations:
            if inc.resetlogs_id == resetlogs_id:
                return inc
        raise KeyError(f"no incarnation with RESETLOGS_ID {resetlogs_id}")

    def path(self, number: int | None = None) -> list[Incarnation]:
        """The incarnation and its ancestors, newest first."""
        out = [self.incarnation(number)]
        while out[-1].prior:
            out.append(self.incarnation(out[-1].prior))
        return out


class Datafile(_Model):
    file: int
    name: str
    tablespace: str
    bytes: int
    checkpoint_scn: int


class Media(_Model):
    """Datafiles restored from backup and being recovered (not open yet)."""

    rows: dict[int, str]
    checkpoint_scn: dict[int, int]
    fuzzy_scn: dict[int, int]
    recovered_to: int | None = None
    consistent: bool = False
    incarnation: int
    wall: datetime | None = None
    """The latest time the database had seen before the restore began."""


class Injection(_Model):
    tool: str
    lines: list[str]
    exit_code: int = 1


class State(_Model):
    format: Literal[1] = 1
    current_scn: int
    time_zone: str = "UTC"
    """The server's zone (IANA): RMAN reads `SET UNTIL TIME` as a time of this zone, as a real
    server reads it in its own; the model keeps every time in UTC."""
    open_mode: Literal["READ WRITE", "MOUNTED", "STARTED", "SHUTDOWN"] = "READ WRITE"
    controlfile: ControlFile
    datafiles: list[Datafile]
    table: dict[int, str] = Field(default_factory=dict)
    online: dict[int, list[Change]] = Field(default_factory=dict)
    media: Media | None = None
    ledger: list[Change] = Field(default_factory=list)
    injections: list[Injection] = Field(default_factory=list)
    next_row_id: int = 1
    backup_mode: int | None = None
    """ALTER DATABASE BEGIN BACKUP's SCN while the datafiles are in backup mode: their header
    checkpoints stay there while blocks keep changing."""
    thread_disabled_at: dict[int, int] = Field(default_factory=dict)
    """Thread -> the SCN ALTER DATABASE DISABLE THREAD took effect: a marker the redo holds
    (outside the control file, so a backup control file from before it still learns it during
    recovery), past which recovery needs none of that thread's redo."""
    restricted: bool = False
    """ALTER SYSTEM ENABLE RESTRICTED SESSION is in force (V$INSTANCE.LOGINS RESTRICTED)."""
    no_database: bool = False
    """An instance with no database: nothing to mount until RESTORE CONTROLFILE gives it one."""
    database_release: str | None = None
    """The release the restored control file's database was backed up on (None: this
    instance's own): a newer instance opens it only with OPEN RESETLOGS UPGRADE."""
    upgrade_pending: bool = False
    """Opened with OPEN RESETLOGS UPGRADE (V$INSTANCE.STATUS OPEN MIGRATE): the upgrade is next."""
    backup_mode_ends: dict[int, int] = Field(default_factory=dict)
    """BEGIN BACKUP SCN -> END BACKUP SCN of every backup-mode span: the END BACKUP markers
    the redo holds (outside the control file, like the ledger), which a volume restored from
    a snapshot must be recovered past."""

    # -- clock ---------------------------------------------------------------------------------

    def time_of(self, scn: int, resetlogs_id: int | None = None) -> datetime:
        """The time of `scn` on the path of the incarnation `resetlogs_id` (default current)."""
        inc = self._on_path(scn, resetlogs_id)
        return inc.resetlogs_time + timedelta(seconds=scn - inc.resetlogs_scn)

    def scn_at(self, when: datetime, resetlogs_id: int | None = None) -> int:
        """The first SCN whose time is at or after `when`: UNTIL TIME `when` stops before it."""
        cf = self.controlfile
        number = None if resetlogs_id is None else cf.by_resetlogs_id(resetlogs_id).incarnation
        for inc in cf.path(number):
            if when >= inc.resetlogs_time or inc.prior == 0:
                seconds = (when - inc.resetlogs_time).total_seconds()
                return inc.resetlogs_scn + max(0, math.ceil(seconds))
        raise AssertionError("unreachable: the root incarnation takes every time")

    def _on_path(self, scn: int, resetlogs_id: int | None) -> Incarnation:
        cf = self.controlfile
        number = None if resetlogs_id is None else cf.by_resetlogs_id(resetlogs_id).incarnation
        for inc in cf.path(number):
            if scn >= inc.resetlogs_scn:
                return inc
        return cf.path(number)[-1]

    def now(self) -> datetime:
        return self.time_of(self.current_scn)


def datafile_name(root: Path, file: int, tablespace: str) -> str:
    return str(root / "oradata" / f"{tablespace.lower()}{file:02d}.dbf")


def encode_redo(log: ArchivedLog, changes: list[Change]) -> bytes:
    """An archived log file: a header block (identity, as Oracle's header carries it), then the
    redo records, padded to whole blocks. `log.blocks` is set from the body's length."""
    body = "".join(c.model_dump_json() + "\n" for c in changes).encode()
    log.blocks = max(1, math.ceil(len(body) / BLOCK_SIZE))
    header = REDO_MAGIC + log.model_dump_json(include=_REDO_HEADER_FIELDS).encode()
    if len(header) > BLOCK_SIZE:
        raise AssertionError("simulated redo header outgrew its block")
    return header.ljust(BLOCK_SIZE, b"\0") + body.ljust(log.blocks * BLOCK_SIZE, b"\0")


_REDO_HEADER_FIELDS = {
    "thread",
    "sequence",
    "resetlogs_id",
    "resetlogs_scn",
    "resetlogs_time",
    "first_scn",
    "next_scn",
    "first_time",
    "next_time",
    "blocks",
    "block_size",
}


def decode_redo(data: bytes) -> tuple[dict[str, Any], list[Change]]:
    """The header and redo records of an archived log file; ValueError when it is not one."""
    if not data.startswith(REDO_MAGIC) or len(data) < BLOCK_SIZE:
        raise ValueError("not a simulated archived log")
    header = json.loads(data[len(REDO_MAGIC) : BLOCK_SIZE].rstrip(b"\0"))
    body = data[BLOCK_SIZE:].rstrip(b"\0").decode()
    return header, [Change.model_validate_json(line) for line in body.splitlines() if line]


def encode_piece(payload: dict[str, Any]) -> bytes:
    """A backup piece file: a header block, then the JSON payload (what the piece holds)."""
    return PIECE_MAGIC.ljust(BLOCK_SIZE, b"\0") + json.dumps(payload, sort_keys=True).encode()


def decode_piece(data: bytes) -> dict[str, Any]:
    if not data.startswith(PIECE_MAGIC) or len(data) < BLOCK_SIZE:
        raise ValueError("not a simulated backup piece")
    payload: dict[str, Any] = json.loads(data[BLOCK_SIZE:])
    return payload


class SimulatedOracle:
    """A simulated Oracle database in a directory (module docstring). Safe across processes."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.state_path = self.root / "state.json"
        self.arch_dir = self.root / "arch"

    # -- lifecycle -----------------------------------------------------------------------------

    @classmethod
    def create(
        cls,
        root: Path,
        *,
        threads: int = 2,
        dbid: int = 1_234_567_890,
        time_zone: str = "UTC",
    ) -> SimulatedOracle:
        """A new simulated database at `root`, open READ WRITE, every thread at sequence 1."""
        if threads not in (1, 2):
            raise ValueError("the simulator models one or two redo threads")
        db = cls(root)
        (db.root / "arch").mkdir(parents=True, exist_ok=True)
        (db.root / "oradata").mkdir(exist_ok=True)
        first = Incarnation(
            incarnation=1,
            resetlogs_scn=1,
            resetlogs_id=_resetlogs_id(T0),
            resetlogs_time=T0,
            prior=0,
            status="CURRENT",
        )
        files = [(1, "SYSTEM"), (2, "SYSAUX"), (3, "UNDOTBS1"), (USERS_FILE, "USERS")]
        state = State(
            current_scn=FIRST_SCN,
            time_zone=time_zone,
            controlfile=ControlFile(
                dbid=dbid,
                incarnations=[first],
                threads=[
                    ThreadState(thread=t, sequence=1, first_scn=FIRST_SCN)
                    for t in range(1, threads + 1)
                ],
            ),
            datafiles=[
                Datafile(
                    file=n,
                    name=datafile_name(db.root, n, ts),
                    tablespace=ts,
                    bytes=(64 if n == USERS_FILE else 256) * 1024 * 1024,
                    checkpoint_scn=FIRST_SCN,
                )
                for n, ts in files
            ],
            online={t: [] for t in range(1, threads + 1)},
        )
        db._write(state)
        return db

    @classmethod
    def create_instance(cls, root: Path, *, time_zone: str = "UTC") -> SimulatedOracle:
        """An instance started NOMOUNT at `root` that holds no database yet (a new migration
        target): its datafile names are the usual four, under its own oradata/."""
        db = cls.create(root, threads=1, dbid=1, time_zone=time_zone)
        with db.transaction() as st:
            st.no_database = True
            st.open_mode = "STARTED"
            st.controlfile.archived_logs = []
        return db

    @classmethod
    def from_env(cls) -> SimulatedOracle:
        where = os.environ.get(ENV_DIR)
        if not where:
            raise RuntimeError(f"{ENV_DIR} is not set: no simulated Oracle database to use")
        db = cls(Path(where))
        if not db.state_path.exists():
            raise RuntimeError(f"{ENV_DIR}={where} holds no simulated Oracle database")
        return db

    @contextlib.contextmanager
    def transaction(self) -> Iterator[State]:
        """Lock, load, yield the state for changes, and write it back atomically if the block
        finishes without raising (an exception leaves the state as it was)."""
        with open(self.root / "state.lock", "a+b") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                state = State.model_validate_json(self.state_path.read_bytes())
                yield state
                self._write(state)
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    def read(self) -> State:
        """A snapshot of the state (no changes kept)."""
        with self.transaction() as state:
            return state.model_copy(deep=True)

    def _write(self, state: State) -> None:
        tmp = self.state_path.with_suffix(".tmp")
        tmp.write_text(state.model_dump_json(indent=1))
        os.replace(tmp, self.state_path)

    # -- workload ------------------------------------------------------------------------------

    def insert(self, value: str, *, thread: int = 1) -> Change:
        with self.transaction() as st:
            return insert_row(st, value, thread=thread)

    def advance(self, scns: int) -> int:
        with self.transaction() as st:
            _require_open(st)
            st.current_scn += scns
            return st.current_scn

    def switch_logfile(self, thread: int = 1) -> ArchivedLog:
        with self.transaction() as st:
            return switch_logfile(st, self.arch_dir, thread)

    def archive_log_current(self) -> list[ArchivedLog]:
        with self.transaction() as st:
            return archive_log_current(st, self.arch_dir)

    def close_thread(self, thread: int) -> None:
        """The thread's instance shuts down cleanly: V$THREAD STATUS CLOSED, still ENABLED. It
        takes no commits; ARCHIVE LOG CURRENT on a surviving instance still archives its
        current log, so its chain keeps up with the others."""
        with self.transaction() as st:
            _require_open(st)
            _thread(st, thread).status = "CLOSED"

    def disable_thread(self, thread: int) -> None:
        """ALTER DATABASE DISABLE THREAD: only a CLOSED thread (else ORA-01615). Its current
        log is archived first, then V$THREAD says DISABLED and recovery past this point needs
        none of its redo."""
        with self.transaction() as st:
            _require_open(st)
            ts = _thread(st, thread)
            if ts.status != "CLOSED":
                raise SimulatedOracleError(
                    f"ORA-01615: instance of thread {thread} is mounted - cannot disable"
                )
            log = switch_logfile(st, self.arch_dir, thread)
            ts.enabled = False
            ts.disable_scn = log.next_scn
            st.thread_disabled_at[thread] = log.next_scn

    def remove_archived_log(
        self, thread: int, sequence: int, resetlogs_id: int | None = None
    ) -> None:
        """Lose a log: its file is deleted and its record marked deleted (a real gap)."""
        with self.transaction() as st:
            rid = resetlogs_id or st.controlfile.incarnation().resetlogs_id
            for log in st.controlfile.archived_logs:
                if (log.thread, log.sequence, log.resetlogs_id) == (thread, sequence, rid):
                    Path(log.name).unlink(missing_ok=True)
                    log.status = "D"

    # -- SQL a storage snapshot needs -----------------------------------------------------------

    def execute(self, sql: str) -> None:
        """One statement of the three the simulator runs (module docstring), spelled exactly."""
        with self.transaction() as st:
            _require_open(st)
            if sql == "ALTER DATABASE BEGIN BACKUP":
                if st.backup_mode is not None:
                    raise SimulatedOracleError(
                        "ORA-01146: cannot start online backup - file 1 is already in backup"
                    )
                st.backup_mode = st.current_scn
                for df in st.datafiles:
                    df.checkpoint_scn = st.current_scn
                st.current_scn += 1
            elif sql == "ALTER DATABASE END BACKUP":
                if st.backup_mode is None:
                    raise SimulatedOracleError(
                        "ORA-01142: cannot end online backup - none of the files are in backup"
                    )
                st.backup_mode_ends[st.backup_mode] = st.current_scn
                st.backup_mode = None
                st.current_scn += 1
            elif sql == "ALTER SYSTEM ARCHIVE LOG CURRENT":
                archive_log_current(st, self.arch_dir)
            elif sql == "ALTER SYSTEM ENABLE RESTRICTED SESSION":
                st.restricted = True
            elif sql == "ALTER SYSTEM DISABLE RESTRICTED SESSION":
                st.restricted = False
            else:
                raise SimulatedOracleError(
                    f"ORA-00900: invalid SQL statement (the simulator runs no {sql!r})"
                )

    def volume_image(self) -> dict[str, Any]:
        """What a storage snapshot of the data volume holds now: the table's blocks as they
        are (changes up to the current SCN), the datafile headers (frozen at BEGIN BACKUP in
        backup mode, else a crash image) and the control file."""
        st = self.read()
        return {
            "rows": {str(k): v for k, v in st.table.items()},
            "checkpoint_scn": {str(d.file): d.checkpoint_scn for d in st.datafiles},
            "taken_at_scn": st.current_scn,
            "backup_mode": st.backup_mode,
            "controlfile": st.controlfile.model_dump(mode="json"),
        }

    def mount_volume_image(self, image: dict[str, Any]) -> None:
        """The instance is down and its data volume is now one made from a snapshot: the
        control file and datafiles are the image's, and the files need media recovery. A file
        copied in backup mode is consistent only past its span's END BACKUP (if the redo holds
        none, never: ORA-01194 at OPEN); a crash image, past the moment it was taken."""
        with self.transaction() as st:
            begin = image["backup_mode"]
            fuzzy = (
                image["taken_at_scn"] if begin is None else st.backup_mode_ends.get(begin, 1 << 62)
            )
            st.controlfile = ControlFile.model_validate(image["controlfile"])
            checkpoints = {int(f): int(scn) for f, scn in image["checkpoint_scn"].items()}
            st.media = Media(
                rows={int(k): v for k, v in image["rows"].items()},
                checkpoint_scn=checkpoints,
                fuzzy_scn=dict.fromkeys(checkpoints, fuzzy),
                incarnation=st.controlfile.current_incarnation,
                wall=st.now(),
            )
            st.backup_mode = None
            st.open_mode = "SHUTDOWN"

    # -- views ---------------------------------------------------------------------------------

    def database(self) -> dict[str, Any]:
        st = self.read()
        cf = st.controlfile
        inc = cf.incarnation()
        return {
            "dbid": cf.dbid,
            "name": cf.db_name,
            "db_unique_name": cf.db_name,
            "log_mode": "ARCHIVELOG",
            "force_logging": "YES",
            "current_scn": st.current_scn,
            "resetlogs_change#": inc.resetlogs_scn,
            "resetlogs_id": inc.resetlogs_id,
            "open_mode": st.open_mode,
            "database_role": "PRIMARY",
            "platform_id": 13,
            "platform_name": "Linux x86 64-bit",
        }

    def incarnations(self) -> list[dict[str, Any]]:
        return [
            {
                "incarnation#": i.incarnation,
                "resetlogs_change#": i.resetlogs_scn,
                "resetlogs_time": i.resetlogs_time,
                "resetlogs_id": i.resetlogs_id,
                "prior_incarnation#": i.prior,
                "status": i.status,
            }
            for i in self.read().controlfile.incarnations
        ]

    def threads(self) -> list[dict[str, Any]]:
        return [
            {
                "thread#": t.thread,
                "enabled": "PUBLIC" if t.enabled else "DISABLED",
                "status": t.status,
                "sequence#": t.sequence,
                "checkpoint_change#": t.first_scn,
                "enable_change#": FIRST_SCN,
                "disable_change#": t.disable_scn,
            }
            for t in self.read().controlfile.threads
        ]

    def archived_logs(self, dest_id: int = 1) -> list[dict[str, Any]]:
        cf = self.read().controlfile
        return [_log_row(x, cf) for x in cf.archived_logs if x.dest_id == dest_id]

    def log_history(self) -> list[dict[str, Any]]:
        """V$LOG_HISTORY rows. The real view has no RESETLOGS_ID: an incarnation is named by
        RESETLOGS_CHANGE# and RESETLOGS_TIME; `resetlogs_id` is here for the simulator only."""
        cf = self.read().controlfile
        return [_log_row(x, cf) for x in cf.log_history]

    def backup_sets(self) -> list[BackupSet]:
        return list(self.read().controlfile.backup_sets)

    def backup_pieces(self) -> list[dict[str, Any]]:
        return [
            {
                "set_stamp": s.stamp,
                "piece#": p.piece,
                "handle": p.handle,
                "tag": p.tag,
                "status": p.status,
                "bytes": p.bytes,
                "compressed": "YES" if p.compressed else "NO",
                "encrypted": "YES" if p.encrypted else "NO",
                "completion_time": s.completion_time,
            }
            for s in self.backup_sets()
            for p in s.pieces
        ]

    def backup_datafiles(self) -> list[dict[str, Any]]:
        return [
            {
                "set_stamp": s.stamp,
                "file#": d.file,
                "incremental_level": d.incremental_level,
                "incremental_change#": d.incremental_scn,
                "checkpoint_change#": d.checkpoint_scn,
                "absolute_fuzzy_change#": d.absolute_fuzzy_scn,
                "resetlogs_id": d.resetlogs_id,
                "completion_time": s.completion_time,
                "tag": s.pieces[0].tag if s.pieces else None,
            }
            for s in self.backup_sets()
            for d in s.datafiles
        ]

    def rman_status(self) -> list[RmanStatus]:
        return list(self.read().controlfile.rman_status)

    # -- the test oracle -----------------------------------------------------------------------

    def table_contents(self) -> dict[int, str]:
        return dict(self.read().table)

    def expected_contents(self, scn: int, resetlogs_id: int | None = None) -> dict[int, str]:
        """What the table holds after recovery UNTIL SCN `scn` on the path of `resetlogs_id`
        (default: the current incarnation), from the ledger of every change ever made."""
        st = self.read()
        cf = st.controlfile
        number = None if resetlogs_id is None else cf.by_resetlogs_id(resetlogs_id).incarnation
        limit: dict[int, int] = {}
        upper = scn
        for inc in cf.path(number):
            limit[inc.resetlogs_id] = upper
            upper = inc.resetlogs_scn
        return {
            c.id: c.value
            for c in st.ledger
            if c.resetlogs_id in limit and c.scn < limit[c.resetlogs_id]
        }

    def time_of(self, scn: int, resetlogs_id: int | None = None) -> datetime:
        return self.read().time_of(scn, resetlogs_id)

    def scn_at(self, when: datetime, resetlogs_id: int | None = None) -> int:
        return self.read().scn_at(when, resetlogs_id)

    # -- failure injection ---------------------------------------------------------------------

    def inject_failure(self, tool: str, lines: list[str], exit_code: int = 1) -> None:
        with self.transaction() as st:
            st.injections.append(Injection(tool=tool, lines=lines, exit_code=exit_code))

    def take_injection(self, tool: str) -> Injection | None:
        with self.transaction() as st:
            for i, inj in enumerate(st.injections):
                if inj.tool == tool:
                    return st.injections.pop(i)
        return None

    # -- runs ----------------------------------------------------------------------------------

    def record_run(self, tool: str, script: str) -> None:
        """(the tools) Note one run of `tool`, before it does anything (an injected failure is
        a run too)."""
        line = json.dumps({"tool": tool, "script": script}) + "\n"
        with self.transaction(), (self.root / "runs.jsonl").open("a") as out:
            out.write(line)

    def runs(self, tool: str = "rman") -> list[str]:
        """The scripts of every run of `tool`, oldest first."""
        path = self.root / "runs.jsonl"
        if not path.exists():
            return []
        rows = [json.loads(line) for line in path.read_text().splitlines() if line]
        return [r["script"] for r in rows if r["tool"] == tool]


# -- state transitions shared by the API and the fake tools --------------------------------------


def _require_open(st: State) -> None:
    if st.open_mode != "READ WRITE":
        raise SimulatedOracleError("ORA-01109: database not open")


class SimulatedOracleError(RuntimeError):
    """A simulated ORA-/RMAN- error; the message starts with the code."""


def _thread(st: State, thread: int) -> ThreadState:
    for ts in st.controlfile.threads:
        if ts.thread == thread:
            return ts
    raise SimulatedOracleError(f"ORA-01507: thread {thread} is not enabled in the simulation")


def insert_row(st: State, value: str, *, thread: int = 1) -> Change:
    _require_open(st)
    if thread not in st.online:
        raise SimulatedOracleError(f"ORA-01507: thread {thread} is not enabled in the simulation")
    ts = _thread(st, thread)
    if ts.status != "OPEN" or not ts.enabled:
        raise SimulatedOracleError(f"ORA-01089: the instance of thread {thread} is not open")
    if st.restricted:
        raise SimulatedOracleError(
            "ORA-01035: ORACLE only available to users with RESTRICTED SESSION privilege"
        )
    change = Change(
        id=st.next_row_id,
        value=value,
        scn=st.current_scn,
        thread=thread,
        resetlogs_id=st.controlfile.incarnation().resetlogs_id,
    )
    st.next_row_id += 1
    st.current_scn += 1
    st.table[change.id] = value
    st.online[thread].append(change)
    st.ledger.append(change)
    return change


def switch_logfile(st: State, arch_dir: Path, thread: int) -> ArchivedLog:
    """Archive `thread`'s current log as [first, current SCN) and start the next sequence."""
    _require_open(st)
    cf = st.controlfile
    ts = _thread(st, thread)
    if not ts.enabled:
        raise SimulatedOracleError(f"ORA-01507: thread {thread} is disabled")
    inc = cf.incarnation()
    next_scn = st.current_scn
    name = arch_dir / f"{thread}_{ts.sequence}_{inc.resetlogs_id}.arc"
    log = ArchivedLog(
        recid=cf.take_recid(),
        name=str(name),
        thread=thread,
        sequence=ts.sequence,
        resetlogs_id=inc.resetlogs_id,
        resetlogs_scn=inc.resetlogs_scn,
        resetlogs_time=inc.resetlogs_time,
        first_scn=ts.first_scn,
        next_scn=next_scn,
        first_time=st.time_of(ts.first_scn),
        next_time=st.time_of(next_scn),
        blocks=1,
        completion_time=st.time_of(next_scn),
    )
    name.write_bytes(encode_redo(log, st.online[thread]))
    st.online[thread] = []
    cf.archived_logs.append(log)
    cf.log_history.append(log)
    ts.sequence += 1
    ts.first_scn = next_scn
    st.current_scn += 1  # the switch itself is a change
    return log


def archive_log_current(st: State, arch_dir: Path) -> list[ArchivedLog]:
    # Every enabled thread, CLOSED ones too: a surviving instance archives a closed thread's
    # current log (what keeps a RAC database's threads' chains level).
    return [switch_logfile(st, arch_dir, t.thread) for t in st.controlfile.threads if t.enabled]


def _resetlogs_id(when: datetime) -> int:
    """Oracle derives RESETLOGS_ID from the RESETLOGS time; so does the simulator."""
    return int((when - datetime(1988, 1, 1, tzinfo=UTC)).total_seconds())


def new_resetlogs_id(when: datetime) -> int:
    return _resetlogs_id(when)


def _log_row(x: ArchivedLog, cf: ControlFile) -> dict[str, Any]:
    when = x.resetlogs_time
    if when is None:
        known = [i for i in cf.incarnations if i.resetlogs_id == x.resetlogs_id]
        when = known[0].resetlogs_time if known else None
    return {
        "recid": x.recid,
        "name": x.name,
        "dest_id": x.dest_id,
        "thread#": x.thread,
        "sequence#": x.sequence,
        "resetlogs_id": x.resetlogs_id,
        "resetlogs_change#": x.resetlogs_scn,
        "resetlogs_time": when,
        "first_change#": x.first_scn,
        "next_change#": x.next_scn,
        "first_time": x.first_time,
        "next_time": x.next_time,
        "blocks": x.blocks,
        "block_size": x.block_size,
        "completion_time": x.completion_time,
        "archived": "YES" if x.archived else "NO",
        "standby_dest": "YES" if x.standby_dest else "NO",
        "status": x.status,
    }
