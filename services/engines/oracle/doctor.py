"""Does this Oracle database hold the facts Tidemark's Oracle workflows rely on? (`tidemark
doctor oracle`, and the migration saga's `validating` phase through `preflight.py`.)

`examine(source, options)` reads, never writes: V$ and DBA_ views through `source`, plus three
probes that run only when asked (RMAN `RESTORE DATABASE PREVIEW` / `VALIDATE CHECK LOGICAL
DATABASE`, Data Pump `ESTIMATE_ONLY=YES`, `ALTER DATABASE SWITCHOVER TO … VERIFY`). It returns a
`Report`: one `Check` per fact with a verdict (holds / does not hold / not checked, each with
why), and the `Contradiction`s: where this database differs from what Tidemark was tested
against. Tidemark's Oracle workflows are proven on a simulated Oracle only (tests/oracle_sim/);
`SIMULATOR` declares what that simulator assumes (a release, an edition, a platform, at most
two threads, 512-byte redo blocks, a zone without DST, the wording of the lines the engine
parses), and a database that contradicts one runs a path nothing here has exercised.

The checks are one table (`CHECKS`): a name, the workflows that rely on the fact, and the
coroutine that reads it. A check that needs a view this user cannot read (ORA-00942, ORA-01031)
or a column this release lacks (ORA-00904) is "not checked", with the code; it is never a pass.

    Verdict        holds | does not hold | not checked
    Check          one fact: verdict, what was seen, what is needed, why
    Contradiction  a simulator assumption, what this database says, what that leaves unproven
    Report         the checks and contradictions; `exit_code` 0 (all hold) or 1
"""

from __future__ import annotations

import enum
import re
import uuid
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import PurePath
from typing import Any, Protocol
from zoneinfo import ZoneInfo

from services.engines.base import EngineError
from services.engines.oracle import doctor_sql as q
from services.engines.oracle.rows import (
    ARCHIVED_LOGS_SQL,
    DATABASE_SQL,
    INCARNATIONS_SQL,
    THREADS_SQL,
    TIMEZONE_SQL,
    archived_log_from,
    database_from,
    incarnation_from,
    thread_from,
)
from services.engines.oracle.runner import OracleHome, Tool, run_tool
from services.engines.oracle.scripts import UntilScn, preview_script, validate_database_script
from services.engines.oracle.session import (
    ConnectSettings,
    OracleSessionError,
    open_link,
    session_error,
)

__all__ = [
    "CHECKS",
    "SIMULATOR",
    "Check",
    "Contradiction",
    "DoctorOptions",
    "DoctorSource",
    "LinkSource",
    "Report",
    "SimulatorAssumptions",
    "Verdict",
    "Workflow",
    "connect",
    "examine",
    "valid_name",
]


class Verdict(enum.StrEnum):
    HOLDS = "holds"
    FAILS = "does not hold"
    NOT_CHECKED = "not checked"


class Workflow(enum.StrEnum):
    """Which of Tidemark's Oracle workflows relies on a fact."""

    PITR = "pitr"
    """Backups, archived-log streaming, restores to a point in time."""
    DATAGUARD = "dataguard"
    """The Data Guard migration method (this database as the primary)."""
    DATAPUMP = "datapump"
    """The Data Pump migration method (this database as the source)."""


@dataclass(frozen=True)
class Check:
    name: str
    title: str
    workflows: tuple[Workflow, ...]
    verdict: Verdict
    observed: str
    expected: str
    why: str = ""
    advisory: bool = False
    """A fact that makes a workflow slower or riskier, not one it fails without: reported, but
    it does not change the exit status."""

    def as_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "title": self.title,
            "workflows": [w.value for w in self.workflows],
            "verdict": self.verdict.value,
            "observed": self.observed,
            "expected": self.expected,
            "why": self.why,
            "advisory": self.advisory,
        }


@dataclass(frozen=True)
class Contradiction:
    assumption: str
    observed: str
    consequence: str

    def as_json(self) -> dict[str, str]:
        return {
            "assumption": self.assumption,
            "observed": self.observed,
            "consequence": self.consequence,
        }


@dataclass(frozen=True)
class Report:
    dsn: str
    checks: tuple[Check, ...]
    contradictions: tuple[Contradiction, ...]
    facts: Mapping[str, str]
    """What was read on the way (version, DBID, zones...), for the report's header."""

    @property
    def failed(self) -> list[Check]:
        return [c for c in self.checks if c.verdict is Verdict.FAILS and not c.advisory]

    @property
    def holds(self) -> bool:
        return not self.failed

    @property
    def exit_code(self) -> int:
        return 0 if self.holds else 1

    def as_json(self) -> dict[str, Any]:
        return {
            "dsn": self.dsn,
            "holds": self.holds,
            "facts": dict(self.facts),
            "checks": [c.as_json() for c in self.checks],
            "contradictions": [c.as_json() for c in self.contradictions],
        }


# -- what the simulator assumes (declared once; a test runs the doctor on the default simulator
#    and expects no contradiction, which keeps this and tests/oracle_sim/ in step) -------------


