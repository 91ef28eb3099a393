"""The simulated `rman`: runs the exact script forms `services/engines/oracle/scripts.py` emits
against the simulated database (`db.py`). Not RMAN.

Anything else is refused loudly, as RMAN refuses a bad script: an RMAN-00558 stack and exit
status 1, so a builder that drifts from what the simulator understands fails a test instead of
being silently "executed". Like RMAN reading a command file, the first error ends the run.
"""

from __future__ import annotations

import calendar
import math
import re
import sys
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

from tests.oracle_sim.db import (
    DB_NAME,
    USERS_FILE,
    ArchivedLog,
    BackupDatafile,
    BackupPiece,
    BackupSet,
    ControlFile,
    Incarnation,
    Media,
    RmanStatus,
    SimulatedOracle,
    State,
    ThreadState,
    archive_log_current,
    decode_piece,
    decode_redo,
    encode_piece,
    insert_row,
    new_resetlogs_id,
)

SEP = "RMAN-00571: ==========================================================="
HEAD = "RMAN-00569: =============== ERROR MESSAGE STACK FOLLOWS ==============="


def error_stack(*lines: str) -> list[str]:
    """An RMAN error stack around `lines` (what RMAN prints before exiting with 1)."""
    return [SEP, HEAD, SEP, *lines]


class RmanError(Exception):
    def __init__(self, *lines: str) -> None:
        super().__init__(lines[0] if lines else "")
        self.lines = list(lines)


_Q = r"'([^']*)'"
_TOP = {
    "configure_autobackup": re.compile(r"CONFIGURE CONTROLFILE AUTOBACKUP ON"),
    "set_compression": re.compile(r"SET COMPRESSION ALGORITHM '(BASIC|LOW|MEDIUM|HIGH)'"),
    "set_encryption": re.compile(r"SET ENCRYPTION (ON|OFF)"),
    "set_dbid": re.compile(r"SET DBID (\d+)"),
    "startup_nomount": re.compile(r"STARTUP FORCE NOMOUNT"),
    "startup_mount": re.compile(r"STARTUP FORCE MOUNT"),
    "restore_controlfile": re.compile(rf"RESTORE CONTROLFILE FROM {_Q}"),
    "mount": re.compile(r"ALTER DATABASE MOUNT"),
    "catalog": re.compile(rf"CATALOG START WITH {_Q} NOPROMPT"),
    "reset_incarnation": re.compile(r"RESET DATABASE TO INCARNATION (\d+)"),
    "open_resetlogs": re.compile(r"ALTER DATABASE OPEN RESETLOGS"),
    "open_resetlogs_upgrade": re.compile(r"ALTER DATABASE OPEN RESETLOGS UPGRADE"),
}
_RUN = {
    "command_id": re.compile(rf"SET COMMAND ID TO {_Q}"),
    "allocate": re.compile(rf"ALLOCATE CHANNEL (ch\d+) DEVICE TYPE DISK(?: FORMAT {_Q})?"),
    "autobackup_format": re.compile(
        rf"SET CONTROLFILE AUTOBACKUP FORMAT FOR DEVICE TYPE DISK TO {_Q}"
    ),
    "backup_database": re.compile(
        r"BACKUP AS (COMPRESSED )?BACKUPSET(?: INCREMENTAL LEVEL ([01])( CUMULATIVE)?)?"
        rf"(?: SECTION SIZE (\d+)M)? DATABASE TAG {_Q}( PLUS ARCHIVELOG)?"
    ),
    "backup_controlfile": re.compile(rf"BACKUP CURRENT CONTROLFILE TAG {_Q}"),
    "backup_spfile": re.compile(rf"BACKUP SPFILE TAG {_Q}"),
    "until_scn": re.compile(r"SET UNTIL SCN (\d+)"),
    "until_time": re.compile(
        r"SET UNTIL TIME \"TO_DATE\('(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d)','YYYY-MM-DD HH24:MI:SS'\)\""
    ),
    "until_sequence": re.compile(r"SET UNTIL SEQUENCE (\d+) THREAD (\d+)"),
    "restore_database": re.compile(r"RESTORE DATABASE"),
    "recover_database": re.compile(r"RECOVER DATABASE"),
    "recover_until_scn": re.compile(r"RECOVER DATABASE UNTIL SCN (\d+)"),
    "preview": re.compile(r"RESTORE DATABASE PREVIEW"),
    "validate_restore": re.compile(r"RESTORE DATABASE VALIDATE"),
    "validate_database": re.compile(r"VALIDATE CHECK LOGICAL DATABASE"),
}


@dataclass
class Statement:
    kind: str
    args: tuple[str | None, ...]
    text: str


@dataclass
class Block:
    statements: list[Statement]


def parse(script: str) -> list[Statement | Block]:
    """Statements and RUN blocks, or an RmanError (RMAN-00558) for anything unexpected."""
    out: list[Statement | Block] = []
    block: list[Statement] | None = None
    for number, raw in enumerate(script.splitlines(), 1):
        line = raw.strip()
        if not line:
            continue
        if line == "RUN {" and block is None:
            block = []
            continue
        if line == "}" and block is not None:
            out.append(Block(block))
            block = None
            continue
        table = _RUN if block is not None else _TOP
        stmt = _match(table, line, number)
        if block is not None:
            block.append(stmt)
        else:
            out.append(stmt)
    if block is not None:
        raise RmanError(
            "RMAN-00558: error encountered while parsing input commands",
            'RMAN-01009: syntax error: found "end-of-file": expecting "}"',
        )
    return out


