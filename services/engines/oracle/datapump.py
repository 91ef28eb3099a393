"""The engine half of the `datapump` method: schemas (or a whole database) moved by Oracle Data
Pump, through the object store or over a database link, one call per migration step.

    prepare            the directory objects, the link, the schemas at the source and none of
                       them at the target (a fresh target), and the size by ESTIMATE_ONLY
    export_to_store    (the caller has fenced the source) expdp at FLASHBACK_SCN into the
                       source's directory, each file uploaded with its crc32c, the source's
                       inventory, then the manifest, last
    import_from_store  the dump set downloaded (verified) into the target's directory, impdp
    import_over_link   impdp NETWORK_LINK at FLASHBACK_SCN (`current_scn` of the fenced source)
    validate           both inventories compared (objects per owner and type, rows per table),
                       INVALID objects recompiled on the target and listed

**Judging a run.** Exit 0 is not trusted alone (the terminal `Job ... successfully completed`
line must be there), and exit 5 never means fine: every coded line of the job's log file (read
whole, not the runner's capped copy) is either a wrapper, an annotation, or benign in this
workflow by `errors.BENIGN_IN`; anything else fails the step with its code (ORA-39151 under
TABLE_EXISTS_ACTION=SKIP means rows not loaded: fatal).

**Resuming.** Job names are a function of the migration (`TM_EXP_<digest>`, `TM_IMP_<digest>`),
so a step run again finds its own job in DBA_DATAPUMP_JOBS: NOT RUNNING (a crash, a killed
client's workers, a stopped job) or IDLING is attached and restarted (`START_JOB`, then
`CONTINUE_CLIENT` to log to the end), EXECUTING is attached to and waited for, STOP PENDING or
STOPPING is retried later. No job and a log ending in a terminal line: the job finished while
nobody watched, and its log is judged. Otherwise the step starts afresh, after removing only its
own files (`tm_<digest>_*`) from the directory. Never a new job over a half-done one: a second
import over the first's tables would report ORA-39151 and load nothing.

**Store layout** under `key_prefix`: `run-<time>-<random>/` holds one export's dump files and
its log; `manifest.json`, create-only and written last, is what makes an export exist (the
shape of `services/engines/postgres/migration/dump.py`).

SQL goes through `DataPumpSql` (`rows`/`call` with binds only: identifiers reach SQL as binds
checked by DBMS_ASSERT inside the statement, never pasted in).
"""

from __future__ import annotations

import contextlib
import enum
import hashlib
import re
import secrets
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path, PurePath
from typing import Any, Protocol

from pydantic import BaseModel, ConfigDict

from schemas import utcnow
from services.blobstore import (
    BlobStore,
    BlobStoreError,
    ObjectConflict,
    TerminalBlobError,
    validate_key,
)
from services.engines.base import EngineError
from services.engines.oracle.errors import (
    Classification,
    Verdict,
    benign_in,
    classify,
    codes_in,
    rule_for,
)
from services.engines.oracle.runner import Connect, OracleHome, Tool, ToolResult, run_tool
from services.engines.oracle.session import OracleSessionError

__all__ = [
    "ATTACH_COMMANDS",
    "DataPumpManifest",
    "DataPumpPlan",
    "DataPumpSide",
    "DataPumpSql",
    "ImportOutcome",
    "Inventory",
    "Mode",
    "PrepareOutcome",
    "ValidationReport",
    "attach_parfile",
    "current_scn",
    "estimate_parfile",
    "export_parfile",
    "export_to_store",
    "import_from_store",
    "import_over_link",
    "import_parfile",
    "judge",
    "network_import_parfile",
    "prepare",
    "read_manifest",
    "validate",
]

MANIFEST_NAME = "manifest.json"
TOOL_TIMEOUT = 24 * 3600.0
"""Seconds one expdp/impdp run may take: a bound against a hung tool, not a budget."""
ATTACH_COMMANDS = "START_JOB\nCONTINUE_CLIENT\n"
"""What an attached client is told for a job nobody runs: start it, then log to its end."""
WAIT_COMMANDS = "CONTINUE_CLIENT\n"
"""...and for a job that runs: log to its end."""