@dataclass(frozen=True)
class SimulatorAssumptions:
    release: int = 19
    edition: str = "Enterprise Edition"
    platform_name: str = "Linux x86 64-bit"
    endian: str = "Little"
    max_threads: int = 2
    redo_block_size: int = 512
    cdb: bool = False
    version_re: re.Pattern[str] = re.compile(r"^\d+\.\d+\.\d+\.\d+\.\d+$")
    banner_re: re.Pattern[str] = re.compile(
        r"^Oracle Database (\d+)[a-z]* (Enterprise Edition|Standard Edition(?: 2| Two)?|"
        r"Express Edition|Personal Edition|Free)\b"
    )
    offset_re: re.Pattern[str] = re.compile(r"^[+-]\d{2}:\d{2}$")
    """TO_CHAR(SYSTIMESTAMP, 'TZH:TZM'), which the session's time zone check compares."""
    preview_re: re.Pattern[str] = re.compile(
        r"Recovery must be done beyond SCN (\d+) to clear datafile fuzziness"
    )
    validate_row_re: re.Pattern[str] = re.compile(r"^\s*(\d+)\s+(OK|FAILED)\s+(\d+)\s")
    """A row of VALIDATE's "List of Datafiles": file, status, marked corrupt."""
    estimate_re: re.Pattern[str] = re.compile(r"Total estimation using \w+ method: (.+)$")


SIMULATOR = SimulatorAssumptions()


# -- where the doctor reads from ---------------------------------------------------------------


class DoctorSource(Protocol):
    """One session to the database: rows by lower-case column name, one statement with no rows.
    Both raise `OracleSessionError` with the ORA code."""

    async def rows(self, sql: str, binds: Mapping[str, object]) -> list[dict[str, Any]]: ...

    async def execute(self, sql: str) -> None: ...


@dataclass(frozen=True)
class DoctorOptions:
    time_zone: str = "UTC"
    """What the settings say the server's zone is (`OracleConnection.time_zone`)."""
    archive_dest_id: int = 1
    """The destination the archiver reads (`archive_dest_id`)."""
    workflows: frozenset[Workflow] = frozenset(Workflow)
    home: OracleHome | None = None
    """Where rman/expdp are, for the probes below (they run as the instance's OS user)."""
    rman_preview: bool = False
    rman_validate: bool = False
    datapump_estimate: str | None = None
    """A schema whose export size Data Pump estimates (ESTIMATE_ONLY=YES: nothing written)."""
    datapump_directory: str = "DATA_PUMP_DIR"
    datapump_path: str | None = None
    """The path that directory must have (where this node stages dump files); None: any."""
    only: frozenset[str] | None = None
    """Run only the checks of these names (the migration preflight's, `preflight.py`)."""
    switchover_target: str | None = None
    """The standby's DB_UNIQUE_NAME for SWITCHOVER … VERIFY (which changes no role)."""
    tool_timeout_s: float = 3600.0


_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_$#]{0,29}$")
"""A DB_UNIQUE_NAME or schema: the one value the doctor puts into a statement (DDL takes no
binds), so it is checked first."""


def valid_name(value: str) -> bool:
    return bool(_NAME.match(value))


@dataclass
class _Ctx:
    source: DoctorSource
    options: DoctorOptions
    facts: dict[str, str] = field(default_factory=dict)
    contradictions: list[Contradiction] = field(default_factory=list)
    _memo: dict[tuple[str, tuple[tuple[str, object], ...]], Any] = field(default_factory=dict)

    async def rows(self, sql: str, **binds: object) -> list[dict[str, Any]]:
        """Rows, memoised per statement (several checks read V$DATABASE); errors too."""
        key = (sql, tuple(sorted(binds.items())))
        if key not in self._memo:
            try:
                self._memo[key] = await self.source.rows(sql, binds)
            except OracleSessionError as exc:
                self._memo[key] = exc
        found = self._memo[key]
        if isinstance(found, OracleSessionError):
            raise found
        return list(found)

    async def one(self, sql: str, **binds: object) -> dict[str, Any]:
        rows = await self.rows(sql, **binds)
        if not rows:
            raise _Unanswered(f"{_view_of(sql)} returned no row")
        return rows[0]

    async def parameters(self) -> dict[str, str]:
        return {str(r["name"]): str(r["value"] or "") for r in await self.rows(q.PARAMETERS_SQL)}

    def contradict(self, assumption: str, observed: str, consequence: str) -> None:
        self.contradictions.append(Contradiction(assumption, observed, consequence))


class _Unanswered(Exception):
    """The database gave no answer the check can judge (no row, a shape the parser refuses)."""


def _view_of(sql: str) -> str:
    found = re.search(r"\bFROM\s+(\w+\$?\w*)", sql, flags=re.IGNORECASE)
    return found.group(1).upper() if found else "the query"


@dataclass(frozen=True)
class _Outcome:
    verdict: Verdict
    observed: str
    why: str = ""


CheckFn = Callable[[_Ctx], Awaitable[_Outcome]]


@dataclass(frozen=True)
class CheckSpec:
    name: str
    title: str
    workflows: tuple[Workflow, ...]
    expected: str
    run: CheckFn
    advisory: bool = False
    asked: Callable[[DoctorOptions], bool] = lambda _options: True
    """Whether the check runs at all (the probes run only when a flag asks for them)."""


