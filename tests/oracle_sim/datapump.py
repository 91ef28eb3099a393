"""The simulated `expdp` / `impdp`: Data Pump jobs over the simulated dictionary. Not Oracle.

What a run does, in the order the real clients do it:

1. Parameters, from `parfile=<file>` (one `KEY=VALUE` a line, `#` comments) and `KEY=VALUE`
   arguments. The parser refuses before connecting, as the clients' parameter layer does:
   `LRM-00101: unknown parameter name 'x'` (and `LRM-00113: error when processing file '...'`
   for a parfile), `LRM-00121: 'x' is not an allowable value for 'full'` for a YES/NO
   parameter, `UDE-00014`/`UDI-00014: invalid value for parameter, 'parallel'.` for a number or
   keyword that is not one (UDE for expdp, UDI for impdp), `UDE-00010: multiple job modes
   requested, schema and full.`, `UDE-00011: parameter dumpfile is incompatible with parameter
   attach` (ATTACH takes no job parameters). A parameter the real tools know and the simulator
   does not model is refused with a line saying so, never silently ignored.
2. Logon: the database must be open (`UDE-01034` + ORA-01034 + ORA-27101, exit 1).
3. The job: a name (JOB_NAME, or the first free `SYS_<EXPORT|IMPORT>_<SCHEMA|FULL>_NN`; a
   JOB_NAME whose control table exists is ORA-31634), a row in DBA_DATAPUMP_JOBS (EXECUTING),
   then steps in Data Pump's order, each persisted as done: export `ESTIMATE`, one
   `TABLE_DATA:<OWNER>.<TABLE>` per table, `END` (the dump set: `%U` expanded 01..PARALLEL, the
   master table in file 01; files are created at the start, so an existing one is ORA-31641 +
   ORA-27038 unless REUSE_DUMPFILES=YES); import `TABLESPACE:` (full), `USER:`, `SEQUENCE:`,
   `TABLE:`, `TABLE_DATA:`, `INDEX:`, `VIEW:`, `PROCEDURE:`, `SYNONYM:`, `END`.
4. Object errors do not stop a job: ORA-31684 (object exists), ORA-39151/39152/39153 (a table
   exists, under TABLE_EXISTS_ACTION SKIP/APPEND/TRUNCATE; SKIP loads none of its rows),
   ORA-39082 (PL/SQL created with compilation warnings: INVALID on the target), ORA-31679 (a
   LONG column over NETWORK_LINK), ORA-39165 + ORA-31655 (a schema that is not there), and
   injected ones (`SimulatedDictionary.inject_fault(..., "error", lines)`).
5. The end: the control table is dropped (the job leaves DBA_DATAPUMP_JOBS) unless
   KEEP_MASTER=YES, and the terminal line, `Job "SYS"."SYS_IMPORT_SCHEMA_01" successfully
   completed at ... elapsed 0 00:00:01` (exit 0) or `... completed with N error(s) at ...`
   (exit 5). A job that cannot start prints its ORA stack and exits 1; one whose instance
   dies under it (`inject_fault(..., "die")`) prints UDI-03113 + ORA-03113 and exits 1, and
   its control table stays, NOT RUNNING.

`ATTACH=[owner.]job` takes interactive commands from standard input: `START_JOB` (a NOT RUNNING
job, IDLING once attached, starts again from its first step not done), `CONTINUE_CLIENT` (log
until the job ends: for a job another process runs, wait for it and print its terminal line),
`EXIT_CLIENT`. ATTACH to a job with no control table is UDI-31626 + ORA-31626.

Every line goes to standard output and to the log file (LOGFILE=[dir:]name in the DIRECTORY,
export.log / import.log by default; NOLOGFILE=YES for none), appended when a job is restarted.
"""

from __future__ import annotations

import json
import os
import re
import sys
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from tests.oracle_sim.db import SimulatedOracle
from tests.oracle_sim.dictionary import (
    TABLESPACES,
    Dictionary,
    DictObject,
    Job,
    Row,
    SimulatedDictionary,
    view_state,
)

DUMP_MAGIC = b"TIDEMARK SIMULATED ORACLE DATA PUMP DUMP v1\n"