def _match(table: dict[str, re.Pattern[str]], line: str, number: int) -> Statement:
    if line.endswith(";"):
        body = line[:-1]
        for kind, pattern in table.items():
            m = pattern.fullmatch(body)
            if m:
                return Statement(kind, m.groups(), line)
    raise RmanError(
        "RMAN-00558: error encountered while parsing input commands",
        f"RMAN-01009: syntax error: the simulated rman does not accept line {number}: {line!r}",
    )


@dataclass
class Session:
    db: SimulatedOracle
    out: list[str] = field(default_factory=list)
    command_id: str | None = None
    channels: dict[str, str | None] = field(default_factory=dict)
    autobackup_format: str | None = None
    autobackup_on: bool = False
    compression: str | None = None
    encryption: bool = False
    until: tuple[str, tuple[int, ...]] | None = None
    status_recid: int | None = None

    def say(self, line: str) -> None:
        print(line, flush=True)


def main(argv: list[str]) -> int:
    db = SimulatedOracle.from_env()
    script = _script_from_argv(argv)
    db.record_run("rman", script)
    print("Recovery Manager: Release 19.0.0.0.0 - SIMULATED (Tidemark test toolchain, not Oracle)")
    injection = db.take_injection("rman")
    if injection is not None:
        for line in injection.lines:
            print(line, flush=True)
        print("Recovery Manager complete.")
        return injection.exit_code
    st = db.read()
    if st.no_database:
        print(f"connected to target database: {DB_NAME} (not mounted)", flush=True)
    else:
        print(f"connected to target database: {DB_NAME} (DBID={st.controlfile.dbid})", flush=True)
    session = Session(db)
    try:
        program = parse(script)
        for item in program:
            if isinstance(item, Block):
                _run_block(session, item)
            else:
                _run_top(session, item)
    except RmanError as exc:
        for line in error_stack(*exc.lines):
            print(line, flush=True)
        _finish_status(session, "FAILED")
        print("Recovery Manager complete.")
        return 1
    _finish_status(session, "COMPLETED")
    print("Recovery Manager complete.")
    return 0


def _script_from_argv(argv: list[str]) -> str:
    # Exactly what the runner passes: target <connect> nocatalog cmdfile=<path>
    if len(argv) != 4 or argv[0] != "target" or argv[2] != "nocatalog":
        print(f"simulated rman: unexpected arguments {argv!r}", file=sys.stderr)
        raise SystemExit(2)
    if not argv[3].startswith("cmdfile="):
        raise SystemExit(2)
    return Path(argv[3].removeprefix("cmdfile=")).read_text()


# -- top level ----------------------------------------------------------------------------------


def _run_top(s: Session, stmt: Statement) -> None:
    a = stmt.args
    with s.db.transaction() as st:
        if stmt.kind == "configure_autobackup":
            s.autobackup_on = True
            s.say("new RMAN configuration parameters are successfully stored")
        elif stmt.kind == "set_compression":
            s.compression = a[0]
            s.say("executing command: SET COMPRESSION ALGORITHM")
        elif stmt.kind == "set_encryption":
            s.encryption = a[0] == "ON"
            s.say("executing command: SET encryption")
        elif stmt.kind == "set_dbid":
            # An instance with no database takes any DBID: it names the backups to restore.
            if not st.no_database and int(a[0] or 0) != st.controlfile.dbid:
                raise RmanError("RMAN-06195: the DBID of the database does not match SET DBID")
            s.say("executing command: SET DBID")
        elif stmt.kind == "startup_nomount":
            s.say("Oracle instance started")
            st.media = Media(
                rows={}, checkpoint_scn={}, fuzzy_scn={}, incarnation=0, wall=_wall(st)
            )
            st.open_mode = "STARTED"
        elif stmt.kind == "startup_mount":
            # Mounts whatever control file and datafiles are in place: after a volume was made
            # from a snapshot (`mount_volume_image`), those need recovery (st.media).
            s.say("Oracle instance started")
            s.say("database mounted")
            st.open_mode = "MOUNTED"
        elif stmt.kind == "restore_controlfile":
            _restore_controlfile(s, st, a[0] or "")
        elif stmt.kind == "mount":
            if st.open_mode != "STARTED":
                raise RmanError(
                    "RMAN-03002: failure of sql statement command",
                    "ORA-01100: database already mounted",
                )
            st.open_mode = "MOUNTED"
            s.say("Statement processed")
        elif stmt.kind == "catalog":
            _catalog(s, st, a[0] or "")
        elif stmt.kind == "reset_incarnation":
            _reset_incarnation(s, st, int(a[0] or 0))
        elif stmt.kind == "open_resetlogs":
            _open_resetlogs(s, st)
        elif stmt.kind == "open_resetlogs_upgrade":
            _open_resetlogs(s, st, upgrade=True)


def _wall(st: State) -> datetime:
    """The latest moment the simulated database has seen (new incarnations start after it)."""
    times = [st.now()] + [x.next_time for x in st.controlfile.archived_logs]
    if st.media is not None and st.media.wall is not None:
        times.append(st.media.wall)
    return max(times)


def _read_piece(handle: str, command: str) -> dict[str, Any]:
    try:
        return decode_piece(Path(handle).read_bytes())
    except FileNotFoundError:
        raise RmanError(
            f"RMAN-03002: failure of {command} command",
            f'ORA-19505: failed to identify file "{handle}"',
            "ORA-27037: unable to obtain file status",
        ) from None
    except ValueError:
        raise RmanError(
            f"RMAN-03002: failure of {command} command",
            f"ORA-19870: error while restoring backup piece {handle}",
            "ORA-19599: block number 1 is corrupt in backup piece",
        ) from None