def _holds(observed: str, why: str = "") -> _Outcome:
    return _Outcome(Verdict.HOLDS, observed, why)


def _fails(observed: str, why: str) -> _Outcome:
    return _Outcome(Verdict.FAILS, observed, why)


def _unchecked(why: str, observed: str = "") -> _Outcome:
    return _Outcome(Verdict.NOT_CHECKED, observed, why)


# -- PITR: release, edition, options --------------------------------------------------------


async def _release(ctx: _Ctx) -> _Outcome:
    row = await ctx.one(q.INSTANCE_SQL)
    version = str(row["version"])
    ctx.facts["version"] = version
    ctx.facts["instance"] = str(row["instance_name"])
    if not SIMULATOR.version_re.match(version):
        ctx.contradict(
            "V$INSTANCE.VERSION reads like 19.0.0.0.0",
            version,
            "the doctor cannot tell the release; nothing in Tidemark parses this shape",
        )
        return _unchecked(f"V$INSTANCE.VERSION {version!r} is not in the dotted five-part form")
    parts = tuple(int(p) for p in version.split("."))
    if parts[0] != SIMULATOR.release:
        ctx.contradict(
            f"release {SIMULATOR.release}c (the simulator answers as {SIMULATOR.release}c, and "
            "the engine describes every Oracle database as 19c)",
            version,
            "RMAN syntax and output were checked against the 19c documentation only",
        )
    if parts[:4] < (11, 2, 0, 4):
        return _fails(version, "Tidemark supports sources from 11.2.0.4 on")
    if parts[0] < 12:
        return _holds(version, "11.2 needs thick mode (thin mode needs 12.1 or later)")
    return _holds(version)


async def _edition(ctx: _Ctx) -> _Outcome:
    rows = await ctx.rows(q.BANNER_SQL)
    banner = str(rows[0]["banner"]) if rows else ""
    match = SIMULATOR.banner_re.match(banner)
    if match is None:
        ctx.contradict(
            "V$VERSION's banner reads 'Oracle Database 19c Enterprise Edition Release …'",
            banner or "(no 'Oracle Database' banner)",
            "the edition could not be read from the wording the doctor parses",
        )
        return _unchecked("the banner names no edition the doctor knows", banner)
    edition = match.group(2)
    ctx.facts["edition"] = edition
    if edition != SIMULATOR.edition:
        ctx.contradict(
            f"{SIMULATOR.edition} (level 1 backups, parallel channels, block change tracking)",
            edition,
            "the simulator accepts level 1 backups and several channels; this edition refuses "
            "them (RMAN-06180)",
        )
        return _fails(edition, "incremental (level 1) backups need Enterprise Edition")
    return _holds(edition)


async def _options(ctx: _Ctx) -> _Outcome:
    rows = await ctx.rows(q.OPTIONS_SQL)
    enabled = {str(r["parameter"]): str(r["value"]).upper() == "TRUE" for r in rows}
    needed = ("Incremental backup and recovery", "Parallel backup and recovery")
    missing = [name for name in needed if not enabled.get(name, False)]
    extra = [name for name in ("Backup Encryption", "Advanced Compression") if enabled.get(name)]
    seen = ", ".join(f"{k}={'TRUE' if v else 'FALSE'}" for k, v in sorted(enabled.items()))
    note = (
        "V$OPTION says what the binaries enable, not what is licensed; "
        "encryption and LOW/MEDIUM/HIGH compression need "
        + ("the options listed as TRUE here" if extra else "options this database does not enable")
    )
    if missing:
        return _fails(seen, f"backups need {', '.join(missing)}; {note}")
    return _holds(seen, note)


# -- PITR: redo ---------------------------------------------------------------------------


async def _archivelog(ctx: _Ctx) -> _Outcome:
    info = database_from(await ctx.one(DATABASE_SQL))
    if not info.archivelog:
        ctx.contradict(
            "ARCHIVELOG mode (the simulated database archives every log switch)",
            info.log_mode,
            "no archived log will appear, so there is no restore window past a backup",
        )
        return _fails(info.log_mode, "without archived redo there is no point-in-time restore")
    return _holds(info.log_mode)


async def _force_logging(ctx: _Ctx) -> _Outcome:
    info = database_from(await ctx.one(DATABASE_SQL))
    if info.force_logging != "YES":
        ctx.contradict(
            "FORCE LOGGING (the simulator models no NOLOGGING change)",
            info.force_logging,
            "a NOLOGGING load after a backup cannot be recovered (ORA-26040 when read)",
        )
        return _fails(
            info.force_logging,
            "NOLOGGING changes are not in the redo: a restore or a standby loses them",
        )
    return _holds(info.force_logging)


