"""The simulated database's dictionary for Data Pump: users, objects, rows, directory objects,
database links and Data Pump jobs. Not Oracle.

It lives beside the database of `db.py`, in `<sim dir>/datapump.json` under its own flock
(`datapump.lock`), so the RMAN model stays as it was; the SCN clock is the database's
(`SimulatedOracle.advance`), so a row's SCN orders it against FLASHBACK_SCN and V$DATABASE.

    users                  DBA_USERS (SYS, SYSTEM and OUTLN are Oracle's and never exported)
    locked                 DBA_USERS.ACCOUNT_STATUS LOCKED (ALTER USER ... ACCOUNT LOCK): a
                           locked owner's application writes nothing (`insert_rows`: ORA-28000)
    roles                  the session user's direct Data Pump grants (DBA_ROLE_PRIVS)
    objects                DBA_OBJECTS / DBA_TABLES: owner, name, type, status, whether a
                           recompile validates it (`compiles`), whether an import creates it with
                           compilation warnings (`warnings`: ORA-39082), system-generated names,
                           a LONG column (not carried over a link: ORA-31679), the recycle bin
                           (`dropped`, BIN$ names: never exported), and a table's rows, each with
                           the SCN of its commit
    directories            DBA_DIRECTORIES: name -> path (DATA_PUMP_DIR -> <sim dir>/dpdump)
    links                  DBA_DB_LINKS: name -> the directory of another simulated database
    jobs                   DBA_DATAPUMP_JOBS: a job's control table until it finishes; a job
                           whose process is gone reads NOT RUNNING, as after an instance crash
    finished               the terminal line of every finished job, for a client attached to
                           it from another process (what it would have printed)
    faults                 a fault for the next run of a tool at a named step (`inject_fault`)

Operations a test uses: `seed_schema`, `insert_rows`, `drop_table` (to the recycle bin),
`create_directory`, `create_link`, `inject_fault`, `set_job_state`, `jobs`, `table_rows`.
The engine's SQL is answered by `tests/oracle_sim/datapump_sql.py` from these rows.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from tests.oracle_sim.db import SimulatedOracle, SimulatedOracleError

ORACLE_USERS = ("SYS", "SYSTEM", "OUTLN")
"""Oracle-maintained accounts: a full export leaves SYS and SYSTEM out and carries OUTLN (an
import then finds it there: ORA-31684)."""
TABLESPACES = ("SYSTEM", "SYSAUX", "UNDOTBS1", "TEMP", "USERS")

JobState = Literal[
    "DEFINING", "EXECUTING", "COMPLETING", "STOP PENDING", "STOPPING", "IDLING", "NOT RUNNING"
]
LIVE_STATES = ("DEFINING", "EXECUTING", "COMPLETING", "STOP PENDING", "STOPPING", "IDLING")
"""States that need a process: with none left the view shows NOT RUNNING."""


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Row(_Model):
    id: int
    value: str
    scn: int


class DictObject(_Model):
    owner: str
    name: str
    type: str
    status: Literal["VALID", "INVALID"] = "VALID"
    compiles: bool = True
    """Whether UTL_RECOMP makes it VALID (False: it references something that does not exist)."""
    warnings: bool = False
    """Created with compilation warnings by an import (ORA-39082), INVALID until recompiled."""
    generated: bool = False
    long_column: bool = False
    dropped: bool = False
    rows: list[Row] | None = None
    created_scn: int = 0

    @property
    def key(self) -> str:
        return f"{self.owner}.{self.name}"


class Job(_Model):
    owner: str
    job_name: str
    operation: Literal["EXPORT", "IMPORT"]
    job_mode: Literal["SCHEMA", "FULL"]
    state: JobState
    degree: int
    pid: int | None
    params: dict[str, str]
    scn: int
    done: list[str] = Field(default_factory=list)
    errors: int = 0
    unloaded: dict[str, list[Row]] = Field(default_factory=dict)
    """An export's rows so far, per table key (the dump set is written when the job ends)."""
    started: str = ""