def _restore_controlfile(s: Session, st: State, handle: str) -> None:
    if st.open_mode != "STARTED":
        raise RmanError(
            "RMAN-03002: failure of restore command",
            "ORA-01507: database not mounted or instance not started NOMOUNT",
        )
    payload = _read_piece(handle, "restore")
    if "controlfile" not in payload:
        raise RmanError(
            "RMAN-03002: failure of restore command",
            f"ORA-19697: {handle} does not contain a control file backup",
        )
    release = payload.get("release")
    if release is not None and _release_key(release) > _release_key(instance_release(s.db)):
        # The control file of a newer release cannot be mounted by this older software.
        raise RmanError(
            "RMAN-03002: failure of restore command",
            f"ORA-00201: control file version {release} incompatible with ORACLE version "
            f"{instance_release(s.db)}",
        )
    s.say("channel ORA_DISK_1: restoring control file")
    st.controlfile = ControlFile.model_validate(payload["controlfile"])
    st.no_database = False
    st.database_release = release
    s.say("output file name=" + str(s.db.root / "oradata" / "control01.ctl"))


def instance_release(db: SimulatedOracle) -> str:
    """The release of this instance's software (its profile's version)."""
    from tests.oracle_sim.sql import Profile

    return Profile.load(db).version


def _release_key(release: str) -> tuple[int, ...]:
    return tuple(int(x) for x in release.split(".") if x.isdigit())


def _catalog(s: Session, st: State, prefix: str) -> None:
    if st.open_mode not in ("MOUNTED", "READ WRITE"):
        raise RmanError("RMAN-03002: failure of catalog command", "ORA-01507: database not mounted")
    s.say(f"searching for all files that match the pattern {prefix}")
    root = Path(prefix)
    files = sorted(p for p in root.rglob("*") if p.is_file()) if root.is_dir() else []
    cf = st.controlfile
    cataloged: list[str] = []
    for path in files:
        data = path.read_bytes()
        try:
            header, _ = decode_redo(data)
        except ValueError:
            header = None
        if header is not None:
            _catalog_log(cf, path, header)
            cataloged.append(str(path))
            continue
        try:
            payload = decode_piece(data)
        except ValueError:
            s.say(f"File Name: {path}")
            s.say("  RMAN-07518: Reason: Foreign database file DBID: 0  Database Name: ")
            continue
        if _catalog_piece(cf, path, payload):
            cataloged.append(str(path))
    s.say("cataloging files...")
    s.say("cataloging done")
    s.say("")
    s.say("List of Cataloged Files")
    s.say("=======================")
    for name in cataloged:
        s.say(f"File Name: {name}")


def _catalog_log(cf: ControlFile, path: Path, header: dict[str, Any]) -> None:
    key = (header["thread"], header["sequence"], header["resetlogs_id"])
    for log in cf.archived_logs:
        if (log.thread, log.sequence, log.resetlogs_id) == key:
            log.name, log.status = str(path), "A"
            return
    if not any(i.resetlogs_id == header["resetlogs_id"] for i in cf.incarnations):
        # A log of an incarnation this control file has not seen: register the branch (its
        # parent is the incarnation that holds its RESETLOGS SCN on the current path).
        parent = next(i for i in cf.path() if i.resetlogs_scn <= header["resetlogs_scn"])
        cf.incarnations.append(
            Incarnation(
                incarnation=max(i.incarnation for i in cf.incarnations) + 1,
                resetlogs_scn=header["resetlogs_scn"],
                resetlogs_id=header["resetlogs_id"],
                resetlogs_time=datetime.fromisoformat(
                    header.get("resetlogs_time") or header["first_time"]
                ),
                prior=parent.incarnation,
                status="ORPHAN",
            )
        )
    cf.archived_logs.append(
        ArchivedLog(
            recid=cf.take_recid(),
            name=str(path),
            completion_time=header["next_time"],
            **{k: v for k, v in header.items() if k != "blocks"},
            blocks=header["blocks"],
        )
    )


def _catalog_piece(cf: ControlFile, path: Path, payload: dict[str, Any]) -> bool:
    if payload.get("dbid") != cf.dbid:
        return False
    bset = BackupSet.model_validate(payload["set"])
    for known in cf.backup_sets:
        if known.stamp == bset.stamp:
            for piece in known.pieces:
                if piece.piece == payload["piece"]:
                    piece.handle, piece.status = str(path), "A"
            return True
    for piece in bset.pieces:
        if piece.piece == payload["piece"]:
            piece.handle = str(path)
    cf.backup_sets.append(bset)
    return True


def _reset_incarnation(s: Session, st: State, number: int) -> None:
    cf = st.controlfile
    if st.open_mode != "MOUNTED":
        raise RmanError("RMAN-03002: failure of reset command", "ORA-01507: database not mounted")
    if not any(i.incarnation == number for i in cf.incarnations):
        raise RmanError(
            "RMAN-03002: failure of reset command",
            "RMAN-20003: target database incarnation not found in recovery catalog",
        )
    cf.current_incarnation = number
    on_path = {i.incarnation for i in cf.path()}
    for inc in cf.incarnations:
        inc.status = (
            "CURRENT"
            if inc.incarnation == number
            else ("PARENT" if inc.incarnation in on_path else "ORPHAN")
        )
    s.say(f"database reset to incarnation {number}")


# -- RUN blocks ---------------------------------------------------------------------------------


def _run_block(s: Session, block: Block) -> None:
    # SET and ALLOCATE inside RUN last until its closing brace, as in RMAN: a later block
    # starts without them (its RECOVER never inherits an earlier block's target).
    scoped = (s.command_id, dict(s.channels), s.autobackup_format, s.until)
    try:
        _run_block_statements(s, block)
    finally:
        s.command_id, s.channels, s.autobackup_format, s.until = scoped