async def _identity(ctx: _Ctx) -> _Outcome:
    try:
        info = database_from(await ctx.one(DATABASE_SQL))
        incarnations = [incarnation_from(r) for r in await ctx.rows(INCARNATIONS_SQL)]
    except (KeyError, TypeError, ValueError) as exc:
        ctx.contradict(
            "V$DATABASE / V$DATABASE_INCARNATION rows in the shape rows.py maps",
            f"{type(exc).__name__}: {exc}",
            "the archiver and the engine would fail reading this database",
        )
        return _unchecked(f"the engine's mapper refuses a row: {exc}")
    ctx.facts.update(
        dbid=str(info.dbid),
        name=info.name,
        db_unique_name=info.db_unique_name,
        database_role=info.database_role,
        open_mode=info.open_mode,
        current_scn=str(info.current_scn),
    )
    current = [i for i in incarnations if i.status == "CURRENT"]
    if len(current) != 1:
        return _fails(f"{len(current)} CURRENT incarnations", "exactly one must be CURRENT")
    inc = current[0]
    observed = (
        f"DBID {info.dbid}, incarnation {inc.incarnation} (RESETLOGS_ID {inc.resetlogs_id}, "
        f"RESETLOGS_CHANGE# {inc.resetlogs_change}), {len(incarnations)} known"
    )
    ctx.facts["resetlogs_id"] = str(inc.resetlogs_id)
    if inc.resetlogs_change != info.resetlogs_change:
        return _fails(
            observed,
            f"V$DATABASE.RESETLOGS_CHANGE# {info.resetlogs_change} is not the CURRENT "
            "incarnation's",
        )
    if info.database_role != "PRIMARY":
        return _fails(observed, f"DATABASE_ROLE is {info.database_role}: back up the primary")
    return _holds(observed)


async def _threads(ctx: _Ctx) -> _Outcome:
    try:
        threads = [thread_from(r) for r in await ctx.rows(THREADS_SQL)]
    except (KeyError, TypeError, ValueError) as exc:
        ctx.contradict(
            "V$THREAD rows in the shape rows.py maps",
            f"{type(exc).__name__}: {exc}",
            "the archiver would fail reading the threads",
        )
        return _unchecked(f"the engine's mapper refuses a row: {exc}")
    enabled = [t for t in threads if t.enabled != "DISABLED"]
    observed = ", ".join(f"{t.thread} {t.enabled} {t.status}" for t in threads) or "none"
    if len(enabled) > SIMULATOR.max_threads:
        ctx.contradict(
            f"at most {SIMULATOR.max_threads} redo threads",
            f"{len(enabled)} enabled threads",
            "recovery merging more threads than two was never run",
        )
    if not enabled:
        return _fails(observed, "no enabled redo thread")
    return _holds(observed, "every enabled thread's logs bound the restore window")


async def _time_zone(ctx: _Ctx) -> _Outcome:
    row = await ctx.one(TIMEZONE_SQL)
    server = str(row["tz_offset"]).strip()
    ctx.facts["server_offset"] = server
    try:
        zones = await ctx.one(q.TIME_ZONES_SQL)
        ctx.facts["db_time_zone"] = str(zones["db_time_zone"])
        ctx.facts["session_time_zone"] = str(zones["session_time_zone"])
    except (OracleSessionError, _Unanswered):
        pass  # informative only; the offset is what times are read in
    if not SIMULATOR.offset_re.match(server):
        ctx.contradict(
            "TO_CHAR(SYSTIMESTAMP, 'TZH:TZM') reads like +00:00",
            server,
            "the session's time zone check would refuse every connection",
        )
        return _unchecked(f"the offset {server!r} is not in the form the session compares")
    zone = ZoneInfo(ctx.options.time_zone)
    expected = _offset(datetime.now(zone).utcoffset() or timedelta(0))
    if server != expected:
        return _fails(
            f"server UTC{server}",
            f"time_zone {ctx.options.time_zone!r} is UTC{expected} now: every log time would be "
            "shifted (the session refuses to connect); set time_zone to the server's zone",
        )
    if _has_dst(zone):
        ctx.contradict(
            "a server zone without daylight saving changes (the simulator keeps UTC, or one "
            "fixed offset per test)",
            ctx.options.time_zone,
            "a restore by time within an hour a DST change repeats or skips is unproven",
        )
    return _holds(f"server UTC{server} = {ctx.options.time_zone}")


def _offset(delta: timedelta) -> str:
    minutes = int(delta.total_seconds()) // 60
    sign = "-" if minutes < 0 else "+"
    return f"{sign}{abs(minutes) // 60:02d}:{abs(minutes) % 60:02d}"


def _has_dst(zone: ZoneInfo) -> bool:
    year = datetime.now(UTC).year
    offsets = {datetime(year, month, 1, tzinfo=zone).utcoffset() for month in (1, 4, 7, 10)}
    return len(offsets) > 1