_IDENT = re.compile(r"^[A-Z][A-Z0-9_$#]{0,127}$")
_LINK = re.compile(r"^[A-Z][A-Z0-9_$#.]{0,127}$")
TERMINAL_RE = re.compile(
    r'^Job "(?P<owner>[^"]+)"\."(?P<job>[^"]+)" (?:(?P<ok>successfully completed)'
    r"|completed with (?P<errors>\d+) error\(s\)|(?P<fatal>stopped due to fatal error)) at "
)
"""The line a Data Pump job ends its log with (reference/migration.md §5.1)."""
_ROWS_LOST = frozenset({"ORA-31693", "ORA-39151", "ORA-31679", "ORA-39152", "ORA-39153"})
"""Codes that say a table's rows were not loaded as exported (or were loaded over others)."""
ROWS_RE = re.compile(r'^\. \. (?:exported|imported) "([^"]+)"\."([^"]+)"\s+\S+ \S+\s+(\d+) rows')


# -- SQL ------------------------------------------------------------------------------------------

CURRENT_SCN_SQL = "SELECT current_scn FROM v$database"
DIRECTORY_SQL = "SELECT directory_path FROM dba_directories WHERE directory_name = :name"
DB_LINK_SQL = "SELECT db_link FROM dba_db_links WHERE db_link = :name"
USER_SQL = "SELECT username FROM dba_users WHERE username = :name"
APP_USERS_SQL = "SELECT username FROM dba_users WHERE oracle_maintained = 'N' ORDER BY username"
"""The owners a full export carries (ORACLE_MAINTAINED: 12.1 on)."""
JOB_SQL = """\
SELECT owner_name, job_name, operation, job_mode, state, attached_sessions
  FROM dba_datapump_jobs
 WHERE job_name = :job_name"""
OBJECT_COUNTS_SQL = """\
SELECT object_type, COUNT(*) AS objects
  FROM dba_objects
 WHERE owner = :owner AND generated = 'N' AND object_name NOT LIKE 'BIN$%'
 GROUP BY object_type
 ORDER BY object_type"""
"""Recycle-bin (BIN$) and system-generated names (SYS_C..., SYS_LOB...) are left out: an import
names them anew, and some never travel (reference/migration.md §5.7)."""
INVALID_SQL = """\
SELECT object_type, object_name
  FROM dba_objects
 WHERE owner = :owner AND status = 'INVALID' AND object_name NOT LIKE 'BIN$%'
 ORDER BY object_type, object_name"""
RECOMPILE_SQL = "BEGIN UTL_RECOMP.RECOMP_SERIAL(schema => :owner); END;"
"""What utlrp.sql does, for one schema, with a bind."""
ROW_COUNTS_SQL = """\
SELECT table_name,
       XMLCAST(XMLQUERY('/ROWSET/ROW/C' PASSING XMLTYPE(DBMS_XMLGEN.GETXML(
         'SELECT COUNT(*) AS C FROM ' || DBMS_ASSERT.ENQUOTE_NAME(owner, FALSE) || '.'
         || DBMS_ASSERT.ENQUOTE_NAME(table_name, FALSE))) RETURNING CONTENT) AS NUMBER) AS row_count
  FROM dba_tables
 WHERE owner = :owner AND dropped = 'NO' AND temporary = 'N' AND secondary = 'N'
 ORDER BY table_name"""
"""Every table's COUNT(*) in one statement: the table names come from the dictionary and are
quoted by DBMS_ASSERT inside the statement, so nothing is pasted into SQL."""


class DataPumpSql(Protocol):
    """The statements above against one database (python-oracledb, or the simulator's)."""

    async def rows(self, what: str, sql: str, **binds: object) -> list[dict[str, Any]]:
        """Rows keyed by lower-case column name."""
        ...

    async def call(self, what: str, sql: str, **binds: object) -> None: ...


async def _rows(side: DataPumpSide, what: str, sql: str, **binds: object) -> list[dict[str, Any]]:
    try:
        return await side.sql.rows(what, sql, **binds)
    except OracleSessionError as exc:
        raise EngineError.of(
            f"{side.name}: {what}: {exc.reason}", code=exc.code, retryable=exc.retryable
        ) from None


async def current_scn(side: DataPumpSide) -> int:
    """The database's current SCN: after the fence, the export's (or the link's) FLASHBACK_SCN."""
    rows = await _rows(side, "reading V$DATABASE.CURRENT_SCN", CURRENT_SCN_SQL)
    return int(rows[0]["current_scn"])


# -- the plan and the parfiles --------------------------------------------------------------------