_COMMON = {
    "USERID",
    "SCHEMAS",
    "FULL",
    "DIRECTORY",
    "DUMPFILE",
    "LOGFILE",
    "NOLOGFILE",
    "PARALLEL",
    "FLASHBACK_SCN",
    "JOB_NAME",
    "ATTACH",
    "METRICS",
    "KEEP_MASTER",
    "EXCLUDE",
}
MODELLED = {
    "expdp": _COMMON | {"ESTIMATE_ONLY", "REUSE_DUMPFILES"},
    "impdp": _COMMON | {"NETWORK_LINK", "TABLE_EXISTS_ACTION"},
}
"""The parameters the simulator models, per client."""
KNOWN_NOT_MODELLED = {
    "ABORT_STEP", "ACCESS_METHOD", "CLUSTER", "COMPRESSION", "CONTENT", "DATA_OPTIONS",
    "ENCRYPTION", "ENCRYPTION_ALGORITHM", "ENCRYPTION_MODE", "ENCRYPTION_PASSWORD",
    "ENCRYPTION_PWD_PROMPT", "ESTIMATE", "ESTIMATE_ONLY", "FILESIZE", "FLASHBACK_TIME", "HELP",
    "INCLUDE", "KEEP_MASTER", "LOGTIME", "MASTER_ONLY", "NETWORK_LINK", "PARTITION_OPTIONS",
    "QUERY",
    "REMAP_DATA", "REMAP_DATAFILE", "REMAP_SCHEMA", "REMAP_TABLE", "REMAP_TABLESPACE",
    "REUSE_DUMPFILES", "SAMPLE", "SERVICE_NAME", "SKIP_UNUSABLE_INDEXES", "SOURCE_EDITION",
    "SQLFILE", "STATUS", "STREAMS_CONFIGURATION", "TABLES", "TABLESPACES", "TABLE_EXISTS_ACTION",
    "TARGET_EDITION", "TRANSFORM", "TRANSPORTABLE", "TRANSPORT_DATAFILES",
    "TRANSPORT_FULL_CHECK", "TRANSPORT_TABLESPACES", "VERSION", "VIEWS_AS_TABLES",
}  # fmt: skip
"""Parameters the real clients accept (some for one client only) that the simulator does not
model: refused with a line saying so, because accepting them silently would pass a test that
Oracle might fail."""
_IMPORT_ONLY = {
    "TABLE_EXISTS_ACTION", "REMAP_DATAFILE", "REMAP_SCHEMA", "REMAP_TABLE", "REMAP_TABLESPACE",
    "SKIP_UNUSABLE_INDEXES", "SQLFILE", "STREAMS_CONFIGURATION", "TRANSFORM",
    "TRANSPORT_DATAFILES", "TARGET_EDITION",
}  # fmt: skip
_EXPORT_ONLY = {
    "ESTIMATE_ONLY", "FILESIZE", "REUSE_DUMPFILES", "COMPRESSION", "SAMPLE", "SOURCE_EDITION",
    "ENCRYPTION", "ENCRYPTION_ALGORITHM", "ENCRYPTION_MODE",
}  # fmt: skip
"""Parameters one client does not know at all (LRM-00101 from the other)."""
_BOOLEAN = {"FULL", "NOLOGFILE", "METRICS", "ESTIMATE_ONLY", "REUSE_DUMPFILES", "KEEP_MASTER"}
_NUMBER = {"PARALLEL", "FLASHBACK_SCN"}
_TABLE_EXISTS = ("SKIP", "APPEND", "TRUNCATE", "REPLACE")
_IMPORT_ORDER = ("TABLESPACE", "USER", "SEQUENCE", "TABLE", "TABLE_DATA", "INDEX", "VIEW",
                 "PROCEDURE", "SYNONYM")  # fmt: skip
_TYPE_PATH = {
    "TABLESPACE": "TABLESPACE",
    "USER": "USER",
    "SEQUENCE": "SEQUENCE/SEQUENCE",
    "TABLE": "TABLE/TABLE",
    "TABLE_DATA": "TABLE/TABLE_DATA",
    "INDEX": "TABLE/INDEX/INDEX",
    "VIEW": "VIEW/VIEW",
    "PROCEDURE": "PROCEDURE/PROCEDURE",
    "SYNONYM": "SYNONYM/SYNONYM",
}
_NAME = re.compile(r"^[A-Z][A-Z0-9_$#]{0,127}$")


class Refused(Exception):
    """The client refuses the run: these lines, exit 1."""

    def __init__(self, *lines: str) -> None:
        super().__init__(lines[0])
        self.lines = lines


class Died(Exception):
    """The job's instance died under it (an injected fault)."""


# -- parameters ------------------------------------------------------------------------------------