async def _archive_destination(ctx: _Ctx) -> _Outcome:
    dest_id = ctx.options.archive_dest_id
    dests = {int(r["dest_id"]): r for r in await ctx.rows(q.ARCHIVE_DESTS_SQL)}
    listed = ", ".join(f"{d}:{r['status']}" for d, r in sorted(dests.items())) or "none active"
    ctx.facts["archive_destinations"] = listed
    dest = dests.get(dest_id)
    if dest is None:
        return _fails(listed, f"LOG_ARCHIVE_DEST_{dest_id} (archive_dest_id) is not active")
    where = str(dest["destination"] or "")
    if where.upper() == "USE_DB_RECOVERY_FILE_DEST":
        where = (await ctx.parameters()).get("db_recovery_file_dest", "") or where
    observed = f"LOG_ARCHIVE_DEST_{dest_id} {dest['status']} {dest['target']} {where}"
    if dest["status"] != "VALID":
        return _fails(observed, f"the destination is {dest['status']}: {dest['error'] or ''}")
    if str(dest["target"]) not in ("PRIMARY", "LOCAL"):
        return _fails(observed, "a remote (standby) destination holds no file the archiver reads")
    if where.startswith("+"):
        ctx.contradict(
            "archived logs are files on the node's file system",
            f"ASM disk group {where}",
            "the archiver reads each log by its path; ASM paths are not files it can open",
        )
        return _fails(observed, "the archiver cannot read logs stored in ASM")
    counted = await ctx.one(q.ARCHIVED_NEWEST_SQL, dest_id=dest_id)
    copies = int(counted["copies"] or 0)
    if not copies:
        return _holds(observed, "no archived log there yet: the shape of a row was not seen")
    after = int(counted["max_recid"]) - 1
    try:
        rows = await ctx.rows(ARCHIVED_LOGS_SQL, dest_id=dest_id, after_recid=after)
        newest = [archived_log_from(r) for r in rows]
    except (KeyError, TypeError, ValueError) as exc:
        ctx.contradict(
            "V$ARCHIVED_LOG rows in the shape rows.py maps",
            f"{type(exc).__name__}: {exc}",
            "the archiver would fail reading this destination",
        )
        return _unchecked(f"the engine's mapper refuses a row: {exc}", observed)
    for log in newest:
        if log.block_size != SIMULATOR.redo_block_size:
            ctx.contradict(
                f"redo blocks of {SIMULATOR.redo_block_size} bytes",
                f"BLOCK_SIZE {log.block_size}",
                "the archiver's size check, (BLOCKS + 1) * BLOCK_SIZE, was run on 512 only",
            )
    return _holds(f"{observed}, {copies} readable copies")


async def _unrecoverable(ctx: _Ctx) -> _Outcome:
    row = await ctx.one(q.UNRECOVERABLE_SQL)
    files = int(row["files"] or 0)
    if files:
        return _fails(
            f"{files} datafiles, newest UNRECOVERABLE_CHANGE# {row['newest']}",
            "NOLOGGING changes: a restore past them reads ORA-26040 in those blocks; take a "
            "backup after the newest one",
        )
    return _holds("no datafile with an unrecoverable change")


async def _block_change_tracking(ctx: _Ctx) -> _Outcome:
    row = await ctx.one(q.BLOCK_CHANGE_TRACKING_SQL)
    status = str(row["status"])
    if status != "ENABLED":
        return _fails(
            status,
            "level 1 backups read every block (ALTER DATABASE ENABLE BLOCK "
            "CHANGE TRACKING makes them read only the changed ones)",
        )
    return _holds(f"{status} {row['filename'] or ''}".strip())


# -- Data Guard preflights (issue 20 item 2) ---------------------------------------------------


async def _password_file(ctx: _Ctx) -> _Outcome:
    mode = (await ctx.parameters()).get("remote_login_passwordfile", "").upper()
    if mode not in ("EXCLUSIVE", "SHARED"):
        return _fails(
            f"REMOTE_LOGIN_PASSWORDFILE={mode or '(unset)'}",
            "redo transport and the standby's duplicate log on with the password file "
            "(ORA-16191 / ORA-01017 otherwise)",
        )
    users = {
        str(r["username"]).upper(): str(r["sysdba"]).upper()
        for r in await ctx.rows(q.PASSWORD_FILE_USERS_SQL)
    }
    if users.get("SYS") != "TRUE":
        return _fails(f"{mode}, users {sorted(users)}", "SYS is not in the password file as SYSDBA")
    return _holds(f"{mode}, SYS as SYSDBA", "the standby needs a copy of this file")


async def _standby_redo_logs(ctx: _Ctx) -> _Outcome:
    online = {int(r["thread#"]): r for r in await ctx.rows(q.ONLINE_LOGS_SQL)}
    standby = {int(r["thread#"]): r for r in await ctx.rows(q.STANDBY_LOGS_SQL)}
    short: list[str] = []
    seen: list[str] = []
    for thread, log in sorted(online.items()):
        need = int(log["groups"]) + 1
        size = int(log["max_bytes"])
        srl = standby.get(thread)
        have = int(srl["groups"]) if srl else 0
        smallest = int(srl["min_bytes"]) if srl else 0
        seen.append(f"thread {thread}: {have} of {need}")
        if have < need:
            short.append(f"thread {thread} has {have} standby logs, needs {need}")
        elif smallest < size:
            short.append(f"thread {thread}'s smallest standby log is {smallest} bytes < {size}")
    if short:
        return _fails(
            "; ".join(seen),
            "; ".join(short) + " (N+1 per thread, each at least the online log's size; "
            "without them no real-time apply, broker ORA-16789)",
        )
    return _holds("; ".join(seen))


async def _standby_file_management(ctx: _Ctx) -> _Outcome:
    value = (await ctx.parameters()).get("standby_file_management", "").upper()
    if value != "AUTO":
        return _fails(value or "(unset)", "a datafile added on the primary stops apply")
    return _holds(value)