def _run_block_statements(s: Session, block: Block) -> None:
    for stmt in block.statements:
        a = stmt.args
        if stmt.kind == "command_id":
            s.command_id = a[0]
            s.say("executing command: SET COMMAND ID")
        elif stmt.kind == "allocate":
            s.channels[a[0] or ""] = a[1]
            s.say(f"allocated channel: {a[0]}")
            s.say(f"channel {a[0]}: SID=42 device type=DISK")
        elif stmt.kind == "autobackup_format":
            s.autobackup_format = a[0]
            s.say("executing command: SET CONTROLFILE AUTOBACKUP FORMAT")
        elif stmt.kind.startswith("until_"):
            s.until = (stmt.kind, tuple(_until_args(stmt, s.db.read().time_zone)))
            s.say("executing command: SET until clause")
        else:
            with s.db.transaction() as st:
                _start_status(s, st, stmt.kind)
                _RUN_ACTIONS[stmt.kind](s, st, a)


_DATE_FIELDS = (
    # (field, bounds check, the ORA code TO_DATE raises when it is out of range)
    ("month", lambda y, mo, d, h, mi, se: 1 <= mo <= 12, "ORA-01843: not a valid month"),
    (
        "day",
        lambda y, mo, d, h, mi, se: 1 <= d <= calendar.monthrange(y, mo)[1],
        "ORA-01847: day of month must be between 1 and last day of month",
    ),
    ("hour", lambda y, mo, d, h, mi, se: h <= 23, "ORA-01850: hour must be between 0 and 23"),
    ("minute", lambda y, mo, d, h, mi, se: mi <= 59, "ORA-01851: minutes must be between 0 and 59"),
    ("second", lambda y, mo, d, h, mi, se: se <= 59, "ORA-01852: seconds must be between 0 and 59"),
)


def _until_args(stmt: Statement, zone: str) -> list[int]:
    if stmt.kind == "until_time":
        # TO_DATE('...') is a DATE of the server's zone, not UTC (a real server reads it so).
        text = stmt.args[0] or ""
        parts = [int(x) for x in re.split(r"[- :]", text)]
        for _, fits, error in _DATE_FIELDS:
            if not fits(*parts):
                raise RmanError("RMAN-03002: failure of set command", error)
        local = datetime(*parts, tzinfo=ZoneInfo(zone))  # type: ignore[misc]
        return [int(local.timestamp())]
    return [int(x or 0) for x in stmt.args]


def _start_status(s: Session, st: State, kind: str) -> None:
    operation = "BACKUP" if kind.startswith("backup") else kind.split("_")[0].upper()
    if s.status_recid is None:
        cf = st.controlfile
        s.status_recid = cf.take_recid()
        cf.rman_status.append(
            RmanStatus(
                recid=s.status_recid,
                command_id=s.command_id,
                operation=operation,
                status="RUNNING",
                start_time=st.now(),
            )
        )


def _finish_status(s: Session, status: str) -> None:
    if s.status_recid is None:
        return
    with s.db.transaction() as st:
        for row in st.controlfile.rman_status:
            if row.recid == s.status_recid:
                row.status = status  # type: ignore[assignment]
                row.end_time = st.now()


def _channel_format(s: Session) -> list[tuple[str, str]]:
    if not s.channels:
        raise RmanError(
            "RMAN-03002: failure of backup command",
            "RMAN-06034: at least 1 channel must be allocated for this command",
        )
    out = []
    for name, fmt in s.channels.items():
        if not fmt:
            raise RmanError(
                "RMAN-03002: failure of backup command",
                "RMAN-06091: no channel allocated with a FORMAT (simulator)",
            )
        out.append((name, fmt))
    return out


def _piece_name(fmt: str, st: State, stamp: int, piece: int) -> str:
    day = st.now().strftime("%Y%m%d")
    unique = f"{stamp % 0xFFFFFFFF:08x}_{piece}_1"
    return fmt.replace("%d", DB_NAME).replace("%T", day).replace("%U", unique)


def _write_piece(
    s: Session,
    st: State,
    channel: str,
    fmt: str,
    bset: BackupSet,
    piece_no: int,
    tag: str,
    content: dict[str, Any],
    *,
    autobackup: bool = False,
) -> None:
    handle = _piece_name(fmt, st, bset.stamp, piece_no)
    piece = BackupPiece(
        piece=piece_no,
        handle=handle,
        bytes=0,
        tag=tag,
        compressed=s.compression is not None,
        encrypted=s.encryption,
    )
    bset.pieces.append(piece)
    payload = {"dbid": st.controlfile.dbid, "piece": piece_no, "set": None, **content}
    data = encode_piece(payload)
    piece.bytes = len(data)
    payload["set"] = bset.model_dump(mode="json")
    data = encode_piece(payload)
    Path(handle).parent.mkdir(parents=True, exist_ok=True)
    Path(handle).write_bytes(data)
    s.say(f"channel {channel}: starting piece {piece_no} at {_fmt(st.now())}")
    s.say(f"channel {channel}: finished piece {piece_no} at {_fmt(st.now())}")
    # A control file autobackup's line carries no tag, as real RMAN prints it.
    s.say(
        f"piece handle={handle} comment=NONE"
        if autobackup
        else f"piece handle={handle} tag={tag} comment=NONE"
    )


def _fmt(when: datetime) -> str:
    return when.strftime("%Y-%m-%d %H:%M:%S")


def _new_set(
    st: State,
    backup_type: str,
    level: int | None,
    cumulative: bool = False,
    command_id: str | None = None,
) -> BackupSet:
    cf = st.controlfile
    recid = cf.take_recid()
    return BackupSet(
        recid=recid,
        stamp=1_100_000_000 + recid,
        backup_type=backup_type,  # type: ignore[arg-type]
        incremental_level=level,
        cumulative=cumulative,
        completion_time=st.now(),
        command_id=command_id,
    )