def parse(tool: str, argv: list[str]) -> tuple[dict[str, str], str]:
    """The run's parameters (upper-case keys, values unquoted) and the parfile's text (for the
    run record, USERID hidden)."""
    pairs: list[tuple[str, str]] = []
    parfile_text = ""
    parfile = ""
    for arg in argv:
        key, eq, value = arg.partition("=")
        if not eq:
            raise Refused(f"LRM-00108: invalid positional parameter value '{arg}'")
        if key.strip().upper() == "PARFILE":
            parfile = value
            try:
                text = Path(value).read_text()
            except OSError:
                raise Refused(f"LRM-00109: could not open parameter file '{value}'") from None
            for line in text.splitlines():
                if not line.strip() or line.lstrip().startswith("#"):
                    continue
                k, eq2, v = line.partition("=")
                if not eq2:
                    raise Refused(
                        f"LRM-00108: invalid positional parameter value '{line.strip()}'",
                        f"LRM-00113: error when processing file '{parfile}'",
                    )
                pairs.append((k, v))
                if k.strip().upper() != "USERID":
                    parfile_text += line.strip() + "\n"
        else:
            pairs.append((key, value))
    client = "UDE" if tool == "expdp" else "UDI"
    params: dict[str, str] = {}
    for raw_key, raw_value in pairs:
        key = raw_key.strip().upper()
        value = raw_value.strip()
        if len(value) >= 2 and value[0] == value[-1] == '"':
            value = value[1:-1]
        tail = (f"LRM-00113: error when processing file '{parfile}'",) if parfile else ()
        if key not in MODELLED[tool]:
            foreign = _IMPORT_ONLY if tool == "expdp" else _EXPORT_ONLY
            if key in KNOWN_NOT_MODELLED and key not in foreign:
                raise Refused(
                    f"simulated {tool}: parameter {key} is not modelled (Tidemark test toolchain)"
                )
            raise Refused(f"LRM-00101: unknown parameter name '{raw_key.strip().lower()}'", *tail)
        if key in _BOOLEAN:
            if value.upper() not in ("Y", "YES", "N", "NO"):
                raise Refused(
                    f"LRM-00121: '{value}' is not an allowable value for '{key.lower()}'", *tail
                )
            value = "YES" if value.upper() in ("Y", "YES") else "NO"
        elif key in _NUMBER:
            if not value.isdigit() or int(value) < 1:
                raise Refused(f"{client}-00014: invalid value for parameter, '{key.lower()}'.")
        elif key == "TABLE_EXISTS_ACTION" and value.upper() not in _TABLE_EXISTS:
            raise Refused(f"{client}-00014: invalid value for parameter, '{key.lower()}'.")
        elif key == "EXCLUDE" and value.upper() != "STATISTICS":
            raise Refused(f"simulated {tool}: EXCLUDE={value} is not modelled (STATISTICS only)")
        params[key] = value if key in ("USERID", "DUMPFILE", "LOGFILE") else value.upper()
    if "ATTACH" in params:
        for other in sorted(set(params) - {"USERID", "ATTACH"}):
            raise Refused(
                f"{client}-00011: parameter {other.lower()} is incompatible with parameter attach"
            )
    elif params.get("FULL") == "YES" and "SCHEMAS" in params:
        raise Refused(f"{client}-00010: multiple job modes requested, schema and full.")
    return params, parfile_text


# -- output -------------------------------------------------------------------------------------


def _now() -> str:
    return datetime.now(UTC).strftime("%a %b %d %H:%M:%S %Y")


@dataclass
class Out:
    log: Path | None = None
    lines: list[str] = field(default_factory=list)

    def client(self, *lines: str) -> None:
        """Lines only the client prints (its lost connection): never in the job's log file."""
        for line in lines:
            print(line, flush=True)

    def __call__(self, *lines: str) -> None:
        for line in lines:
            print(line, flush=True)
            if self.log is not None:
                with self.log.open("a") as out:
                    out.write(line + "\n")


def _size(rows: int) -> str:
    return f"{max(5.0, rows * 0.0527 + 5):.3f} KB"


# -- the run ------------------------------------------------------------------------------------


def main(tool: str, argv: list[str]) -> int:
    db = SimulatedOracle.from_env()
    dictionary = SimulatedDictionary(db)
    out = Out()
    try:
        params, recorded = parse(tool, argv)
    except Refused as refused:
        db.record_run(tool, " ".join(a for a in argv))
        out(*refused.lines)
        return 1
    db.record_run(tool, recorded)
    op = "Export" if tool == "expdp" else "Import"
    out(f"{op}: Release 19.0.0.0.0 - SIMULATED (Tidemark test toolchain) on {_now()}", "")
    try:
        if db.read().open_mode != "READ WRITE":
            client = "UDE" if tool == "expdp" else "UDI"
            raise Refused(
                f"{client}-01034: operation generated ORACLE error 1034",
                "ORA-01034: ORACLE not available",
                "ORA-27101: shared memory realm does not exist",
            )
        out("Connected to: Oracle Database 19c Enterprise Edition Release 19.0.0.0.0 - SIMULATED")
        _take_fault(dictionary, tool, "LOGON", out)
        if "ATTACH" in params:
            return _attach(tool, params, dictionary, out)
        job = _define(tool, params, dictionary, out)
        return _execute(tool, job, dictionary, out)
    except Refused as refused:
        out(*refused.lines)
        return 1
    except Died:
        return 1