async def _platform(ctx: _Ctx) -> _Outcome:
    row = await ctx.one(q.PLATFORM_SQL)
    name, endian = str(row["platform_name"]), str(row["endian_format"] or "")
    ctx.facts["platform"] = f"{name} ({endian or 'endianness unknown'})"
    if (name, endian) != (SIMULATOR.platform_name, SIMULATOR.endian):
        ctx.contradict(
            f"{SIMULATOR.platform_name} ({SIMULATOR.endian} endian)",
            f"{name} ({endian})",
            "a standby on the same platform is what the simulator models; another pair must "
            "be one MOS 413484.1 lists",
        )
    if not endian:
        return _fails(name, "V$TRANSPORTABLE_PLATFORM does not know this platform")
    return _holds(f"{name} ({endian})", "the standby's platform must match (or be a listed pair)")


async def _tde_keystore(ctx: _Ctx) -> _Outcome:
    encrypted = int((await ctx.one(q.ENCRYPTED_TABLESPACES_SQL))["n"] or 0)
    wallets = await ctx.rows(q.ENCRYPTION_WALLET_SQL)
    status = ", ".join(f"{w['wrl_type']} {w['status']}" for w in wallets) or "no keystore"
    if not encrypted:
        return _holds(f"no encrypted tablespace; {status}")
    if any(str(w["status"]) == "OPEN" for w in wallets):
        return _holds(
            f"{encrypted} encrypted tablespaces; {status}",
            "copy the keystore to the standby before it is opened",
        )
    return _fails(
        f"{encrypted} encrypted tablespaces; {status}",
        "encrypted tablespaces need an OPEN keystore (ORA-28365 otherwise)",
    )


async def _switchover_verify(ctx: _Ctx) -> _Outcome:
    target = ctx.options.switchover_target or ""
    if not valid_name(target):
        return _unchecked(f"{target!r} is not a DB_UNIQUE_NAME")
    try:
        await ctx.source.execute(f"ALTER DATABASE SWITCHOVER TO {target} VERIFY")
    except OracleSessionError as exc:
        verdicts = {
            "ORA-16475": _holds(f"{target}: ORA-16475", "ready, with warnings in the alert log"),
            "ORA-16470": _fails(f"{target}: ORA-16470", "Redo Apply is not running there"),
            "ORA-16467": _fails(f"{target}: ORA-16467", "the target is not synchronized"),
            "ORA-16465": _fails(f"{target}: ORA-16465", "this database is not an open primary"),
        }
        found = verdicts.get(exc.code or "")
        if found is not None:
            return found
        return _unchecked(f"the database answered {exc.reason}")
    return _holds(f"{target}: Database altered.", "ready for switchover")


# -- Data Pump ---------------------------------------------------------------------------------


async def _datapump_directory(ctx: _Ctx) -> _Outcome:
    name = ctx.options.datapump_directory.upper()
    rows = await ctx.rows(q.DATAPUMP_DIRECTORY_SQL, name=name)
    if not rows:
        return _fails(f"no directory {name}", "dump files and logs need a directory object")
    path, wanted = str(rows[0]["directory_path"]), ctx.options.datapump_path
    if wanted is not None and PurePath(path) != PurePath(wanted):
        return _fails(
            f"{name} = {path}",
            f"the node stages dump files at {wanted}: the directory object must name that path",
        )
    return _holds(f"{name} = {path}")


async def _datapump_roles(ctx: _Ctx) -> _Outcome:
    roles = [str(r["granted_role"]) for r in await ctx.rows(q.DATAPUMP_ROLES_SQL)]
    if not roles:
        return _fails(
            "no DATAPUMP_EXP/IMP_FULL_DATABASE or DBA granted directly",
            "full and cross-schema jobs need them (a role granted through another is not seen)",
        )
    return _holds(", ".join(roles))


async def _datapump_estimate(ctx: _Ctx) -> _Outcome:
    schema = ctx.options.datapump_estimate or ""
    home = ctx.options.home
    if home is None:
        return _unchecked("needs --oracle-home and --sid (expdp runs on the database host)")
    if not valid_name(schema):
        return _unchecked(f"{schema!r} is not a schema name")
    lines: list[str] = []
    result = await _run(
        home,
        Tool.EXPDP,
        f"SCHEMAS={schema.upper()}\nESTIMATE_ONLY=YES\n",
        lines,
        ctx.options.tool_timeout_s,
    )
    if isinstance(result, str):
        return _unchecked(result)
    found = [m.group(1).strip() for m in map(SIMULATOR.estimate_re.search, lines) if m]
    if result.ok and found:
        return _holds(f"{schema.upper()}: {found[-1]}")
    if not result.ok and result.classification is not None:
        return _unchecked(f"expdp did not estimate: {result.classification.line}")
    ctx.contradict(
        "expdp ESTIMATE_ONLY prints 'Total estimation using BLOCKS method: …'",
        lines[-1] if lines else "(no output)",
        "the doctor could not read the estimate",
    )
    return _unchecked("expdp printed no 'Total estimation using … method:' line")