class Mode(enum.Enum):
    SCHEMA = "schema"
    """SCHEMAS=...: the listed users and their objects."""
    FULL = "full"
    """FULL=YES: every user Oracle does not maintain, and what the database has beside them."""


@dataclass(frozen=True)
class DataPumpPlan:
    """One migration's Data Pump: everything a parfile says comes from here."""

    migration_id: str
    schemas: tuple[str, ...] = ()
    """Empty: FULL=YES."""
    parallel: int = 1
    link: str | None = None
    """The target's database link to the source: import over it, no dump set."""
    timeout: float = TOOL_TIMEOUT

    def __post_init__(self) -> None:
        for schema in self.schemas:
            if not _IDENT.match(schema):
                raise ValueError(f"not a schema name Tidemark writes into a parfile: {schema!r}")
        if self.link is not None and not _LINK.match(self.link):
            raise ValueError(f"not a database link name: {self.link!r}")
        if not 1 <= self.parallel <= 99:
            raise ValueError("parallel must be 1..99 (%U numbers dump files 01 to 99)")

    @property
    def mode(self) -> Mode:
        return Mode.SCHEMA if self.schemas else Mode.FULL

    @property
    def digest(self) -> str:
        """Twelve hex digits of the migration id: job and file names are functions of it."""
        return hashlib.sha256(self.migration_id.encode()).hexdigest()[:12]

    def job_name(self, operation: str) -> str:
        """`TM_EXP_<digest>` / `TM_IMP_<digest>`: 19 characters, within 11.2's 30."""
        return f"TM_{operation}_{self.digest.upper()}"

    @property
    def dumpfile(self) -> str:
        return f"tm_{self.digest}_%U.dmp"

    def logfile(self, operation: str) -> str:
        return f"tm_{self.digest}_{operation.lower()}.log"

    @property
    def workflow(self) -> str:
        return "datapump.schema_import" if self.schemas else "datapump.full_import"

    def owned(self, name: str) -> bool:
        """Whether a file of the directory is one this plan writes (the only ones it removes)."""
        return name.startswith(f"tm_{self.digest}_")


def _mode_lines(plan: DataPumpPlan) -> list[str]:
    return [f"SCHEMAS={','.join(plan.schemas)}"] if plan.schemas else ["FULL=YES"]


def estimate_parfile(plan: DataPumpPlan) -> str:
    """The size of an export, with nothing written (no job name: a crashed estimate leaves
    nothing a later one would collide with)."""
    return "\n".join([*_mode_lines(plan), "ESTIMATE_ONLY=YES", "NOLOGFILE=YES"]) + "\n"


def export_parfile(plan: DataPumpPlan, directory: str, scn: int) -> str:
    return (
        "\n".join(
            [
                *_mode_lines(plan),
                f"DIRECTORY={directory}",
                f"DUMPFILE={plan.dumpfile}",
                f"LOGFILE={plan.logfile('EXP')}",
                f"PARALLEL={plan.parallel}",
                f"FLASHBACK_SCN={scn}",
                f"JOB_NAME={plan.job_name('EXP')}",
                "EXCLUDE=STATISTICS",
                "METRICS=YES",
            ]
        )
        + "\n"
    )


def import_parfile(plan: DataPumpPlan, directory: str) -> str:
    """From the dump set. TABLE_EXISTS_ACTION=SKIP is the default, written out: nothing in the
    target is ever overwritten, so a table already there is reported (ORA-39151), not lost."""
    return (
        "\n".join(
            [
                *_mode_lines(plan),
                f"DIRECTORY={directory}",
                f"DUMPFILE={plan.dumpfile}",
                f"LOGFILE={plan.logfile('IMP')}",
                f"PARALLEL={plan.parallel}",
                f"JOB_NAME={plan.job_name('IMP')}",
                "TABLE_EXISTS_ACTION=SKIP",
                "METRICS=YES",
            ]
        )
        + "\n"
    )


def network_import_parfile(plan: DataPumpPlan, directory: str, scn: int) -> str:
    """Over the link, at the source's SCN; DIRECTORY holds only the log file."""
    assert plan.link is not None
    return (
        "\n".join(
            [
                f"NETWORK_LINK={plan.link}",
                *_mode_lines(plan),
                f"DIRECTORY={directory}",
                f"LOGFILE={plan.logfile('IMP')}",
                f"PARALLEL={plan.parallel}",
                f"FLASHBACK_SCN={scn}",
                f"JOB_NAME={plan.job_name('IMP')}",
                "TABLE_EXISTS_ACTION=SKIP",
                "EXCLUDE=STATISTICS",
                "METRICS=YES",
            ]
        )
        + "\n"
    )