def _client(tool: str) -> str:
    return "UDE" if tool == "expdp" else "UDI"


def _owner(params: dict[str, str]) -> str:
    user = params.get("USERID", "/").split("/", 1)[0].strip().upper()
    return user or "SYS"


def _directory(d: Dictionary, name: str) -> Path:
    path = d.directories.get(name)
    if path is None:
        raise Refused(
            "ORA-39002: invalid operation",
            "ORA-39070: Unable to open the log file.",
            f"ORA-39087: directory name {name} is invalid",
        )
    return Path(path)


def _dump_paths(d: Dictionary, params: dict[str, str], count: int) -> list[Path]:
    spec = params.get("DUMPFILE", "expdat.dmp")
    where, _, name = spec.rpartition(":")
    directory = _directory(d, (where or params.get("DIRECTORY", "DATA_PUMP_DIR")).upper())
    if "%U" not in name.upper():
        return [directory / name]
    return [directory / re.sub("%U", f"{n:02d}", name, flags=re.I) for n in range(1, count + 1)]


def _log_path(d: Dictionary, params: dict[str, str], tool: str) -> Path | None:
    if params.get("NOLOGFILE") == "YES":
        return None
    spec = params.get("LOGFILE", "export.log" if tool == "expdp" else "import.log")
    where, _, name = spec.rpartition(":")
    return _directory(d, (where or params.get("DIRECTORY", "DATA_PUMP_DIR")).upper()) / name


def _define(tool: str, params: dict[str, str], dictionary: SimulatedDictionary, out: Out) -> Job:
    operation = "EXPORT" if tool == "expdp" else "IMPORT"
    mode = "FULL" if params.get("FULL") == "YES" else "SCHEMA"
    owner = _owner(params)
    current = dictionary.db.read().current_scn
    with dictionary.transaction() as d:
        name = params.get("JOB_NAME")
        if name is not None:
            if not _NAME.match(name):
                raise Refused(f"{_client(tool)}-00014: invalid value for parameter, 'job_name'.")
            if d.job(owner, name) is not None:
                raise Refused("ORA-31634: job already exists")
        else:
            taken = {j.job_name for j in d.jobs if j.owner == owner}
            name = next(
                f"SYS_{operation}_{mode}_{n:02d}"
                for n in range(1, 100)
                if f"SYS_{operation}_{mode}_{n:02d}" not in taken
            )
        if "DIRECTORY" in params:
            _directory(d, params["DIRECTORY"])
        if tool == "impdp" and "FLASHBACK_SCN" in params and "NETWORK_LINK" not in params:
            raise Refused(
                "ORA-39005: inconsistent arguments",
                "ORA-39208: Parameter FLASHBACK_SCN is invalid for IMPORT jobs.",
            )
        if params.get("ESTIMATE_ONLY") == "YES" and "DUMPFILE" in params:
            raise Refused(
                "ORA-39002: invalid operation",
                "ORA-39201: Dump files are not supported for estimate only jobs.",
            )
        if "NETWORK_LINK" in params and "DUMPFILE" in params:
            raise Refused(
                "UDI-00011: parameter dumpfile is incompatible with parameter network_link"
            )
        scn = int(params.get("FLASHBACK_SCN", current))
        if "NETWORK_LINK" in params:
            remote = _remote(d, params["NETWORK_LINK"])
            scn = int(params.get("FLASHBACK_SCN", remote.db.read().current_scn))
        job = Job(
            owner=owner,
            job_name=name,
            operation=operation,
            job_mode=mode,
            state="EXECUTING",
            degree=int(params.get("PARALLEL", "1")),
            pid=os.getpid(),
            params=params,
            scn=scn,
            started=datetime.now(UTC).isoformat(),
        )
        if tool == "expdp" and params.get("ESTIMATE_ONLY") != "YES":
            paths = _dump_paths(d, params, job.degree)
            for path in paths:
                if path.exists() and params.get("REUSE_DUMPFILES") != "YES":
                    raise Refused(
                        "ORA-39001: invalid argument value",
                        "ORA-39000: bad dump file specification",
                        f'ORA-31641: unable to create dump file "{path}"',
                        "ORA-27038: created file already exists",
                        "Additional information: 1",
                    )
            for path in paths:
                path.write_bytes(b"")
        if tool == "impdp" and "NETWORK_LINK" not in params:
            _content_of_dumps(d, job)  # an unreadable dump set fails before the job exists
        log = _log_path(d, params, tool)
        if log is not None:
            log.write_text("")
        d.jobs.append(job)
    out.log = log
    shown = " ".join(f"{k.lower()}={v}" for k, v in params.items() if k != "USERID")
    out(f'Starting "{owner}"."{name}":  /******** {shown}')
    return job