# -- RMAN probes -------------------------------------------------------------------------------


async def _run(home: OracleHome, tool: Tool, script: str, lines: list[str], timeout: float) -> Any:
    async def keep(line: str) -> None:
        lines.append(line)

    try:
        return await run_tool(home, tool, script, on_line=keep, timeout=timeout)
    except EngineError as exc:
        return exc.failure.reason


async def _rman_preview(ctx: _Ctx) -> _Outcome:
    home = ctx.options.home
    if home is None:
        return _unchecked("needs --oracle-home and --sid (RMAN runs on the database host)")
    scn = database_from(await ctx.one(DATABASE_SQL)).current_scn
    lines: list[str] = []
    script = preview_script(f"tm-doctor-{uuid.uuid4().hex[:12]}", UntilScn(scn=scn))
    result = await _run(home, Tool.RMAN, script, lines, ctx.options.tool_timeout_s)
    if isinstance(result, str):
        return _unchecked(result)
    if not result.ok:
        code = result.classification.code if result.classification else None
        if code == "RMAN-06026":
            return _unchecked("RMAN's repository holds no backup to restore now from (RMAN-06026)")
        why = result.classification.line if result.classification else "failed"
        return _fails(f"RESTORE DATABASE PREVIEW to SCN {scn}", why)
    found = [m.group(1) for m in map(SIMULATOR.preview_re.search, lines) if m]
    if not found:
        ctx.contradict(
            "PREVIEW prints 'Recovery must be done beyond SCN n to clear datafile fuzziness'",
            next((line for line in lines if "SCN" in line), "(no line naming an SCN)"),
            "M_B could not be read from PREVIEW's output",
        )
        return _unchecked("no 'Recovery must be done beyond SCN …' line", f"to SCN {scn}")
    return _holds(f"to SCN {scn}: recovery beyond SCN {found[-1]}")


async def _rman_validate(ctx: _Ctx) -> _Outcome:
    home = ctx.options.home
    if home is None:
        return _unchecked("needs --oracle-home and --sid (RMAN runs on the database host)")
    lines: list[str] = []
    script = validate_database_script(f"tm-doctor-{uuid.uuid4().hex[:12]}")
    result = await _run(home, Tool.RMAN, script, lines, ctx.options.tool_timeout_s)
    if isinstance(result, str):
        return _unchecked(result)
    if not result.ok:
        why = result.classification.line if result.classification else "failed"
        return _fails("VALIDATE CHECK LOGICAL DATABASE", why)
    rows = [m for m in map(SIMULATOR.validate_row_re.match, lines) if m]
    if not rows:
        ctx.contradict(
            "VALIDATE lists 'File Status Marked Corrupt …' rows",
            "(no such row)",
            "the doctor could not read which files are corrupt",
        )
        return _unchecked("VALIDATE printed no 'List of Datafiles' row")
    bad = [
        f"file {m.group(1)} {m.group(2)} ({m.group(3)} marked corrupt)"
        for m in rows
        if m.group(2) != "OK" or int(m.group(3))
    ]
    if bad:
        return _fails("; ".join(bad), "corrupt blocks are copied into every backup")
    return _holds(f"{len(rows)} datafiles OK, none marked corrupt")


# -- the table ---------------------------------------------------------------------------------

P, D, E = Workflow.PITR, Workflow.DATAGUARD, Workflow.DATAPUMP

CHECKS: tuple[CheckSpec, ...] = (
    CheckSpec("release", "release", (P, D, E), "11.2.0.4 or later", _release),
    CheckSpec("edition", "edition", (P,), "Enterprise Edition", _edition),
    CheckSpec(
        "options", "backup options (V$OPTION)", (P,), "incremental and parallel backup", _options
    ),
    CheckSpec("archivelog", "ARCHIVELOG mode", (P, D), "ARCHIVELOG", _archivelog),
    CheckSpec("force_logging", "FORCE LOGGING", (P, D), "YES", _force_logging),
    CheckSpec(
        "identity",
        "DBID, RESETLOGS and incarnation",
        (P,),
        "one CURRENT incarnation, V$DATABASE agrees, role PRIMARY",
        _identity,
    ),
    CheckSpec("threads", "enabled redo threads (V$THREAD)", (P,), "at least one enabled", _threads),
    CheckSpec(
        "time_zone", "server time zone", (P,), "SYSTIMESTAMP's offset = time_zone", _time_zone
    ),
    CheckSpec(
        "archive_destination",
        "archive destination",
        (P,),
        "archive_dest_id VALID, local, a file system path",
        _archive_destination,
    ),
    CheckSpec(
        "unrecoverable",
        "NOLOGGING changes (V$DATAFILE)",
        (P,),
        "none",
        _unrecoverable,
        advisory=True,
    ),
    CheckSpec(
        "block_change_tracking",
        "block change tracking",
        (P,),
        "ENABLED",
        _block_change_tracking,
        advisory=True,
    ),
    CheckSpec(
        "password_file", "password file", (D,), "EXCLUSIVE or SHARED, SYS as SYSDBA", _password_file
    ),
    CheckSpec(
        "standby_redo_logs",
        "standby redo logs",
        (D,),
        "online groups + 1 per thread, each at least the online log's size",
        _standby_redo_logs,
    ),
    CheckSpec(
        "standby_file_management", "STANDBY_FILE_MANAGEMENT", (D,), "AUTO", _standby_file_management
    ),
    CheckSpec("platform", "platform", (D,), "known to V$TRANSPORTABLE_PLATFORM", _platform),
    CheckSpec(
        "tde_keystore", "TDE keystore", (D, E), "OPEN when a tablespace is encrypted", _tde_keystore
    ),
    CheckSpec(
        "switchover_verify",
        "SWITCHOVER … VERIFY",
        (D,),
        "Database altered.",
        _switchover_verify,
        asked=lambda o: o.switchover_target is not None,
    ),
    CheckSpec(
        "datapump_directory",
        "Data Pump directory",
        (E,),
        "the directory exists",
        _datapump_directory,
    ),
    CheckSpec(
        "datapump_roles",
        "Data Pump roles",
        (E,),
        "DATAPUMP_EXP/IMP_FULL_DATABASE",
        _datapump_roles,
        advisory=True,
    ),
    CheckSpec(
        "datapump_estimate",
        "Data Pump ESTIMATE_ONLY",
        (E,),
        "an estimate",
        _datapump_estimate,
        asked=lambda o: o.datapump_estimate is not None,
    ),
    CheckSpec(
        "rman_preview",
        "RMAN RESTORE DATABASE PREVIEW",
        (P,),
        "a base and its fuzziness SCN",
        _rman_preview,
        asked=lambda o: o.rman_preview,
    ),
    CheckSpec(
        "rman_validate",
        "RMAN VALIDATE CHECK LOGICAL",
        (P,),
        "no corrupt block",
        _rman_validate,
        asked=lambda o: o.rman_validate,
    ),
)