def attach_parfile(job_name: str) -> str:
    """ATTACH takes no other job parameter (UDE-00011); the commands go on standard input."""
    return f"ATTACH={job_name}\n"


@dataclass(frozen=True)
class DataPumpSide:
    """One database's end of the method: where its tools are, how they log on, its SQL, and
    its directory object with that directory's path on this node (where files are staged)."""

    name: str
    home: OracleHome
    sql: DataPumpSql
    directory: str
    directory_path: Path
    connect: Connect = field(default_factory=Connect.os_auth)


# -- judging a run --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Judged:
    """A run that did what it was asked: the benign codes it printed, rows per table."""

    warnings: tuple[str, ...]
    rows: Mapping[str, int]


def _failure(what: str, found: Classification) -> EngineError:
    return EngineError(found.failure(what))


def judge(workflow: str, exit_code: int | None, lines: Sequence[str], what: str) -> Judged:
    """The verdict on one Data Pump run from its exit code and its whole log (module
    docstring); raises `EngineError` with the deciding code when it failed. `exit_code` None:
    a log of a job that finished while nobody watched (its terminal line alone decides)."""
    terminal = next((m for m in map(TERMINAL_RE.match, reversed(lines)) if m), None)
    found = codes_in(lines)
    deciding = [
        (code, line)
        for code, line in found
        if rule_for(code).verdict not in (Verdict.WRAPPER, Verdict.CONTEXT)
        and benign_in(workflow, code, line) is None
    ]
    if terminal is None or terminal.group("fatal"):
        if found:
            failed = classify(line for _, line in found)
            raise _failure(what, failed)
        ending = "no terminal line" if terminal is None else "stopped due to fatal error"
        raise EngineError.of(
            f"{what}: exit {exit_code} and {ending}; a Data Pump run is judged by its log",
            code="TM-ORA-050",
        )
    if deciding:
        # Rows not loaded decide before the objects that merely existed: the failure's code
        # names the worst of what happened (ORA-39151 over the ORA-31684 of its user).
        deciding.sort(key=lambda found: found[0] not in _ROWS_LOST)
        raise _failure(what, classify(line for _, line in deciding))
    errors = int(terminal.group("errors") or 0)
    expected = 5 if errors else 0
    if (exit_code is not None and exit_code != expected) or (errors and not found):
        raise EngineError.of(
            f"{what}: exit {exit_code} with the terminal line {terminal.group(0).strip()!r}"
            + (" and no error line" if errors and not found else ""),
            code="TM-ORA-051",
        )
    rows: dict[str, int] = {}
    for line in lines:
        match = ROWS_RE.match(line)
        if match:
            rows[f"{match.group(1)}.{match.group(2)}"] = int(match.group(3))
    warnings = tuple(line for code, line in found if benign_in(workflow, code, line))
    return Judged(warnings=warnings, rows=rows)


def _log_lines(side: DataPumpSide, plan: DataPumpPlan, operation: str) -> list[str] | None:
    path = side.directory_path / plan.logfile(operation)
    try:
        return path.read_text(errors="replace").splitlines()
    except FileNotFoundError:
        return None


# -- running a job, or finding it again ------------------------------------------------------------


async def _job_state(side: DataPumpSide, job_name: str) -> str | None:
    rows = await _rows(side, "reading DBA_DATAPUMP_JOBS", JOB_SQL, job_name=job_name)
    return str(rows[0]["state"]) if rows else None


@dataclass(frozen=True)
class _Ran:
    lines: list[str]
    exit_code: int | None
    """None: the job had finished before this call looked (its log decides)."""
    resumed: bool


Start = Callable[[], Awaitable[str]]
"""Prepares a fresh job (removes the plan's old files, stages what it needs) and returns its
parfile: called only when no job and no finished log are there."""