def _remote(d: Dictionary, link: str) -> SimulatedDictionary:
    root = d.links.get(link.upper())
    if root is None:
        raise Refused(
            "ORA-39001: invalid argument value",
            f'ORA-39200: Link name "{link}" is invalid.',
            "ORA-02019: connection description for remote database not found",
        )
    remote = SimulatedDictionary.of(Path(root))
    if remote.db.read().open_mode != "READ WRITE":
        raise Refused(
            "ORA-39001: invalid argument value",
            f'ORA-39200: Link name "{link}" is invalid.',
            "ORA-01034: ORACLE not available",
        )
    return remote


def _take_fault(
    dictionary: SimulatedDictionary, tool: str, step: str, out: Out
) -> list[str] | None:
    """Fire a fault at `step`, if one waits: hang, die, or return the error lines to print."""
    with dictionary.transaction() as d:
        fault = next(
            (f for f in d.faults if f.tool == tool and f.at == step and not f.reached), None
        )
        if fault is None:
            return None
        fault.reached = True
    if fault.action == "hang":
        while True:  # the runner's timeout (or a test) kills the process group
            time.sleep(0.2)
    if fault.action == "die":
        client = "UDE" if tool == "expdp" else "UDI"
        out.client(
            f"{client}-03113: operation generated ORACLE error 3113",
            "ORA-03113: end-of-file on communication channel",
            "Process ID: 4242",
            "Session ID: 77 Serial number: 1",
        )
        raise Died()
    return fault.lines


# -- what a job moves -----------------------------------------------------------------------------


@dataclass
class Content:
    """What an import reads: from a dump set's master table, or over a link."""

    version: str
    mode: str
    schemas: list[str]
    users: list[str]
    objects: list[DictObject]
    rows: dict[str, list[Row]]
    network: bool = False


def _selected(
    d: Dictionary, mode: str, schemas: list[str], scn: int
) -> tuple[list[str], list[DictObject], list[str]]:
    """Users, objects (as of `scn`, no recycle bin) and missing schemas of an export."""
    if mode == "FULL":
        users = [u for u in d.users if u not in ("SYS", "SYSTEM")]
    else:
        users = [s for s in schemas if s in d.users]
    missing = [s for s in schemas if s not in d.users] if mode == "SCHEMA" else []
    objects = [
        o.model_copy(update={"rows": None})
        for o in d.objects
        if o.owner in users and not o.dropped and o.created_scn <= scn
    ]
    return users, objects, missing


def _rows_at(obj: DictObject, scn: int) -> list[Row]:
    return [r for r in (obj.rows or []) if r.scn <= scn]


def _content_over_link(remote: SimulatedDictionary, job: Job) -> Content:
    d = remote.read()
    schemas = [s for s in job.params.get("SCHEMAS", "").split(",") if s]
    users, objects, _ = _selected(d, job.job_mode, schemas, job.scn)
    rows = {
        o.key: _rows_at(o, job.scn)
        for o in d.objects
        if o.type == "TABLE" and o.owner in users and not o.dropped
    }
    return Content(d.version, job.job_mode, schemas, users, objects, rows, network=True)


def _content_of_dumps(d: Dictionary, job: Job) -> Content:
    first = _dump_paths(d, job.params, 1)[0]
    master = _read_dump(first)
    files = [first.parent / name for name in master["files"]]
    payloads = [master] + [_read_dump(p) for p in files[1:]]
    if int(master["version"].split(".")[0]) > int(d.version.split(".")[0]):
        raise Refused(
            "ORA-39001: invalid argument value",
            "ORA-39000: bad dump file specification",
            f'ORA-39142: incompatible version number 5.1 in dump file "{first}"',
        )
    rows: dict[str, list[Row]] = {}
    for payload in payloads:
        for key, table_rows in payload["rows"].items():
            rows[key] = [Row.model_validate(r) for r in table_rows]
    objects = [DictObject.model_validate(o) for o in master["objects"]]
    wanted = [s for s in job.params.get("SCHEMAS", "").split(",") if s]
    users = list(master["users"])
    if wanted:
        users = [u for u in users if u in wanted]
        objects = [o for o in objects if o.owner in users]
    return Content(master["version"], master["mode"], wanted, users, objects, rows)