def _backup_logs(s: Session, st: State, tag: str, since_recid: int = 0) -> None:
    (channel, fmt), *_ = _channel_format(s)
    rid = st.controlfile.incarnation().resetlogs_id
    logs = [
        x
        for x in st.controlfile.archived_logs
        if x.status == "A" and x.resetlogs_id == rid and x.recid > since_recid
    ]
    if not logs:
        return
    s.say(f"channel {channel}: starting archived log backup set")
    bset = _new_set(st, "L", None, command_id=s.command_id)
    contents = []
    for log in logs:
        s.say(
            f"input archived log thread={log.thread} sequence={log.sequence} "
            f"RECID={log.recid} STAMP={bset.stamp}"
        )
        contents.append(Path(log.name).read_bytes().hex())
    bset.redologs = [x.model_copy() for x in logs]
    _write_piece(s, st, channel, fmt, bset, 1, tag, {"kind": "archivelog", "logs": contents})
    st.controlfile.backup_sets.append(bset)


def _backup_database(s: Session, st: State, a: tuple[str | None, ...]) -> None:
    compressed, level_s, cumulative_s, section_s, tag, plus = a
    if st.open_mode != "READ WRITE":
        raise RmanError("RMAN-03002: failure of backup command", "ORA-01109: database not open")
    if (compressed is not None) != (s.compression is not None):
        raise RmanError(
            "RMAN-03002: failure of backup command",
            "RMAN-06770: AS COMPRESSED needs SET COMPRESSION ALGORITHM (simulator)",
        )
    tag = tag or ""
    channels = _channel_format(s)
    s.say(f"Starting backup at {_fmt(st.now())}")
    s.say("using target database control file instead of recovery catalog")
    if plus:
        s.say("current log archived")
        archive_log_current(st, s.db.arch_dir)
        _backup_logs(s, st, tag)
    mark = st.controlfile.next_recid
    level = None if level_s is None else int(level_s)
    cumulative = cumulative_s is not None
    inc = st.controlfile.incarnation()
    parents = _parents(st, cumulative) if level == 1 else {}
    if level == 1 and not parents:
        s.say("no parent backup or copy of datafile found; making a level 0 backup instead")
        level, cumulative = 0, False
    for n, df in enumerate(st.datafiles):
        channel, fmt = channels[n % len(channels)]
        kind = "full" if level is None else f"incremental level {level}"
        s.say(f"channel {channel}: starting {kind} datafile backup set")
        s.say(f"channel {channel}: specifying datafile(s) in backup set")
        s.say(f"input datafile file number={df.file:05d} name={df.name}")
        bset = _new_set(st, "D" if level in (None, 0) else "I", level, cumulative, s.command_id)
        checkpoint = st.current_scn
        df.checkpoint_scn = checkpoint
        fuzzy: int | None = None
        if df.file == USERS_FILE:
            # Work goes on while the file is copied: the copy holds a change newer than its
            # checkpoint, which is what makes the backup fuzzy.
            st.current_scn += 1
            change = insert_row(st, f"during backup {tag} of file {df.file}", thread=1)
            fuzzy = change.scn
        st.current_scn += 2
        since = parents.get(df.file, 0)
        rows = _rows_between(st, since, st.current_scn) if df.file == USERS_FILE else {}
        sections = 1
        if section_s is not None:
            sections = max(1, math.ceil(df.bytes / (int(section_s) * 1024 * 1024)))
        bset.completion_time = st.now()
        bset.datafiles = [
            BackupDatafile(
                file=df.file,
                checkpoint_scn=checkpoint,
                absolute_fuzzy_scn=fuzzy,
                incremental_level=level,
                incremental_scn=since,
                resetlogs_id=inc.resetlogs_id,
            )
        ]
        for piece_no in range(1, sections + 1):
            content = {
                "kind": "datafile",
                "file": df.file,
                "section": piece_no,
                "rows": {str(k): v for k, v in rows.items()} if piece_no == 1 else {},
            }
            _write_piece(s, st, channel, fmt, bset, piece_no, tag, content)
        st.controlfile.backup_sets.append(bset)
        s.say(f"channel {channel}: backup set complete, elapsed time: 00:00:01")
    if plus:
        s.say("current log archived")
        archive_log_current(st, s.db.arch_dir)
        _backup_logs(s, st, tag, since_recid=mark)
    s.say(f"Finished backup at {_fmt(st.now())}")
    if s.autobackup_on:
        _autobackup(s, st)


def _parents(st: State, cumulative: bool) -> dict[int, int]:
    """Per datafile, the checkpoint a level 1 starts from: the latest level 0 (cumulative) or
    the latest level 0 or 1 (differential) on the current incarnation."""
    rid = st.controlfile.incarnation().resetlogs_id
    out: dict[int, int] = {}
    for bset in st.controlfile.backup_sets:
        for d in bset.datafiles:
            if d.file == 0 or d.resetlogs_id != rid or d.incremental_level is None:
                continue
            if cumulative and d.incremental_level != 0:
                continue
            out[d.file] = max(out.get(d.file, 0), d.checkpoint_scn)
    return out


def _rows_between(st: State, since: int, until: int) -> dict[int, str]:
    scn_of = {c.id: c.scn for c in st.ledger}
    return {k: v for k, v in st.table.items() if since <= scn_of.get(k, 0) < until}


def _controlfile_content(s: Session, st: State) -> dict[str, Any]:
    return {
        "kind": "controlfile",
        "controlfile": st.controlfile.model_dump(mode="json"),
        "release": st.database_release or instance_release(s.db),
    }