async def _run_or_resume(
    side: DataPumpSide, plan: DataPumpPlan, tool: Tool, operation: str, start: Start, what: str
) -> _Ran:
    """Run a fresh job, or attach to the one a previous call left (module docstring); returns
    the job's whole log and the exit code of this call's run."""
    job_name = plan.job_name(operation)
    state = await _job_state(side, job_name)
    resumed = state is not None
    if state in ("NOT RUNNING", "IDLING"):
        result = await _attach(side, plan, tool, job_name, ATTACH_COMMANDS)
    elif state in ("EXECUTING", "DEFINING", "COMPLETING"):
        result = await _attach(side, plan, tool, job_name, WAIT_COMMANDS)
    elif state in ("STOP PENDING", "STOPPING"):
        raise EngineError.of(
            f"{what}: job {job_name} is {state}; it can be restarted once NOT RUNNING",
            code="TM-ORA-052",
            retryable=True,
        )
    elif state is not None:
        raise EngineError.of(f"{what}: job {job_name} is {state}", code="TM-ORA-053")
    else:
        lines = _log_lines(side, plan, operation)
        if lines is not None and any(TERMINAL_RE.match(line) for line in lines):
            # Finished while nobody watched (its control table is gone): its log is the word.
            return _Ran(lines, exit_code=None, resumed=True)
        parfile = await start()
        result = await run_tool(
            side.home, tool, parfile, connect=side.connect, timeout=plan.timeout
        )
    lines = _log_lines(side, plan, operation) or []
    return _Ran(_with_client_lines(lines, result), exit_code=result.exit_code, resumed=resumed)


def _with_client_lines(lines: list[str], result: ToolResult) -> list[str]:
    """The log, and what only the client printed when the log does not end the job (a job
    that never started writes no log; UDI-03113 on a lost instance is never in it)."""
    if any(TERMINAL_RE.match(line) for line in lines):
        return lines
    return [*lines, *(line for line in result.tail if line not in lines)]


async def _attach(
    side: DataPumpSide, plan: DataPumpPlan, tool: Tool, job_name: str, commands: str
) -> ToolResult:
    return await run_tool(
        side.home,
        tool,
        attach_parfile(job_name),
        connect=side.connect,
        timeout=plan.timeout,
        stdin=commands,
    )


def _clear_own_files(side: DataPumpSide, plan: DataPumpPlan) -> None:
    for path in side.directory_path.iterdir():
        if path.is_file() and plan.owned(path.name):
            path.unlink()


def _dump_files(side: DataPumpSide, plan: DataPumpPlan) -> list[Path]:
    pattern = re.compile(rf"^tm_{plan.digest}_(\d\d)\.dmp$")
    return sorted(p for p in side.directory_path.iterdir() if pattern.match(p.name))


# -- inventories ----------------------------------------------------------------------------------


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Inventory(_Strict):
    """What validation compares: objects per owner and type, INVALID objects, rows per table."""

    objects: dict[str, dict[str, int]]
    invalid: dict[str, list[str]]
    """Owner -> `TYPE NAME` of each INVALID object."""
    rows: dict[str, int]
    """`OWNER.TABLE` -> COUNT(*)."""


async def _owners(side: DataPumpSide, plan: DataPumpPlan) -> list[str]:
    if plan.schemas:
        return list(plan.schemas)
    rows = await _rows(side, "listing the users to carry", APP_USERS_SQL)
    return [str(r["username"]) for r in rows]


async def inventory(side: DataPumpSide, owners: Sequence[str]) -> Inventory:
    objects: dict[str, dict[str, int]] = {}
    invalid: dict[str, list[str]] = {}
    rows: dict[str, int] = {}
    for owner in owners:
        counted = await _rows(side, "counting objects", OBJECT_COUNTS_SQL, owner=owner)
        objects[owner] = {str(r["object_type"]): int(r["objects"]) for r in counted}
        bad = await _rows(side, "listing INVALID objects", INVALID_SQL, owner=owner)
        invalid[owner] = [f"{r['object_type']} {r['object_name']}" for r in bad]
        for r in await _rows(side, "counting rows", ROW_COUNTS_SQL, owner=owner):
            rows[f"{owner}.{r['table_name']}"] = int(r["row_count"])
    return Inventory(objects=objects, invalid=invalid, rows=rows)


# -- prepare ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PrepareOutcome:
    estimate_kb: int
    owners: tuple[str, ...]


async def _check_directory(side: DataPumpSide) -> None:
    rows = await _rows(side, "reading DBA_DIRECTORIES", DIRECTORY_SQL, name=side.directory)
    if not rows:
        raise EngineError.of(f"{side.name}: no directory object {side.directory}", code="ORA-39087")
    if PurePath(str(rows[0]["directory_path"])) != PurePath(side.directory_path):
        raise EngineError.of(
            f"{side.name}: directory {side.directory} is {rows[0]['directory_path']}, not the "
            f"staging path {side.directory_path} this node was configured with",
            code="TM-ORA-054",
        )