def _read_dump(path: Path) -> dict[str, Any]:
    try:
        data = path.read_bytes()
    except OSError:
        raise Refused(
            "ORA-39001: invalid argument value",
            "ORA-39000: bad dump file specification",
            f'ORA-31640: unable to open dump file "{path}" for read',
            "ORA-27037: unable to obtain file status",
            "Linux-x86_64 Error: 2: No such file or directory",
            "Additional information: 7",
        ) from None
    if not data.startswith(DUMP_MAGIC):
        raise Refused(
            "ORA-39001: invalid argument value",
            "ORA-39000: bad dump file specification",
            f'ORA-31619: invalid dump file "{path}"',
        )
    payload: dict[str, Any] = json.loads(data[len(DUMP_MAGIC) :])
    return payload


def read_dump(path: Path) -> dict[str, Any]:
    """(tests) The payload of one simulated dump file."""
    return _read_dump(path)


# -- steps ----------------------------------------------------------------------------------------


def _export_steps(d: Dictionary, job: Job) -> list[str]:
    schemas = [s for s in job.params.get("SCHEMAS", "").split(",") if s]
    _, objects, _ = _selected(d, job.job_mode, schemas, job.scn)
    return ["ESTIMATE", *(f"TABLE_DATA:{o.key}" for o in objects if o.type == "TABLE"), "END"]


def _import_steps(content: Content) -> list[str]:
    steps: list[str] = []
    if content.mode == "FULL" and not content.schemas:
        steps += [f"TABLESPACE:{t}" for t in TABLESPACES if t not in ("SYSTEM", "SYSAUX")]
    steps += [f"USER:{u}" for u in content.users]
    for kind in _IMPORT_ORDER[2:]:
        source = "TABLE" if kind == "TABLE_DATA" else kind
        steps += [f"{kind}:{o.key}" for o in content.objects if o.type == source]
    return [*steps, "END"]


def _quoted(key: str) -> str:
    owner, _, name = key.partition(".")
    return f'"{owner}"."{name}"' if name else f'"{owner}"'


def _execute(tool: str, job: Job, dictionary: SimulatedDictionary, out: Out) -> int:
    """Run the job's steps not done yet, then end it (module docstring)."""
    start = time.monotonic()
    if tool == "expdp":
        steps = _export_steps(dictionary.read(), job)
        content = None
    else:
        d = dictionary.read()
        if "NETWORK_LINK" in job.params:
            content = _content_over_link(_remote(d, job.params["NETWORK_LINK"]), job)
        else:
            content = _content_of_dumps(d, job)
        steps = _import_steps(content)
    mode_path = "DATABASE_EXPORT/SCHEMA/" if job.job_mode == "FULL" else "SCHEMA_EXPORT/"
    shown_type = ""
    skipped: set[str] = {s.split(":", 1)[1] for s in job.done if s.startswith("SKIPPED:")}
    for step in steps:
        if step in job.done:
            continue
        kind, _, key = step.partition(":")
        if kind in _TYPE_PATH and kind != shown_type:
            shown_type = kind
            path = (
                "DATABASE_EXPORT/TABLESPACE"
                if kind == "TABLESPACE"
                else mode_path + _TYPE_PATH[kind]
            )
            out(f"Processing object type {path}")
        injected = _take_fault(dictionary, tool, step, out)
        with dictionary.transaction() as d:
            live = d.job(job.owner, job.job_name)
            assert live is not None
            if injected is not None:
                out(*injected)
                errors = 1 if injected else 0
            elif tool == "expdp":
                errors = _export_step(d, live, step, out)
            else:
                assert content is not None
                errors = _import_step(d, live, content, step, skipped, out)
            live.errors += errors
            live.done.append(step)
            if step.startswith("TABLE:") and key in skipped:
                live.done.append(f"SKIPPED:{key}")
            job = live
    return _end(tool, job, dictionary, out, start)