def _backup_controlfile(s: Session, st: State, a: tuple[str | None, ...]) -> None:
    (channel, fmt), *_ = _channel_format(s)
    s.say(f"channel {channel}: starting full datafile backup set")
    s.say(f"channel {channel}: including current control file in backup set")
    bset = _new_set(st, "D", None, command_id=s.command_id)
    bset.controlfile = True
    bset.datafiles = [
        BackupDatafile(
            file=0,
            checkpoint_scn=st.current_scn,
            absolute_fuzzy_scn=None,
            incremental_level=None,
            incremental_scn=0,
            resetlogs_id=st.controlfile.incarnation().resetlogs_id,
        )
    ]
    st.controlfile.backup_sets.append(bset)
    _write_piece(s, st, channel, fmt, bset, 1, a[0] or "", _controlfile_content(s, st))


def _backup_spfile(s: Session, st: State, a: tuple[str | None, ...]) -> None:
    (channel, fmt), *_ = _channel_format(s)
    s.say(f"channel {channel}: starting full datafile backup set")
    s.say(f"channel {channel}: including current SPFILE in backup set")
    bset = _new_set(st, "D", None, command_id=s.command_id)
    bset.spfile = True
    st.controlfile.backup_sets.append(bset)
    _write_piece(
        s, st, channel, fmt, bset, 1, a[0] or "", {"kind": "spfile", "spfile": {"db_name": DB_NAME}}
    )


def _autobackup(s: Session, st: State) -> None:
    fmt = s.autobackup_format or str(s.db.root / "autobackup" / "%F")
    day = st.now().strftime("%Y%m%d")
    taken = sum(1 for b in st.controlfile.backup_sets if b.controlfile)
    name = fmt.replace("%F", f"c-{st.controlfile.dbid}-{day}-{taken % 256:02x}")
    s.say(f"Starting Control File and SPFILE Autobackup at {_fmt(st.now())}")
    bset = _new_set(st, "D", None, command_id=s.command_id)
    bset.controlfile = bset.spfile = True
    bset.datafiles = [
        BackupDatafile(
            file=0,
            checkpoint_scn=st.current_scn,
            absolute_fuzzy_scn=None,
            incremental_level=None,
            incremental_scn=0,
            resetlogs_id=st.controlfile.incarnation().resetlogs_id,
        )
    ]
    st.controlfile.backup_sets.append(bset)
    content = _controlfile_content(s, st)
    _write_piece(s, st, "ORA_DISK_1", name, bset, 1, f"TAG{day}", content, autobackup=True)
    s.say(f"Finished Control File and SPFILE Autobackup at {_fmt(st.now())}")


# -- restore and recover ------------------------------------------------------------------------


def _target_scn(s: Session, st: State, command: str = "recover") -> int:
    if s.until is None:
        raise RmanError(
            f"RMAN-03002: failure of {command} command",
            "RMAN-06557: the simulator recovers only to a SET UNTIL target",
        )
    kind, args = s.until
    cf = st.controlfile
    current = cf.incarnation()
    # A point before the mounted control file's current RESETLOGS is on another incarnation:
    # RMAN refuses it until RESET DATABASE TO INCARNATION names that one (recovering there
    # anyway would hang a child under an incarnation that began after its branch point).
    if kind == "until_scn":
        if args[0] < current.resetlogs_scn:
            raise RmanError(
                f"RMAN-03002: failure of {command} command",
                "RMAN-20208: UNTIL CHANGE is before RESETLOGS change",
            )
        return args[0]
    if kind == "until_time":
        when = datetime.fromtimestamp(args[0], UTC)
        if when < current.resetlogs_time:
            raise RmanError(
                f"RMAN-03002: failure of {command} command",
                "RMAN-20207: UNTIL TIME or RECOVERY WINDOW is before RESETLOGS time",
            )
        return st.scn_at(when, current.resetlogs_id)
    sequence, thread = args
    rid_path = {i.resetlogs_id for i in cf.path()[:1]}
    for log in cf.archived_logs:
        if log.thread == thread and log.sequence == sequence and log.resetlogs_id in rid_path:
            return log.first_scn
    for log in cf.archived_logs:
        if log.thread == thread and log.sequence == sequence - 1 and log.resetlogs_id in rid_path:
            return log.next_scn
    raise RmanError(
        "RMAN-03002: failure of recover command",
        f"RMAN-06556: datafile must be restored from backup older than "
        f"sequence {sequence} thread {thread}",
    )


def _governing(cf: ControlFile, scn: int) -> tuple[Incarnation, int]:
    """The incarnation on the current path that owns `scn`, and where its range ends."""
    upper = 1 << 64
    for inc in cf.path():
        if scn >= inc.resetlogs_scn:
            return inc, upper
        upper = inc.resetlogs_scn
    raise RmanError(
        "RMAN-03002: failure of recover command",
        f"ORA-01190: SCN {scn} is before the first incarnation",
    )


def _chosen_level0(st: State, target: int) -> dict[int, tuple[BackupSet, BackupDatafile]]:
    cf = st.controlfile
    chosen: dict[int, tuple[BackupSet, BackupDatafile]] = {}
    for bset in cf.backup_sets:
        if bset.backup_type != "D":
            continue
        for d in bset.datafiles:
            if d.file == 0 or d.incremental_level not in (None, 0):
                continue
            if not all(p.status == "A" for p in bset.pieces) or not bset.pieces:
                continue
            if d.checkpoint_scn >= target or not _on_path(cf, d.resetlogs_id, d.checkpoint_scn):
                continue
            best = chosen.get(d.file)
            if best is None or best[1].checkpoint_scn < d.checkpoint_scn:
                chosen[d.file] = (bset, d)
    return chosen


def _on_path(cf: ControlFile, resetlogs_id: int, scn: int) -> bool:
    try:
        inc, upper = _governing(cf, scn)
    except RmanError:
        return False
    return inc.resetlogs_id == resetlogs_id and scn < upper