class Fault(_Model):
    tool: str
    at: str
    """A step: `LOGON`, `ESTIMATE`, `<TYPE>:<OWNER>.<NAME>` (TABLE_DATA:APP.ORDERS), `END`."""
    action: Literal["hang", "die", "error"]
    lines: list[str] = Field(default_factory=list)
    reached: bool = False


class Dictionary(_Model):
    format: Literal[1] = 1
    version: str = "19.0.0.0.0"
    users: list[str] = Field(default_factory=lambda: list(ORACLE_USERS))
    locked: list[str] = Field(default_factory=list)
    roles: list[str] = Field(
        default_factory=lambda: ["DATAPUMP_EXP_FULL_DATABASE", "DATAPUMP_IMP_FULL_DATABASE"]
    )
    objects: list[DictObject] = Field(default_factory=list)
    directories: dict[str, str] = Field(default_factory=dict)
    links: dict[str, str] = Field(default_factory=dict)
    jobs: list[Job] = Field(default_factory=list)
    finished: dict[str, str] = Field(default_factory=dict)
    faults: list[Fault] = Field(default_factory=list)
    next_row_id: int = 1

    def job(self, owner: str, name: str) -> Job | None:
        return next((j for j in self.jobs if (j.owner, j.job_name) == (owner, name)), None)

    def object(self, owner: str, name: str, type_: str) -> DictObject | None:
        return next(
            (
                o
                for o in self.objects
                if (o.owner, o.name, o.type) == (owner, name, type_) and not o.dropped
            ),
            None,
        )


def process_alive(pid: int | None) -> bool:
    if pid is None:
        return False
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[-1].split()[0] not in ("Z", "X")


def view_state(job: Job) -> JobState:
    """DBA_DATAPUMP_JOBS.STATE: a live state whose process died reads NOT RUNNING."""
    if job.state in LIVE_STATES and not process_alive(job.pid):
        return "NOT RUNNING"
    return job.state