async def prepare(plan: DataPumpPlan, source: DataPumpSide, target: DataPumpSide) -> PrepareOutcome:
    """Everything checkable before the fence, and the export's size estimate. Read-only on both
    sides (an estimate writes nothing)."""
    await _check_directory(target)
    if plan.link is None:
        await _check_directory(source)
    elif not await _rows(target, "reading DBA_DB_LINKS", DB_LINK_SQL, name=plan.link):
        raise EngineError.of(f"{target.name}: no database link {plan.link}", code="ORA-02019")
    owners = await _owners(source, plan)
    for owner in owners:
        if not await _rows(source, "reading DBA_USERS", USER_SQL, name=owner):
            raise EngineError.of(f"{source.name}: schema {owner} was not found", code="ORA-39165")
        if await _rows(target, "reading DBA_USERS", USER_SQL, name=owner):
            raise EngineError.of(
                f"{target.name}: user {owner} already exists: the method imports into a fresh "
                "target only (an import over existing tables loads none of their rows)",
                code="TM-ORA-055",
            )
    result = await run_tool(
        source.home, Tool.EXPDP, estimate_parfile(plan), connect=source.connect,
        timeout=plan.timeout,
    )  # fmt: skip
    lines = [*result.coded_lines, *result.tail]
    judge("datapump.export", result.exit_code, lines, f"{source.name}: expdp ESTIMATE_ONLY")
    total = next((int(m.group(1)) for m in map(_ESTIMATE_RE.search, lines) if m is not None), 0)
    return PrepareOutcome(estimate_kb=total, owners=tuple(owners))


_ESTIMATE_RE = re.compile(r"Total estimation using \w+ method: (\d+) KB")


# -- export ---------------------------------------------------------------------------------------


class DumpFile(_Strict):
    name: str
    key: str
    size: int
    crc32c: str


class DataPumpManifest(_Strict):
    """A finished export: what was exported, at which SCN, its files, and the source's
    inventory read after it (the source fenced: the same contents)."""

    format: int = 1
    migration_id: str
    key_prefix: str
    mode: str
    schemas: tuple[str, ...]
    owners: tuple[str, ...]
    job_name: str
    flashback_scn: int
    files: tuple[DumpFile, ...]
    log_key: str
    exported_rows: dict[str, int]
    inventory: Inventory
    created_at: datetime


def _manifest_key(key_prefix: str) -> str:
    return validate_key(f"{key_prefix}/{MANIFEST_NAME}")


def _store_error(what: str, exc: BlobStoreError) -> EngineError:
    return EngineError.of(
        f"{what}: {exc}", code="TM-ORA-056", retryable=not isinstance(exc, TerminalBlobError)
    )


async def read_manifest(store: BlobStore, key_prefix: str) -> DataPumpManifest | None:
    """The manifest of the export under `key_prefix`, or None when none finished there."""
    key = _manifest_key(key_prefix)
    try:
        if await store.head(key) is None:
            return None
        return DataPumpManifest.model_validate_json(await store.get_bytes(key))
    except BlobStoreError as exc:
        raise _store_error(key, exc) from exc


def _scn_marker(path: Path) -> int | None:
    with contextlib.suppress(FileNotFoundError, ValueError):
        return int(path.read_text())
    return None