def _restore_database(s: Session, st: State, a: tuple[str | None, ...]) -> None:
    if st.open_mode != "MOUNTED":
        raise RmanError("RMAN-03002: failure of restore command", "ORA-01507: database not mounted")
    target = _target_scn(s, st, "restore")
    s.say(f"Starting restore at {_fmt(st.now())}")
    chosen = _chosen_level0(st, target)
    missing = [df.file for df in st.datafiles if df.file not in chosen]
    if missing:
        raise RmanError(
            "RMAN-03002: failure of restore command",
            "RMAN-06026: some targets not found - aborting restore",
            *[f"RMAN-06023: no backup or copy of datafile {f} found to restore" for f in missing],
        )
    wall = st.media.wall if st.media else None
    media = Media(
        rows={},
        checkpoint_scn={},
        fuzzy_scn={},
        incarnation=st.controlfile.current_incarnation,
        wall=wall,
    )
    for file, (bset, d) in sorted(chosen.items()):
        s.say(f"channel ORA_DISK_1: restoring datafile {file:05d}")
        for piece in bset.pieces:
            payload = _read_piece(piece.handle, "restore")
            media.rows.update({int(k): v for k, v in payload.get("rows", {}).items()})
            s.say(f"channel ORA_DISK_1: reading from backup piece {piece.handle}")
        media.checkpoint_scn[file] = d.checkpoint_scn
        media.fuzzy_scn[file] = d.absolute_fuzzy_scn or d.checkpoint_scn
    st.media = media
    s.say(f"Finished restore at {_fmt(st.now())}")


def _recover_until_scn(s: Session, st: State, a: tuple[str | None, ...]) -> None:
    # RECOVER DATABASE UNTIL SCN n is SET UNTIL SCN n for this one command.
    scoped = s.until
    s.until = ("until_scn", (int(a[0] or 0),))
    try:
        _recover_database(s, st, a)
    finally:
        s.until = scoped


def _recover_database(s: Session, st: State, a: tuple[str | None, ...]) -> None:
    if st.media is None or not st.media.checkpoint_scn:
        raise RmanError(
            "RMAN-03002: failure of recover command",
            "ORA-01113: file 1 needs media recovery (nothing restored)",
        )
    target = _target_scn(s, st)
    if st.media.recovered_to is not None and target < st.media.recovered_to:
        raise RmanError(
            "RMAN-03002: failure of recover command",
            "ORA-01547: warning: RECOVER succeeded but OPEN RESETLOGS would get error below",
            "ORA-01152: file 1 was not restored from a sufficiently old backup",
        )
    cf = st.controlfile
    media = st.media
    s.say(f"Starting recover at {_fmt(st.now())}")
    _apply_incrementals(s, st, media, target)
    start = min(media.checkpoint_scn.values())
    for thread in cf.threads:
        # A thread disabled before the target is needed only up to its disable (the redo
        # says so, whatever a backup control file thinks); one disabled with no marker never.
        stop = min(target, st.thread_disabled_at.get(thread.thread, target))
        if (thread.enabled or thread.thread in st.thread_disabled_at) and start < stop:
            _apply_thread(s, cf, media, thread, start, stop)
    media.recovered_to = target
    # The datafile headers now stand at the recovery point: the next RECOVER of a copy rolled
    # forward round by round starts there and needs no redo before it.
    for file in media.checkpoint_scn:
        media.checkpoint_scn[file] = max(media.checkpoint_scn[file], target)
    s.say("media recovery complete, elapsed time: 00:00:01")
    fuzzy = [(f, scn) for f, scn in sorted(media.fuzzy_scn.items()) if scn >= target]
    if fuzzy:
        media.consistent = False
        file = fuzzy[0][0]
        name = next(d.name for d in st.datafiles if d.file == file)
        raise RmanError(
            "RMAN-03002: failure of recover command",
            "ORA-01547: warning: RECOVER succeeded but OPEN RESETLOGS would get error below",
            f"ORA-01194: file {file} needs more recovery to be consistent",
            f"ORA-01110: data file {file}: '{name}'",
        )
    media.consistent = True
    s.say(f"Finished recover at {_fmt(st.now())}")


def _apply_incrementals(s: Session, st: State, media: Media, target: int) -> None:
    cf = st.controlfile
    progressed = True
    while progressed:
        progressed = False
        for bset in cf.backup_sets:
            if bset.backup_type != "I":
                continue
            for d in bset.datafiles:
                ckpt = media.checkpoint_scn.get(d.file)
                if ckpt is None or not (d.incremental_scn <= ckpt < d.checkpoint_scn < target):
                    continue
                if not _on_path(cf, d.resetlogs_id, d.checkpoint_scn):
                    continue
                s.say("channel ORA_DISK_1: starting incremental datafile backup set restore")
                for piece in bset.pieces:
                    payload = _read_piece(piece.handle, "recover")
                    media.rows.update({int(k): v for k, v in payload.get("rows", {}).items()})
                media.checkpoint_scn[d.file] = d.checkpoint_scn
                media.fuzzy_scn[d.file] = d.absolute_fuzzy_scn or d.checkpoint_scn
                progressed = True