def _export_step(d: Dictionary, job: Job, step: str, out: Out) -> int:
    kind, _, key = step.partition(":")
    schemas = [s for s in job.params.get("SCHEMAS", "").split(",") if s]
    users, objects, missing = _selected(d, job.job_mode, schemas, job.scn)
    tables = [o for o in d.objects if o.type == "TABLE" and o.owner in users and not o.dropped]
    if kind == "ESTIMATE":
        errors = 0
        for schema in missing:
            out(f"ORA-39165: Schema {schema} was not found.")
            errors += 1
        if not users:
            out("ORA-31655: no data or metadata objects selected for job")
            errors += 1
        out("Estimate in progress using BLOCKS method...")
        total = 0
        for t in tables:
            kb = 64 * max(1, -(-len(_rows_at(t, job.scn)) // 500))
            total += kb
            if job.params.get("ESTIMATE_ONLY") == "YES":
                out(f".  estimated {_quoted(t.key):<44} {kb} KB")
        out(f"Total estimation using BLOCKS method: {total} KB")
        return errors
    if kind == "TABLE_DATA":
        obj = next(t for t in tables if t.key == key)
        rows = _rows_at(obj, job.scn)
        job.unloaded[key] = rows
        if job.params.get("ESTIMATE_ONLY") != "YES":
            out(f". . exported {_quoted(key):<44} {_size(len(rows)):>12} {len(rows):>8} rows")
        return 0
    if job.params.get("ESTIMATE_ONLY") == "YES":
        return 0
    paths = _dump_paths(d, job.params, job.degree)
    names = [p.name for p in paths]
    shares: list[dict[str, list[dict[str, Any]]]] = [{} for _ in paths]
    for n, (table_key, rows) in enumerate(sorted(job.unloaded.items())):
        shares[n % len(paths)][table_key] = [r.model_dump() for r in rows]
    for n, path in enumerate(paths):
        payload: dict[str, Any] = {
            "job": job.job_name,
            "file": n + 1,
            "files": names,
            "rows": shares[n],
        }
        if n == 0:
            payload.update(
                version=d.version,
                mode=job.job_mode,
                scn=job.scn,
                users=users,
                objects=[o.model_dump() for o in objects],
            )
        path.write_bytes(DUMP_MAGIC + json.dumps(payload, sort_keys=True).encode())
    out(f'Master table "{job.owner}"."{job.job_name}" successfully loaded/unloaded')
    out("*" * 78, f"Dump file set for {job.owner}.{job.job_name} is:", *(f"  {p}" for p in paths))
    return 0


def _import_step(
    d: Dictionary, job: Job, content: Content, step: str, skipped: set[str], out: Out
) -> int:
    kind, _, key = step.partition(":")
    if kind == "END":
        if not content.network:
            out(f'Master table "{job.owner}"."{job.job_name}" successfully loaded/unloaded')
        return 0
    if kind == "TABLESPACE":
        out(f'ORA-31684: Object type TABLESPACE:"{key}" already exists')
        return 1
    if kind == "USER":
        if key in d.users:
            out(f'ORA-31684: Object type USER:"{key}" already exists')
            return 1
        d.users.append(key)
        return 0
    source_type = "TABLE" if kind == "TABLE_DATA" else kind
    owner, _, name = key.partition(".")
    src = next(o for o in content.objects if o.key == key and o.type == source_type)
    existing = d.object(owner, name, source_type)
    action = job.params.get("TABLE_EXISTS_ACTION", "SKIP")
    if kind == "TABLE":
        if existing is None:
            d.objects.append(src.model_copy(update={"rows": [], "status": "VALID"}))
            return 0
        if action == "REPLACE":
            d.objects.remove(existing)
            d.objects.append(src.model_copy(update={"rows": [], "status": "VALID"}))
            return 0
        if action == "SKIP":
            skipped.add(key)
            out(
                f"ORA-39151: Table {_quoted(key)} exists. All dependent metadata and data will be "
                "skipped due to table_exists_action of skip"
            )
        elif action == "APPEND":
            out(
                f"ORA-39152: Table {_quoted(key)} exists. Data will be appended to existing table "
                "but all dependent metadata will be skipped due to table_exists_action of append"
            )
        else:
            existing.rows = []
            out(
                f"ORA-39153: Table {_quoted(key)} exists and has been truncated. Data will be "
                "loaded but all dependent metadata will be skipped due to table_exists_action "
                "of truncate"
            )
        return 1
    if kind == "TABLE_DATA":
        if key in skipped:
            return 0
        if content.network and src.long_column:
            out(
                f"ORA-31679: Table data object {_quoted(key)} has long columns, and longs can not "
                "be loaded/unloaded using a network link"
            )
            return 1
        assert existing is not None
        assert existing.rows is not None
        rows = content.rows.get(key, [])
        existing.rows.extend(rows)
        out(f". . imported {_quoted(key):<44} {_size(len(rows)):>12} {len(rows):>8} rows")
        return 0
    if existing is not None:
        out(f"ORA-31684: Object type {kind}:{_quoted(key)} already exists")
        return 1
    invalid = src.warnings or src.status == "INVALID"
    d.objects.append(src.model_copy(update={"status": "INVALID" if invalid else "VALID"}))
    if invalid:
        out(f"ORA-39082: Object type {kind}:{_quoted(key)} created with compilation warnings")
        return 1
    return 0


def _elapsed(start: float) -> str:
    seconds = int(time.monotonic() - start)
    return f"elapsed 0 {seconds // 3600:02d}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


def _end(tool: str, job: Job, dictionary: SimulatedDictionary, out: Out, start: float) -> int:
    ended = f"at {_now()} {_elapsed(start)}"
    if job.errors:
        line = f'Job "{job.owner}"."{job.job_name}" completed with {job.errors} error(s) {ended}'
    else:
        line = f'Job "{job.owner}"."{job.job_name}" successfully completed {ended}'
    with dictionary.transaction() as d:
        live = d.job(job.owner, job.job_name)
        if live is not None:
            if job.params.get("KEEP_MASTER") == "YES":
                live.state = "NOT RUNNING"
                live.pid = None
            else:
                d.jobs.remove(live)
        d.finished[f"{job.owner}.{job.job_name}"] = line
    out(line)
    return 5 if job.errors else 0


# -- ATTACH ---------------------------------------------------------------------------------------


def _attach(tool: str, params: dict[str, str], dictionary: SimulatedDictionary, out: Out) -> int:
    client = "UDE" if tool == "expdp" else "UDI"
    owner, _, name = params["ATTACH"].rpartition(".")
    owner = owner or _owner(params)
    with dictionary.transaction() as d:
        job = d.job(owner, name)
        if job is None:
            raise Refused(
                f"{client}-31626: operation generated ORACLE error 31626",
                "ORA-31626: job does not exist",
            )
        state = view_state(job)
        if state == "NOT RUNNING":
            job.state, job.pid = "IDLING", os.getpid()
            state = "IDLING"
        attached = job.model_copy()
    out.log = _log_path(dictionary.read(), attached.params, tool)
    out(
        f"Job: {attached.job_name}",
        f"  Owner: {attached.owner}",
        f"  Operation: {attached.operation}",
        f"  Mode: {attached.job_mode}",
        f"  State: {state}",
        f"  Job Error Count: {attached.errors}",
    )
    prompt = "Export>" if tool == "expdp" else "Import>"
    for command in (c.strip().upper() for c in sys.stdin.read().splitlines()):
        if not command:
            continue
        out(f"{prompt} {command}")
        if command == "START_JOB":
            with dictionary.transaction() as d:
                live = d.job(owner, name)
                if live is None or live.state != "IDLING":
                    out("ORA-39004: invalid state")
                    return 1
                live.state, live.pid = "EXECUTING", os.getpid()
                attached = live.model_copy()
        elif command == "CONTINUE_CLIENT":
            if attached.state == "EXECUTING" and attached.pid == os.getpid():
                return _execute(tool, attached, dictionary, out)
            return _wait_for(dictionary, owner, name, out)
        elif command == "EXIT_CLIENT":
            _release(dictionary, owner, name)
            return 0
        else:
            _release(dictionary, owner, name)
            out(f"{client}-00053: unrecognized client command '{command}'")
            return 1
    _release(dictionary, owner, name)
    return 0


def _release(dictionary: SimulatedDictionary, owner: str, name: str) -> None:
    """A client leaving an idle job it attached: no process is left to run it."""
    with dictionary.transaction() as d:
        live = d.job(owner, name)
        if live is not None and live.state == "IDLING" and live.pid == os.getpid():
            live.state, live.pid = "NOT RUNNING", None


def _wait_for(dictionary: SimulatedDictionary, owner: str, name: str, out: Out) -> int:
    """CONTINUE_CLIENT on a job another process runs: until it ends, then its terminal line."""
    while True:
        d = dictionary.read()
        live = d.job(owner, name)
        if live is None or view_state(live) == "NOT RUNNING":
            break
        time.sleep(0.1)
    line = d.finished.get(f"{owner}.{name}")
    if live is not None or line is None:
        out(f'Job "{owner}"."{name}" stopped due to fatal error at {_now()} elapsed 0 00:00:00')
        return 1
    out(line)
    return 5 if " completed with " in line else 0