class SimulatedDictionary:
    """The dictionary of the simulated database at `db.root` (module docstring)."""

    def __init__(self, db: SimulatedOracle) -> None:
        self.db = db
        self.path = db.root / "datapump.json"

    @classmethod
    def of(cls, root: Path) -> SimulatedDictionary:
        return cls(SimulatedOracle(root))

    @contextlib.contextmanager
    def transaction(self) -> Iterator[Dictionary]:
        with open(self.db.root / "datapump.lock", "a+b") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                if self.path.exists():
                    state = Dictionary.model_validate_json(self.path.read_bytes())
                else:
                    dpdump = self.db.root / "dpdump"
                    dpdump.mkdir(exist_ok=True)
                    state = Dictionary(directories={"DATA_PUMP_DIR": str(dpdump)})
                yield state
                tmp = self.path.with_suffix(".tmp")
                tmp.write_text(state.model_dump_json(indent=1))
                os.replace(tmp, self.path)
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    def read(self) -> Dictionary:
        with self.transaction() as state:
            return state

    # -- what a test sets up ---------------------------------------------------------------------

    def seed_schema(self, owner: str, *, rows: dict[str, int] | None = None) -> None:
        """A user with the objects a migration meets: tables with rows (default ORDERS 120 and
        CUSTOMERS 30), a primary key index each (system-generated SYS_C name), a sequence, a
        view, a valid procedure, one an import creates with compilation warnings (it validates
        on recompile), one invalid at the source that no recompile fixes, a synonym, and a
        dropped table in the recycle bin."""
        rows = rows if rows is not None else {"ORDERS": 120, "CUSTOMERS": 30}
        scn = self.db.advance(1)
        with self.transaction() as d:
            if owner not in d.users:
                d.users.append(owner)
            for n, (table, count) in enumerate(sorted(rows.items()), start=1):
                made = []
                for _ in range(count):
                    made.append(
                        Row(id=d.next_row_id, value=f"{table.lower()}-{d.next_row_id}", scn=scn)
                    )
                    d.next_row_id += 1
                d.objects.append(DictObject(owner=owner, name=table, type="TABLE", rows=made))
                d.objects.append(
                    DictObject(
                        owner=owner, name=f"SYS_C{10_000 + n:07d}", type="INDEX", generated=True
                    )
                )
            more = [
                DictObject(owner=owner, name="ORDER_SEQ", type="SEQUENCE"),
                DictObject(owner=owner, name="ORDER_TOTALS", type="VIEW"),
                DictObject(owner=owner, name="BOOK_ORDER", type="PROCEDURE"),
                DictObject(owner=owner, name="REPRICE", type="PROCEDURE", warnings=True),
                DictObject(
                    owner=owner,
                    name="LEGACY_REPORT",
                    type="PROCEDURE",
                    status="INVALID",
                    compiles=False,
                ),
                DictObject(owner=owner, name="ORDERS_SYN", type="SYNONYM"),
                DictObject(
                    owner=owner,
                    name="BIN$zQ1x2Y3z4A5B6C7D8E9F0g==$0",
                    type="TABLE",
                    dropped=True,
                    rows=[],
                ),
            ]
            d.objects.extend(more)

    def insert_rows(self, owner: str, table: str, count: int) -> int:
        """`count` committed rows into a table by its owner's application; returns the SCN of
        their commit. A locked owner (the migration's fence) cannot log on: ORA-28000."""
        if owner in self.read().locked:
            raise SimulatedOracleError("ORA-28000: The account is locked.")
        scn = self.db.advance(1)
        with self.transaction() as d:
            obj = d.object(owner, table, "TABLE")
            if obj is None or obj.rows is None:
                raise KeyError(f"{owner}.{table}")
            for _ in range(count):
                obj.rows.append(
                    Row(id=d.next_row_id, value=f"{table.lower()}-{d.next_row_id}", scn=scn)
                )
                d.next_row_id += 1
        return scn

    def add_object(self, obj: DictObject) -> None:
        with self.transaction() as d:
            if obj.owner not in d.users:
                d.users.append(obj.owner)
            d.objects.append(obj)

    def create_directory(self, name: str, path: Path) -> None:
        path.mkdir(parents=True, exist_ok=True)
        with self.transaction() as d:
            d.directories[name.upper()] = str(path)

    def create_link(self, name: str, remote_root: Path) -> None:
        """CREATE DATABASE LINK `name` to the simulated database at `remote_root`."""
        with self.transaction() as d:
            d.links[name.upper()] = str(remote_root)

    def inject_fault(
        self,
        tool: str,
        at: str,
        action: Literal["hang", "die", "error"],
        lines: list[str] | None = None,
    ) -> None:
        """The next run of `tool` that reaches step `at`: hangs there (a test or the runner's
        timeout kills it: the job is then NOT RUNNING), dies there as its instance would (the
        client prints ORA-03113, the job stays behind NOT RUNNING), or prints `lines` as the
        object's error and skips it (the job goes on: "completed with N error(s)")."""
        with self.transaction() as d:
            d.faults.append(Fault(tool=tool, at=at, action=action, lines=lines or []))

    def fault_reached(self, tool: str, at: str) -> bool:
        return any(f.tool == tool and f.at == at and f.reached for f in self.read().faults)

    def set_job_state(self, owner: str, name: str, state: JobState) -> None:
        with self.transaction() as d:
            job = d.job(owner, name)
            if job is None:
                raise KeyError(f"{owner}.{name}")
            job.state = state
            if state == "NOT RUNNING":
                job.pid = None

    def jobs(self) -> list[dict[str, object]]:
        """DBA_DATAPUMP_JOBS rows."""
        return [
            {
                "owner_name": j.owner,
                "job_name": j.job_name,
                "operation": j.operation,
                "job_mode": j.job_mode,
                "state": view_state(j),
                "degree": j.degree,
                "attached_sessions": 1 if process_alive(j.pid) else 0,
            }
            for j in self.read().jobs
        ]

    def table_rows(self, owner: str, table: str) -> list[Row]:
        obj = self.read().object(owner, table, "TABLE")
        if obj is None or obj.rows is None:
            raise KeyError(f"{owner}.{table}")
        return list(obj.rows)