def _apply_thread(
    s: Session, cf: ControlFile, media: Media, thread: ThreadState, start: int, target: int
) -> None:
    users_ckpt = media.checkpoint_scn.get(USERS_FILE, start)
    pos = start
    last_seq = 0
    while pos < target:
        inc, upper = _governing(cf, pos)
        log = next(
            (
                x
                for x in cf.archived_logs
                if x.thread == thread.thread
                and x.resetlogs_id == inc.resetlogs_id
                and x.status == "A"
                and x.first_scn <= pos < x.next_scn
            ),
            None,
        )
        if log is None or not Path(log.name).exists():
            seq = last_seq + 1 if last_seq else _expected_sequence(cf, thread.thread, inc, pos)
            raise RmanError(
                "RMAN-03002: failure of recover command",
                f"RMAN-06054: media recovery requesting unknown archived log for thread "
                f"{thread.thread} with sequence {seq} and starting SCN of {pos}",
            )
        s.say(
            f"archived log for thread {log.thread} with sequence {log.sequence} "
            f"is already on disk as file {log.name}"
        )
        _, changes = decode_redo(Path(log.name).read_bytes())
        for change in changes:
            if (
                users_ckpt <= change.scn < min(target, upper)
                and change.resetlogs_id == inc.resetlogs_id
            ):
                media.rows[change.id] = change.value
        last_seq = log.sequence
        pos = min(log.next_scn, upper)
        if pos == upper:
            last_seq = 0


def _expected_sequence(cf: ControlFile, thread: int, inc: Incarnation, pos: int) -> int:
    earlier = [
        x.sequence
        for x in cf.log_history + cf.archived_logs
        if x.thread == thread and x.resetlogs_id == inc.resetlogs_id and x.first_scn <= pos
    ]
    return max(earlier, default=0) + (
        0
        if any(
            x.first_scn <= pos < x.next_scn
            for x in cf.log_history
            if x.thread == thread and x.resetlogs_id == inc.resetlogs_id
        )
        else 1
    )


def _open_resetlogs(s: Session, st: State, *, upgrade: bool = False) -> None:
    media = st.media
    if st.open_mode != "MOUNTED" or media is None or media.recovered_to is None:
        raise RmanError(
            "RMAN-03002: failure of sql statement command",
            "ORA-01139: RESETLOGS option only valid after an incomplete recovery",
        )
    if not media.consistent:
        file = min(media.fuzzy_scn)
        raise RmanError(
            "RMAN-03002: failure of sql statement command",
            f"ORA-01194: file {file} needs more recovery to be consistent",
        )
    release = st.database_release
    newer = release is not None and _release_key(instance_release(s.db)) > _release_key(release)
    if newer and not upgrade:
        # A real instance terminates here (ORA-01092); the simulated one stays mounted.
        raise RmanError(
            "RMAN-03002: failure of sql statement command",
            "ORA-01092: ORACLE instance terminated. Disconnection forced",
            "ORA-00704: bootstrap process failure",
            "ORA-39700: database must be opened with UPGRADE option",
        )
    cf = st.controlfile
    parent = cf.incarnation()
    branch = media.recovered_to
    when = _wall(st) + timedelta(minutes=1)
    number = max(i.incarnation for i in cf.incarnations) + 1
    for inc in cf.incarnations:
        inc.status = "PARENT" if inc.incarnation in {i.incarnation for i in cf.path()} else "ORPHAN"
    cf.incarnations.append(
        Incarnation(
            incarnation=number,
            resetlogs_scn=branch,
            resetlogs_id=new_resetlogs_id(when),
            resetlogs_time=when,
            prior=parent.incarnation,
            status="CURRENT",
        )
    )
    cf.current_incarnation = number
    for t in cf.threads:
        t.sequence, t.first_scn = 1, branch
    st.current_scn = branch + 1
    st.table = dict(sorted(media.rows.items()))
    st.online = {t.thread: [] for t in cf.threads}
    for df in st.datafiles:
        df.checkpoint_scn = branch
    st.media = None
    st.open_mode = "READ WRITE"
    st.upgrade_pending = upgrade
    s.say("Statement processed")


def _preview(s: Session, st: State, a: tuple[str | None, ...]) -> None:
    target = _target_scn(s, st, "restore")
    chosen = _chosen_level0(st, target)
    s.say("List of Backup Sets")
    for file, (bset, d) in sorted(chosen.items()):
        s.say(
            f"  File {file} Incr {d.incremental_level or 0} Ckp SCN {d.checkpoint_scn} "
            f"BS Key {bset.recid} Piece {bset.pieces[0].handle}"
        )
    if chosen:
        fuzzy = max((d.absolute_fuzzy_scn or d.checkpoint_scn) for _, d in chosen.values())
        start = min(d.checkpoint_scn for _, d in chosen.values())
        s.say(f"Media recovery start SCN is {start}")
        s.say(f"Recovery must be done beyond SCN {fuzzy} to clear datafile fuzziness")
    else:
        raise RmanError(
            "RMAN-03002: failure of restore command",
            "RMAN-06026: some targets not found - aborting restore",
        )


def _validate_restore(s: Session, st: State, a: tuple[str | None, ...]) -> None:
    target = _target_scn(s, st, "restore")
    chosen = _chosen_level0(st, target)
    if len(chosen) != len(st.datafiles):
        raise RmanError(
            "RMAN-03002: failure of restore command",
            "RMAN-06026: some targets not found - aborting restore",
        )
    for bset, _ in chosen.values():
        for piece in bset.pieces:
            _read_piece(piece.handle, "validate")
            s.say(f"channel ORA_DISK_1: piece handle={piece.handle} tag={piece.tag}")
            s.say("channel ORA_DISK_1: validation complete, elapsed time: 00:00:01")
    s.say(f"Finished restore at {_fmt(st.now())}")


def _validate_database(s: Session, st: State, a: tuple[str | None, ...]) -> None:
    s.say("List of Datafiles")
    for df in st.datafiles:
        s.say(f"{df.file}    OK     0              1            1            {df.checkpoint_scn}")


_RUN_ACTIONS = {
    "backup_database": _backup_database,
    "backup_controlfile": _backup_controlfile,
    "backup_spfile": _backup_spfile,
    "restore_database": _restore_database,
    "recover_database": _recover_database,
    "recover_until_scn": _recover_until_scn,
    "preview": _preview,
    "validate_restore": _validate_restore,
    "validate_database": _validate_database,
}