async def export_to_store(
    plan: DataPumpPlan,
    source: DataPumpSide,
    store: BlobStore,
    key_prefix: str,
    *,
    scn: int | None = None,
) -> DataPumpManifest:
    """expdp of the fenced source at `scn` (default: its current SCN, read now) into the store,
    manifest last. Rerunnable: a manifest means done; a job left by a crash is attached to
    and restarted; a finished job's files are uploaded without exporting again."""
    validate_key(key_prefix)
    found = await read_manifest(store, key_prefix)
    if found is not None:
        if found.migration_id != plan.migration_id:
            raise EngineError.of(
                f"{key_prefix} holds the export of migration {found.migration_id}",
                code="TM-ORA-057",
            )
        return found
    marker = source.directory_path / f"tm_{plan.digest}_exp.scn"

    async def start() -> str:
        _clear_own_files(source, plan)
        taken = scn if scn is not None else await current_scn(source)
        # Kept beside the dump set: a resumed or finished job's SCN is the one it ran at.
        marker.write_text(str(taken))
        return export_parfile(plan, source.directory, taken)

    ran = await _run_or_resume(source, plan, Tool.EXPDP, "EXP", start, f"{source.name}: expdp")
    judged = judge("datapump.export", ran.exit_code, ran.lines, f"{source.name}: expdp")
    taken = _scn_marker(marker)
    if taken is None:
        raise EngineError.of(
            f"{source.name}: the export's SCN marker {marker} is gone", code="TM-ORA-058"
        )
    owners = await _owners(source, plan)
    taken_inventory = await inventory(source, owners)
    run = f"run-{utcnow().strftime('%Y%m%dT%H%M%SZ')}-{secrets.token_hex(4)}"
    files: list[DumpFile] = []
    try:
        for path in _dump_files(source, plan):
            key = validate_key(f"{key_prefix}/{run}/{path.name}")
            info = await store.put_file(key, path, {"engine": "oracle", "kind": "datapump"})
            files.append(DumpFile(name=path.name, key=key, size=info.size, crc32c=info.crc32c))
        log_key = validate_key(f"{key_prefix}/{run}/{plan.logfile('EXP')}")
        await store.put_file(log_key, source.directory_path / plan.logfile("EXP"))
    except BlobStoreError as exc:
        raise _store_error(f"uploading the dump set under {key_prefix}", exc) from exc
    if not files:
        raise EngineError.of(
            f"{source.name}: expdp finished but left no dump file", code="TM-ORA-058"
        )
    manifest = DataPumpManifest(
        migration_id=plan.migration_id,
        key_prefix=key_prefix,
        mode=plan.mode.value,
        schemas=plan.schemas,
        owners=tuple(owners),
        job_name=plan.job_name("EXP"),
        flashback_scn=taken,
        files=tuple(files),
        log_key=log_key,
        exported_rows=dict(judged.rows),
        inventory=taken_inventory,
        created_at=utcnow(),
    )
    try:
        await store.put_stream(
            _manifest_key(key_prefix), manifest.model_dump_json(indent=1).encode()
        )
    except ObjectConflict:
        winner = await read_manifest(store, key_prefix)
        if winner is None:
            raise
        manifest = winner
    except BlobStoreError as exc:
        raise _store_error(f"writing {_manifest_key(key_prefix)}", exc) from exc
    await _forget_other_runs(store, manifest)
    _clear_own_files(source, plan)
    return manifest


async def _forget_other_runs(store: BlobStore, manifest: DataPumpManifest) -> None:
    kept = {f.key for f in manifest.files} | {manifest.log_key, _manifest_key(manifest.key_prefix)}
    with contextlib.suppress(BlobStoreError):
        stale = [o.key async for o in store.list(f"{manifest.key_prefix}/") if o.key not in kept]
        for key in stale:
            await store.delete(key)


# -- import ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ImportOutcome:
    job_name: str
    rows: Mapping[str, int]
    """Rows per table the log says were imported (a resumed job: the rows of every run)."""
    warnings: tuple[str, ...]
    """The benign lines, each allowed by the workflow (`errors.BENIGN_IN`)."""
    resumed: bool


async def _stage(side: DataPumpSide, store: BlobStore, manifest: DataPumpManifest) -> None:
    try:
        for f in manifest.files:
            await store.get_to_file(f.key, side.directory_path / f.name)
    except BlobStoreError as exc:
        raise _store_error("staging the dump set", exc) from exc


async def import_from_store(
    plan: DataPumpPlan, target: DataPumpSide, store: BlobStore, key_prefix: str
) -> ImportOutcome:
    """impdp of the export under `key_prefix` into the target (module docstring: judging,
    resuming). The staged dump files are removed once the import is judged a success."""
    manifest = await read_manifest(store, key_prefix)
    if manifest is None:
        raise EngineError.of(f"no finished export under {key_prefix}", code="TM-ORA-059")

    async def start() -> str:
        _clear_own_files(target, plan)
        await _stage(target, store, manifest)
        return import_parfile(plan, target.directory)

    what = f"{target.name}: impdp"
    ran = await _run_or_resume(target, plan, Tool.IMPDP, "IMP", start, what)
    judged = judge(plan.workflow, ran.exit_code, ran.lines, what)
    # The log stays: a step run again after this one (an executor restarted before its result
    # was journaled) judges it instead of importing over the tables again (ORA-39151).
    for path in _dump_files(target, plan):
        path.unlink()
    return ImportOutcome(plan.job_name("IMP"), judged.rows, judged.warnings, ran.resumed)


