"""The simulated Data Guard configuration: several simulated databases with roles, redo
transport and Redo Apply timed against a clock, switchover with its failure matrix. Not Oracle.

A configuration lives in one directory: `dataguard.json` (the model below, under an flock like
`db.py`'s state) and one subdirectory per member, named by its DB_UNIQUE_NAME, that is also a
`SimulatedOracle` root (its `profile.json` answers the doctor's preflight views, and the fake
tools installed for it find the configuration as the root's parent).

The model:

- `members`: each with DBID, DATABASE_ROLE (PRIMARY, PHYSICAL STANDBY, or none for an
  auxiliary instance started NOMOUNT that DUPLICATE has not made a database yet), OPEN_MODE
  (READ WRITE, MOUNTED, STARTED = NOMOUNT, SHUTDOWN), whether MRP0 runs, how far it has
  received and applied the redo stream, and its rows (one table, as the ledger fills it).
- `ledger`: every committed transaction, on whichever member was primary, in SCN order. It is
  the redo stream and the test oracle at once: `lost(member, acknowledged)` names the commits a
  member does not hold.
- the clock: real time (`clock="real"`, for end-to-end runs) or a manual one that only
  `advance(seconds)` moves (unit tests). Every operation first brings the standbys up to now:
  while transport runs, a mounted standby receives what the primary committed at least
  `transport_delay_s` ago and its DATUM_TIME is now; MRP applies received transactions at
  `apply_tps`, so a write rate above it makes the lag grow and a pause lets it shrink.
- `V$DATAGUARD_STATS` (`stats`): rows only on a standby; `transport lag` / `apply lag` as
  '+DD HH:MI:SS' with UNIT 'day(2) to second(0) interval' (empty when never received / never
  applied), `apply finish time` and `estimated startup time`; times MM/DD/YYYY HH24:MI:SS.
  When transport stops (`stop_transport`) the values keep what they were last computed from
  data received and DATUM_TIME freezes, while TIME_COMPUTED moves on: the stale fixture.

Statements (`execute(member, sql)`), spelled as `services/engines/oracle/dataguard_sql.py`
spells them; any other is ORA-00900:

    ALTER DATABASE SWITCHOVER TO <x> VERIFY   on an open primary (else ORA-16465): ORA-16470
                                              when MRP does not run on x, ORA-16467 when x is
                                              more than SYNC_S behind, ORA-16475 when x has
                                              dirty online logs (`dirty_logs`), else nothing
    ALTER DATABASE SWITCHOVER TO <x>          the same checks (no 16475); the primary stops
                                              taking commits, ships and x applies the rest, the
                                              primary becomes a standby and shuts down, x a
                                              primary MOUNTED. `inject_switchover_fault(step,
                                              lines)` fails it at "convert_primary" (nothing
                                              changed: old PRIMARY / x STANDBY), at
                                              "convert_target" (both standby, ORA-16471, x's
                                              MRP stopped) or at "report" (done, but the
                                              statement answers `lines`: old STANDBY / x
                                              PRIMARY)
    ALTER DATABASE SWITCHOVER TO <self> FORCE on a standby (else ORA-16464) that holds the
                                              whole stream: it becomes the primary (MOUNTED);
                                              without MRP running, ORA-16473
    ALTER DATABASE OPEN                       a mounted primary opens READ WRITE
    ALTER DATABASE RECOVER MANAGED STANDBY DATABASE DISCONNECT FROM SESSION / CANCEL
                                              MRP0 on / off (ORA-01153 already running,
                                              ORA-16136 not running, ORA-01665 on a primary,
                                              ORA-01507 not mounted)

Tools (`tools.py` routes here when the root's parent holds a configuration): `rman` with
`STARTUP MOUNT;` (a down instance mounted; ORA-01081 when it runs) and the DUPLICATE ... FOR
STANDBY FROM ACTIVE DATABASE script (`target /@P auxiliary /@S`: P open, S NOMOUNT, else
RMAN-04005/04006 + ORA-01034 or RMAN-05500), anything else RMAN-00558; `dgmgrl` with
`VALIDATE DATABASE <x>;` (always exit 0, "Ready for Switchover: Yes/No" decides), anything else
a syntax error. Every run is recorded (`runs`).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import sys
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from tests.oracle_sim.db import SimulatedOracle

__all__ = ["DataGuardError", "SimulatedDataGuard", "find_configuration"]

DG_FILE = "dataguard.json"
T0 = datetime(2026, 3, 1, tzinfo=UTC)
SYNC_S = 2.0
"""VERIFY's "synchronized": the target's apply lag at most this (the simulator's choice)."""
LAG_UNIT = "day(2) to second(0) interval"
DG_TIME = "%m/%d/%Y %H:%M:%S"

Role = Literal["PRIMARY", "PHYSICAL STANDBY"]
OpenMode = Literal["READ WRITE", "MOUNTED", "STARTED", "SHUTDOWN"]


class _M(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Txn(_M):
    id: int
    value: str
    scn: int
    at: datetime
    on: str


class Member(_M):
    name: str
    dbid: int
    role: Role | None = None
    open_mode: OpenMode = "STARTED"
    mrp: bool = False
    mrp_ever: bool = False
    received: int = 0
    """How many ledger entries have arrived here."""
    applied: int = 0
    scn: int = 0
    datum: datetime | None = None
    computed: dict[str, str] = Field(default_factory=dict)
    """The lag values as last computed from data received (kept when transport stops)."""
    credit: float = 0.0
    dirty_logs: bool = False
    eor: bool = False
    """End of redo received from a primary that switched over: ready to become primary."""
    rows: dict[int, str] = Field(default_factory=dict)


class Fault(_M):
    step: Literal["convert_primary", "convert_target", "report"]
    lines: list[str]


class DgState(_M):
    clock: Literal["real", "manual"] = "manual"
    manual: datetime = T0
    last_tick: datetime | None = None
    transport_on: bool = True
    transport_delay_s: float = 0.5
    apply_tps: float = 200.0
    members: dict[str, Member] = Field(default_factory=dict)
    ledger: list[Txn] = Field(default_factory=list)
    next_scn: int = 1_000_000
    faults: list[Fault] = Field(default_factory=list)


class DataGuardError(RuntimeError):
    """A simulated ORA-/RMAN- error; the message starts with the code."""

    @property
    def code(self) -> str:
        return str(self).split(":", 1)[0]


class DataGuardDone(DataGuardError):
    """An error answered after the statement changed the configuration (kept, as Oracle keeps
    a half-finished switchover)."""


def _interval(seconds: float) -> str:
    s = max(0, int(seconds))
    days, rest = divmod(s, 86_400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    return f"+{days:02d} {hours:02d}:{minutes:02d}:{secs:02d}"


class SimulatedDataGuard:
    """A simulated Data Guard configuration in a directory (module docstring)."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.path = self.root / DG_FILE

    # -- lifecycle ------------------------------------------------------------------------------

    @classmethod
    def create(
        cls,
        root: Path,
        primary: str,
        *,
        dbid: int = 2_345_678_901,
        clock: Literal["real", "manual"] = "manual",
        transport_delay_s: float = 0.5,
        apply_tps: float = 200.0,
    ) -> SimulatedDataGuard:
        """A configuration whose only member is `primary`, open READ WRITE."""
        dg = cls(root)
        dg.root.mkdir(parents=True, exist_ok=True)
        SimulatedOracle.create(dg.root / primary, threads=1, dbid=dbid)
        state = DgState(clock=clock, transport_delay_s=transport_delay_s, apply_tps=apply_tps)
        state.members[primary] = Member(
            name=primary, dbid=dbid, role="PRIMARY", open_mode="READ WRITE", scn=state.next_scn
        )
        dg._write(state)
        return dg

    def add_auxiliary(self, name: str) -> Path:
        """An instance started NOMOUNT for DUPLICATE to make the standby `name`; its root."""
        SimulatedOracle.create(self.root / name, threads=1, dbid=1)
        with self.transaction() as st:
            st.members[name] = Member(name=name, dbid=0)
        return self.root / name

    def member_root(self, name: str) -> Path:
        return self.root / name

    @contextlib.contextmanager
    def transaction(self) -> Iterator[DgState]:
        """Lock, load, bring the standbys up to now, yield; written back unless it raised."""
        with open(self.root / "dataguard.lock", "a+b") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                st = DgState.model_validate_json(self.path.read_bytes())
                _tick(st, _now(st))
                try:
                    yield st
                except DataGuardDone:
                    self._write(st)  # a statement that failed after changing things
                    raise
                self._write(st)
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    def read(self) -> DgState:
        with self.transaction() as st:
            return st.model_copy(deep=True)

    def _write(self, st: DgState) -> None:
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(st.model_dump_json(indent=1))
        os.replace(tmp, self.path)

    # -- the test's controls ---------------------------------------------------------------------

    def advance(self, seconds: float) -> None:
        """Move the manual clock (a real clock moves by itself)."""
        with self.transaction() as st:
            if st.clock != "manual":
                raise ValueError("the configuration runs on the real clock")
            st.manual += timedelta(seconds=seconds)
            _tick(st, st.manual)

    def stop_transport(self) -> None:
        with self.transaction() as st:
            st.transport_on = False

    def start_transport(self) -> None:
        with self.transaction() as st:
            st.transport_on = True

    def set_apply_rate(self, tps: float) -> None:
        with self.transaction() as st:
            st.apply_tps = tps

    def set_dirty_logs(self, name: str, dirty: bool = True) -> None:
        with self.transaction() as st:
            st.members[name].dirty_logs = dirty

    def inject_switchover_fault(
        self, step: Literal["convert_primary", "convert_target", "report"], lines: list[str]
    ) -> None:
        """The next SWITCHOVER (not VERIFY, not FORCE) fails at `step` (module docstring)."""
        with self.transaction() as st:
            st.faults.append(Fault(step=step, lines=lines))

    # -- workload and the test oracle ------------------------------------------------------------

    def commit(self, value: str) -> Txn:
        """One committed transaction on the current primary (ORA-01109 / ORA-16000 when it
        takes none: not open, or open as a standby)."""
        with self.transaction() as st:
            primary = _primary(st)
            if primary is None or primary.open_mode != "READ WRITE":
                raise DataGuardError("ORA-01109: database not open")
            txn = Txn(
                id=len(st.ledger) + 1, value=value, scn=st.next_scn, at=_now(st), on=primary.name
            )
            st.next_scn += 1
            st.ledger.append(txn)
            primary.rows[txn.id] = value
            primary.received = primary.applied = len(st.ledger)
            primary.scn = st.next_scn
            return txn

    def lost(self, name: str, acknowledged: list[Txn]) -> list[Txn]:
        """The acknowledged commits `name` does not hold (zero lost transactions: empty)."""
        rows = self.read().members[name].rows
        return [t for t in acknowledged if rows.get(t.id) != t.value]

    def member(self, name: str) -> Member:
        return self.read().members[name]

    # -- views --------------------------------------------------------------------------------

    def database(self, name: str) -> dict[str, Any]:
        """V$DATABASE as the method reads it (ORA-01034 down, ORA-01507 NOMOUNT)."""
        with self.transaction() as st:
            m = _reachable(st, name)
            return {
                "db_unique_name": m.name,
                "name": "TMSIM",
                "dbid": m.dbid,
                "database_role": m.role,
                "open_mode": m.open_mode,
                "switchover_status": _switchover_status(st, m),
                "current_scn": m.scn,
                "log_mode": "ARCHIVELOG",
                "force_logging": "YES",
                "platform_name": "Linux x86 64-bit",
                "resetlogs_change#": 1,
            }

    def stats(self, name: str) -> list[dict[str, Any]]:
        """V$DATAGUARD_STATS (module docstring)."""
        with self.transaction() as st:
            m = _reachable(st, name)
            if m.role != "PHYSICAL STANDBY":
                return []
            now = _now(st).strftime(DG_TIME)
            datum = m.datum.strftime(DG_TIME) if m.datum else None
            return [
                {
                    "name": "transport lag",
                    "value": m.computed.get("transport lag"),
                    "unit": LAG_UNIT,
                    "time_computed": now,
                    "datum_time": datum,
                },
                {
                    "name": "apply lag",
                    "value": m.computed.get("apply lag") if m.mrp_ever else None,
                    "unit": LAG_UNIT,
                    "time_computed": now,
                    "datum_time": datum,
                },
                {
                    "name": "apply finish time",
                    "value": "+00 00:00:00.000" if m.mrp else None,
                    "unit": "day(2) to second(3) interval",
                    "time_computed": now,
                    "datum_time": None,
                },
                {
                    "name": "estimated startup time",
                    "value": "8",
                    "unit": "second",
                    "time_computed": now,
                    "datum_time": None,
                },
            ]

    def clock_text(self, name: str) -> str:
        with self.transaction() as st:
            _reachable(st, name)
            return _now(st).strftime(DG_TIME)

    def processes(self, name: str) -> list[dict[str, Any]]:
        with self.transaction() as st:
            m = _reachable(st, name)
            if not m.mrp:
                return []
            action = "APPLYING_LOG" if m.applied < m.received else "WAIT_FOR_LOG"
            return [{"name": "MRP0", "action": action}]

    # -- statements ----------------------------------------------------------------------------

    def execute(self, name: str, sql: str) -> None:
        """One statement on member `name` (module docstring)."""
        text = " ".join(sql.split()).rstrip(";")
        with self.transaction() as st:
            m = _reachable(st, name)
            found = re.fullmatch(
                r"ALTER DATABASE SWITCHOVER TO ([A-Z][A-Z0-9_]*)( VERIFY| FORCE)?", text
            )
            if found:
                target, how = found.group(1), (found.group(2) or "").strip()
                if how == "FORCE":
                    _force(st, m, target)
                    return
                _verify(st, m, target, warnings=how == "VERIFY")
                if how != "VERIFY":
                    self._switch(st, m, st.members[target])
                return
            if text == "ALTER DATABASE OPEN":
                if m.open_mode == "READ WRITE":
                    raise DataGuardError("ORA-01531: a database already open by the instance")
                if m.role != "PRIMARY":
                    raise DataGuardError(
                        "ORA-00900: invalid SQL statement (the simulator opens no standby: "
                        "Active Data Guard is not modelled)"
                    )
                m.open_mode = "READ WRITE"
                m.scn = st.next_scn = st.next_scn + 1
                return
            if text in (
                "ALTER DATABASE RECOVER MANAGED STANDBY DATABASE DISCONNECT FROM SESSION",
                "ALTER DATABASE RECOVER MANAGED STANDBY DATABASE DISCONNECT",
            ):
                if m.role != "PHYSICAL STANDBY":
                    raise DataGuardError("ORA-01665: control file is not a standby control file")
                if m.mrp:
                    raise DataGuardError("ORA-01153: an incompatible media recovery is active")
                m.mrp = m.mrp_ever = True
                m.credit = 0.0
                return
            if text == "ALTER DATABASE RECOVER MANAGED STANDBY DATABASE CANCEL":
                if not m.mrp:
                    raise DataGuardError("ORA-16136: Managed Standby Recovery not active")
                m.mrp = False
                return
            raise DataGuardError(
                f"ORA-00900: invalid SQL statement (the simulator runs no {text[:80]!r})"
            )

    def _switch(self, st: DgState, old: Member, new: Member) -> None:
        fault = st.faults.pop(0) if st.faults else None
        if fault is not None and fault.step == "convert_primary":
            raise DataGuardDone("\n".join(fault.lines))
        # The old primary takes no more commits; everything it has goes over and is applied.
        new.received = new.applied = len(st.ledger)
        new.rows = dict(old.rows)
        new.scn = old.scn
        new.eor = True
        old.role = "PHYSICAL STANDBY"
        old.open_mode = "SHUTDOWN"
        old.mrp = False
        old.received = old.applied = len(st.ledger)
        old.computed = {}
        old.datum = None
        if fault is not None and fault.step == "convert_target":
            new.mrp = False
            raise DataGuardDone(
                f"ORA-16471: cannot convert switchover target {new.name} to a primary database"
            )
        _become_primary(st, new)
        if fault is not None:
            raise DataGuardDone("\n".join(fault.lines))

    # -- tools ----------------------------------------------------------------------------------

    def startup_mount(self, name: str) -> None:
        with self.transaction() as st:
            m = st.members[name]
            if m.open_mode != "SHUTDOWN":
                raise DataGuardError(
                    "ORA-01081: cannot start already-running ORACLE - shut it down first"
                )
            m.open_mode = "MOUNTED" if m.role is not None else "STARTED"

    def duplicate(self, primary: str, auxiliary: str) -> None:
        with self.transaction() as st:
            p = st.members.get(primary)
            if p is None or p.role != "PRIMARY" or p.open_mode not in ("READ WRITE", "MOUNTED"):
                raise DataGuardError(
                    "RMAN-04005: error from target database:\nORA-01034: ORACLE not available"
                )
            a = st.members.get(auxiliary)
            if a is None or a.open_mode == "SHUTDOWN":
                raise DataGuardError(
                    "RMAN-04006: error from auxiliary database:\nORA-01034: ORACLE not available"
                )
            if a.open_mode != "STARTED":
                raise DataGuardError(
                    "RMAN-05500: the auxiliary database must be not mounted when issuing a "
                    "DUPLICATE command"
                )
            a.dbid = p.dbid
            a.role = "PHYSICAL STANDBY"
            a.open_mode = "MOUNTED"
            a.rows = dict(p.rows)
            a.received = a.applied = len(st.ledger)
            a.scn = p.scn
            a.mrp = a.mrp_ever = a.eor = False
            a.datum = None
            a.computed = {}

    def validate(self, primary: str, standby: str) -> list[str]:
        """dgmgrl VALIDATE DATABASE output (what the 19c broker prints, in part)."""
        with self.transaction() as st:
            s = st.members.get(standby)
            if s is None:
                return ["Error: ORA-16541: member is not enabled", ""]
            if s.role == "PRIMARY":
                return [
                    "",
                    "  Database Role:    Primary database",
                    "",
                    "  Ready for Switchover:  Yes",
                    "",
                ]
            lag = _apply_lag(st, s, _now(st))
            problems = []
            if not s.mrp:
                problems.append("    Apply State:         Not Running")
            if not st.transport_on:
                problems.append("    Transport On:        No")
            ready = not problems and lag <= SYNC_S
            return [
                "",
                "  Database Role:     Physical standby database",
                f"  Primary Database:  {primary}",
                "",
                f"  Ready for Switchover:  {'Yes' if ready else 'No'}",
                f"  Ready for Failover:    {'Yes' if ready else 'No'} (Primary Running)",
                "",
                "  Flashback Database Status:",
                f"    {primary}:  Off",
                f"    {standby}:  Off",
                *(["", "  Apply-Related Information:", *problems] if problems else []),
                "",
            ]

    def record_run(self, tool: str, script: str) -> None:
        line = json.dumps({"tool": tool, "script": script}) + "\n"
        with self.transaction(), (self.root / "runs.jsonl").open("a") as out:
            out.write(line)

    def runs(self, tool: str) -> list[str]:
        path = self.root / "runs.jsonl"
        if not path.exists():
            return []
        rows = [json.loads(line) for line in path.read_text().splitlines() if line]
        return [r["script"] for r in rows if r["tool"] == tool]


# -- the model's rules ---------------------------------------------------------------------------


def _now(st: DgState) -> datetime:
    return datetime.now(UTC) if st.clock == "real" else st.manual


def _primary(st: DgState) -> Member | None:
    return next((m for m in st.members.values() if m.role == "PRIMARY"), None)


def _reachable(st: DgState, name: str) -> Member:
    m = st.members.get(name)
    if m is None or m.open_mode == "SHUTDOWN":
        raise DataGuardError("ORA-01034: ORACLE not available")
    if m.open_mode == "STARTED":
        raise DataGuardError("ORA-01507: database not mounted")
    return m


def _flowing(st: DgState, m: Member) -> bool:
    primary = _primary(st)
    return (
        st.transport_on
        and m.role == "PHYSICAL STANDBY"
        and m.open_mode == "MOUNTED"
        and not m.eor
        and primary is not None
        and primary.open_mode == "READ WRITE"
    )


def _apply_lag(st: DgState, m: Member, now: datetime) -> float:
    if m.applied >= len(st.ledger):
        return 0.0
    return (now - st.ledger[m.applied].at).total_seconds()


def _tick(st: DgState, now: datetime) -> None:
    """Bring every standby up to `now` (module docstring: transport, then apply)."""
    last = st.last_tick or now
    elapsed = max(0.0, (now - last).total_seconds())
    st.last_tick = now
    horizon = now - timedelta(seconds=st.transport_delay_s)
    for m in st.members.values():
        if m.role != "PHYSICAL STANDBY" or m.open_mode != "MOUNTED":
            continue
        if _flowing(st, m):
            while m.received < len(st.ledger) and st.ledger[m.received].at <= horizon:
                m.received += 1
            m.datum = now
        if m.mrp and m.applied < m.received:
            m.credit += elapsed * st.apply_tps
            n = min(int(m.credit), m.received - m.applied)
            for txn in st.ledger[m.applied : m.applied + n]:
                m.rows[txn.id] = txn.value
                m.scn = txn.scn + 1
            m.applied += n
            m.credit = m.credit - n if m.applied < m.received else 0.0
        if _flowing(st, m):
            unreceived = (
                (now - st.ledger[m.received].at).total_seconds()
                if m.received < len(st.ledger)
                else 0.0
            )
            m.computed["transport lag"] = _interval(unreceived)
            m.computed["apply lag"] = _interval(_apply_lag(st, m, now))


def _switchover_status(st: DgState, m: Member) -> str:
    if m.role == "PRIMARY":
        ready = any(s.role == "PHYSICAL STANDBY" and s.mrp for s in st.members.values())
        return "TO STANDBY" if ready and m.open_mode == "READ WRITE" else "NOT ALLOWED"
    if m.eor or (m.applied >= len(st.ledger) and _primary(st) is None):
        return "TO PRIMARY"
    return "NOT ALLOWED" if m.applied >= m.received else "RECOVERY NEEDED"


def _verify(st: DgState, m: Member, target: str, *, warnings: bool) -> None:
    if m.role != "PRIMARY" or m.open_mode != "READ WRITE":
        raise DataGuardError(
            "ORA-16465: invalid FAILOVER or SWITCHOVER operation: not an open primary"
        )
    t = st.members.get(target)
    if t is None or t.role != "PHYSICAL STANDBY":
        raise DataGuardError(
            f"ORA-16465: invalid FAILOVER or SWITCHOVER operation: {target} is not a standby"
        )
    if not t.mrp or t.open_mode != "MOUNTED":
        raise DataGuardError("ORA-16470: Redo Apply is not running on switchover target")
    if not _flowing(st, t) or _apply_lag(st, t, _now(st)) > SYNC_S:
        raise DataGuardError("ORA-16467: switchover target is not synchronized")
    if warnings and t.dirty_logs:
        raise DataGuardError("ORA-16475: succeeded with warnings, check alert log for more details")


def _become_primary(st: DgState, m: Member) -> None:
    m.role = "PRIMARY"
    m.open_mode = "MOUNTED"
    m.mrp = False
    m.eor = False
    m.computed = {}
    m.datum = None
    m.scn = st.next_scn = max(st.next_scn, m.scn) + 1


def _force(st: DgState, m: Member, target: str) -> None:
    if m.role != "PHYSICAL STANDBY":
        raise DataGuardError(
            "ORA-16464: operation must be initiated on a physical standby database"
        )
    if target != m.name:
        raise DataGuardError(
            "ORA-00900: invalid SQL statement (the simulator models FORCE naming the database "
            "it is issued on)"
        )
    holds_all = m.applied >= len(st.ledger)
    if not m.mrp or not holds_all or _primary(st) is not None:
        raise DataGuardError("ORA-16473: database is not in limbo")
    _become_primary(st, m)


def find_configuration(sim_dir: Path) -> tuple[SimulatedDataGuard, str] | None:
    """The configuration a member root belongs to, and the member's name."""
    parent = Path(sim_dir).resolve().parent
    if (parent / DG_FILE).exists():
        return SimulatedDataGuard(parent), Path(sim_dir).resolve().name
    return None


# -- the fake tools ------------------------------------------------------------------------------

_DUPLICATE = re.compile(
    r"RUN \{\n"
    r"(?:  ALLOCATE CHANNEL prim\d+ DEVICE TYPE DISK;\n)+"
    r"(?:  ALLOCATE AUXILIARY CHANNEL stby\d+ DEVICE TYPE DISK;\n)+"
    r"  DUPLICATE TARGET DATABASE FOR STANDBY FROM ACTIVE DATABASE\n"
    r"    USING COMPRESSED BACKUPSET SECTION SIZE \d+M\n"
    r"    DORECOVER NOFILENAMECHECK;\n"
    r"\}\n"
)
_ALIAS = re.compile(r"^/@([A-Z][A-Z0-9_]*)$")


def rman_main(dg: SimulatedDataGuard, member: str, argv: list[str]) -> int:
    """The simulated rman's Data Guard commands (module docstring)."""
    print("Recovery Manager: Release 19.0.0.0.0 - SIMULATED (Tidemark test toolchain, not Oracle)")
    cmdfile = next((a.split("=", 1)[1] for a in argv if a.startswith("cmdfile=")), None)
    script = Path(cmdfile).read_text() if cmdfile else ""
    dg.record_run("rman", script)
    connects = dict(zip(argv[0:-1:2], argv[1::2], strict=False))
    try:
        if script == "STARTUP MOUNT;\n" and connects.get("target") == "/":
            dg.startup_mount(member)
            print("Oracle instance started\ndatabase mounted")
        elif _DUPLICATE.fullmatch(script):
            target = _ALIAS.match(connects.get("target", ""))
            auxiliary = _ALIAS.match(connects.get("auxiliary", ""))
            if target is None or auxiliary is None:
                raise DataGuardError(
                    "RMAN-06171: not connected to target database (DUPLICATE needs target and "
                    "auxiliary connections)"
                )
            print(f"connected to target database: TMSIM ({target.group(1)})")
            print(f"connected to auxiliary database: TMSIM ({auxiliary.group(1)}, not mounted)")
            dg.duplicate(target.group(1), auxiliary.group(1))
            print("executing Memory Script")
            print(
                f"channel stby1: using compressed network backup set from service {target.group(1)}"
            )
            print("Finished Duplicate Db")
        else:
            print("RMAN-00571: ===========================================================")
            print("RMAN-00569: =============== ERROR MESSAGE STACK FOLLOWS ===============")
            print("RMAN-00571: ===========================================================")
            print("RMAN-00558: error encountered while parsing input commands")
            print("RMAN-01009: syntax error: the simulated Data Guard rman knows no such script")
            print("Recovery Manager complete.")
            return 1
    except DataGuardError as exc:
        print("RMAN-00571: ===========================================================")
        print("RMAN-00569: =============== ERROR MESSAGE STACK FOLLOWS ===============")
        print("RMAN-00571: ===========================================================")
        print(
            "RMAN-03002: failure of Duplicate Db command"
            if "DUPLICATE" in script
            else "RMAN-03002: failure of startup command"
        )
        for line in str(exc).splitlines():
            print(line)
        print("Recovery Manager complete.")
        return 1
    print("Recovery Manager complete.")
    return 0


def dgmgrl_main(dg: SimulatedDataGuard, member: str, argv: list[str]) -> int:
    """The simulated dgmgrl: `-silent <connect> @<script>`; exit 0 whatever it says."""
    if len(argv) != 3 or argv[0] != "-silent" or not argv[2].startswith("@"):
        print("simulated dgmgrl: expected -silent <connect> @<script>", file=sys.stderr)
        return 2
    script = Path(argv[2][1:]).read_text()
    dg.record_run("dgmgrl", script)
    for line in script.splitlines():
        found = re.fullmatch(r"VALIDATE DATABASE ([A-Z][A-Z0-9_]*);", line.strip())
        if found is None:
            print(f'Syntax error before or at "{line.strip()}"')
            continue
        for out in dg.validate(member, found.group(1)):
            print(out)
    return 0