_UNREADABLE = {
    "ORA-00942": "this user cannot read the view (grant SELECT_CATALOG_ROLE or SELECT on it)",
    "ORA-01031": "this user lacks the privilege",
    "ORA-00904": "a column this release does not have",
}


async def examine(source: DoctorSource, options: DoctorOptions, *, dsn: str = "") -> Report:
    """Every check of `CHECKS` that serves one of `options.workflows` (and, for the probes, was
    asked for), in table order. Never raises for a database's answer: a failed query is a
    "not checked" with its code."""
    ctx = _Ctx(source, options)
    checks: list[Check] = []
    for spec in CHECKS:
        if not set(spec.workflows) & options.workflows or not spec.asked(options):
            continue
        if options.only is not None and spec.name not in options.only:
            continue
        try:
            outcome = await spec.run(ctx)
        except OracleSessionError as exc:
            hint = _UNREADABLE.get(exc.code or "", "")
            outcome = _unchecked(f"{exc.reason}" + (f" ({hint})" if hint else ""))
        except _Unanswered as exc:
            outcome = _unchecked(str(exc))
        checks.append(
            Check(
                name=spec.name,
                title=spec.title,
                workflows=spec.workflows,
                verdict=outcome.verdict,
                observed=outcome.observed,
                expected=spec.expected,
                why=outcome.why,
                advisory=spec.advisory,
            )
        )
    cdb = await _cdb(ctx)
    if cdb:
        ctx.contradict(
            "a non-CDB (the simulator models no pluggable database)",
            "CDB",
            "backups and restores of a container database run with PDBs nobody simulated",
        )
    return Report(
        dsn=dsn,
        checks=tuple(checks),
        contradictions=tuple(_unique(ctx.contradictions)),
        facts=dict(ctx.facts),
    )


async def _cdb(ctx: _Ctx) -> bool:
    try:
        row = await ctx.one(q.CDB_SQL)
    except (OracleSessionError, _Unanswered):
        return False  # ORA-00904 on 11.2: no CDB there
    ctx.facts["cdb"] = str(row["cdb"])
    return str(row["cdb"]) == "YES"


def _unique(items: Sequence[Contradiction]) -> list[Contradiction]:
    seen: set[Contradiction] = set()
    out: list[Contradiction] = []
    for item in items:
        if item not in seen:
            seen.add(item)
            out.append(item)
    return out


# -- the real source ---------------------------------------------------------------------------


@dataclass
class LinkSource:
    """`DoctorSource` over one python-oracledb connection (`session.open_link`: the same modes
    and credentials as the engine's session). Unlike the engine's session it does not refuse a
    server whose zone differs from `time_zone`: that is a finding here, not a reason to stop."""

    link: Any

    async def rows(self, sql: str, binds: Mapping[str, object]) -> list[dict[str, Any]]:
        import oracledb

        try:
            found: list[dict[str, Any]] = await self.link.rows(sql, binds)
            return found
        except oracledb.Error as exc:
            raise session_error(exc, f"reading {_view_of(sql)}") from None

    async def execute(self, sql: str) -> None:
        import oracledb

        try:
            await self.link.execute(sql)
        except oracledb.Error as exc:
            raise session_error(exc, f"running {sql}") from None

    async def close(self) -> None:
        await self.link.close()


async def connect(settings: ConnectSettings) -> LinkSource:
    return LinkSource(await open_link(settings))