async def import_over_link(plan: DataPumpPlan, target: DataPumpSide, scn: int) -> ImportOutcome:
    """impdp NETWORK_LINK of the fenced source at `scn` (`current_scn` of the source)."""
    if plan.link is None:
        raise ValueError("import_over_link needs a plan with a link")

    async def start() -> str:
        _clear_own_files(target, plan)
        return network_import_parfile(plan, target.directory, scn)

    what = f"{target.name}: impdp over {plan.link}"
    ran = await _run_or_resume(target, plan, Tool.IMPDP, "IMP", start, what)
    judged = judge(plan.workflow, ran.exit_code, ran.lines, what)
    return ImportOutcome(plan.job_name("IMP"), judged.rows, judged.warnings, ran.resumed)


# -- validate -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ValidationReport:
    """Source against target after the import; `ok` when nothing is missing or extra."""

    object_differences: tuple[str, ...]
    row_differences: tuple[str, ...]
    recompiled: tuple[str, ...]
    """INVALID after the import, VALID after the recompile."""
    invalid_as_at_source: tuple[str, ...]
    """Still INVALID, as they were at the source: listed, not a failure."""
    new_invalid: tuple[str, ...]
    """Still INVALID though VALID at the source: a failure."""
    objects: int = 0
    """Objects the source has, counted per owner and type (what was compared)."""
    tables: int = 0
    rows: int = 0
    """Tables and rows the source has (what was compared)."""

    def summary(self) -> str:
        """One line for the saga's history: what was compared, what was recompiled or left."""
        said = f"{self.objects} objects, {self.tables} tables, {self.rows} rows compared"
        if self.recompiled:
            said += f"; recompiled: {', '.join(self.recompiled)}"
        if self.invalid_as_at_source:
            said += f"; INVALID as at the source: {', '.join(self.invalid_as_at_source)}"
        return said

    @property
    def ok(self) -> bool:
        return not (self.object_differences or self.row_differences or self.new_invalid)


async def validate(plan: DataPumpPlan, target: DataPumpSide, source: Inventory) -> ValidationReport:
    """Recompile the target's INVALID objects, then compare it with `source` (the manifest's
    inventory, or `inventory(source side)` for an import over a link)."""
    owners = list(source.objects)
    before = await inventory(target, owners)
    for owner in owners:
        if before.invalid.get(owner):
            try:
                await target.sql.call("recompiling", RECOMPILE_SQL, owner=owner)
            except OracleSessionError as exc:
                raise EngineError.of(
                    f"{target.name}: recompiling {owner}: {exc.reason}",
                    code=exc.code,
                    retryable=exc.retryable,
                ) from None
    after = await inventory(target, owners)
    object_diffs = [
        f"{owner} {kind}: source {source.objects[owner].get(kind, 0)}, "
        f"target {after.objects.get(owner, {}).get(kind, 0)}"
        for owner in owners
        for kind in sorted(set(source.objects[owner]) | set(after.objects.get(owner, {})))
        if source.objects[owner].get(kind, 0) != after.objects.get(owner, {}).get(kind, 0)
    ]
    row_diffs = [
        f"{table}: source {source.rows.get(table)}, target {after.rows.get(table)}"
        for table in sorted(set(source.rows) | set(after.rows))
        if source.rows.get(table) != after.rows.get(table)
    ]
    recompiled, as_source, new = [], [], []
    for owner in owners:
        still = set(after.invalid.get(owner, []))
        at_source = set(source.invalid.get(owner, []))
        recompiled += [f"{owner} {o}" for o in before.invalid.get(owner, []) if o not in still]
        as_source += [f"{owner} {o}" for o in sorted(still & at_source)]
        new += [f"{owner} {o}" for o in sorted(still - at_source)]
    return ValidationReport(
        tuple(object_diffs),
        tuple(row_diffs),
        tuple(recompiled),
        tuple(as_source),
        tuple(new),
        objects=sum(sum(kinds.values()) for kinds in source.objects.values()),
        tables=len(source.rows),
        rows=sum(source.rows.values()),
    )
