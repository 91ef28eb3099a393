"""The `dataguard` method's steps: the target made a physical standby of the source, the
cutover a switchover gated by the standby's own lag, the way back a switchover back.

    preflight    source: the Data Guard facts `doctor oracle` checks (ARCHIVELOG, FORCE
                 LOGGING, password file, standby redo logs N+1 per thread of the online size,
                 STANDBY_FILE_MANAGEMENT=AUTO, platform, TDE keystore) and an open PRIMARY;
                 target: an instance started NOMOUNT (or, on a rerun, the standby this
                 migration made), the source's release, STANDBY_FILE_MANAGEMENT=AUTO, a
                 password file with SYS, an OPEN keystore when the source encrypts, the
                 source's platform when the instance can say it. Nothing changes
    copy         RMAN DUPLICATE ... FOR STANDBY FROM ACTIVE DATABASE onto the auxiliary
                 (skipped when the target already is this source's standby), then Redo Apply
                 started and seen running (MRP0 in V$DATAGUARD_PROCESS)
    lag          V$DATAGUARD_STATS on the standby against the standby's clock (`judge_lag`):
                 the worse of transport and apply lag, or no number at all (the gate stays
                 closed) when a value is empty, a row missing, Redo Apply stopped, or the
                 DATUM_TIME older than `lag_stale_s`
    fence        on the primary: (DGMGRL VALIDATE DATABASE when `broker=yes`) SWITCHOVER TO
                 <standby> VERIFY (ORA-16467 waited out for `verify_wait_s`; ORA-16470 once
                 answered by starting Redo Apply; ORA-16475 noted), then SWITCHOVER TO
                 <standby>. Whatever the statement answered, both sides are then mounted and
                 their roles read (the documented matrix): PRIMARY/STANDBY = the old primary
                 did not convert, it is opened again and the step fails (the source serves);
                 STANDBY/STANDBY = SWITCHOVER ... FORCE on the target (Redo Apply started
                 first on ORA-16473); STANDBY/PRIMARY = done. The fence's position is the old
                 primary's SCN once mounted as a standby: nothing committed there is past it
    final_sync   the target is PRIMARY (mounted); its SCN
    promote      the point of no return: ALTER DATABASE OPEN on the new primary, then Redo
                 Apply on the old primary (the rollback standby), and both roles read back
    unfence      before the point of no return: the source PRIMARY and open again (opened,
                 or switched back when the switchover had happened)
    rewind       rollback after it: the same switchover the other way (the old primary
                 becomes primary and opens, the target mounts and follows it)

**Sides.** Both databases are `[[databases]]` of the node that runs a step (DUPLICATE and
the switchover speak to both; their SQL goes over each database's DSN, RMAN over wallet
aliases named by the DB_UNIQUE_NAMEs, never a password). An instance that is down is started
by `rman target /` with STARTUP MOUNT, from its own home: on this node.

Every step reads the roles first, so a rerun after an executor died mid-step goes on from
where the databases are, not from where the step thought it was.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from schemas import Scn, utcnow
from schemas.messages import (
    MigrationMethod,
    MigrationStep,
    MigrationStepResult,
    RunMigrationCopy,
    RunMigrationFence,
    RunMigrationFinalSync,
    RunMigrationLag,
    RunMigrationPreflight,
    RunMigrationPromote,
    RunMigrationRewind,
    RunMigrationUnfence,
)
from services.engines.base import EngineError
from services.engines.oracle import dataguard_sql as q
from services.engines.oracle import doctor_sql as dq
from services.engines.oracle import preflight
from services.engines.oracle.errors import benign_in
from services.engines.oracle.runner import Connect, OracleHome, Tool, run_tool
from services.engines.oracle.session import OracleSessionError
from services.engines.settings import EngineSettings, HostedDatabase

__all__ = ["CODE_DATAGUARD", "Plan", "plan_of", "run_step"]

CODE_DATAGUARD = "TM-ORA-070"
"""A Data Guard step that cannot go on: a side not declared here, a role that makes no sense,
a switchover that left the old primary primary."""
CODE_ROLES = "TM-ORA-071"
"""The roles read back after a role change are not the ones the step needed."""

RMAN_TIMEOUT_S = 6 * 3600.0


SqlOf = Callable[[HostedDatabase], Any]
"""The migration SQL of one database (`OracleDbSession`, or the simulator's): `rows` / `call`."""


@dataclass(frozen=True)
class Plan:
    primary: str
    standby: str
    channels: int = 2
    lag_stale_s: float = 10.0
    verify_wait_s: float = 30.0
    broker: bool = False


def _unique(uid: str) -> str:
    return re.sub(r"[^A-Z0-9_]", "_", uid.upper())[:30]


def plan_of(command: MigrationStep) -> Plan:
    """The method's options (validated at intake; again here, since DDL is built from them)."""
    o = command.options
    try:
        plan = Plan(
            primary=o.get("primary_unique_name", _unique(command.source)).upper(),
            standby=o.get("standby_unique_name", _unique(command.target)).upper(),
            channels=int(o.get("channels", "2")),
            lag_stale_s=float(o.get("lag_stale_s", "10")),
            verify_wait_s=float(o.get("verify_wait_s", "30")),
            broker=o.get("broker", "no") == "yes",
        )
        for name in (plan.primary, plan.standby):
            q.switchover_sql(name)
    except ValueError as exc:
        raise EngineError.of(f"dataguard options: {exc}", code=CODE_DATAGUARD) from None
    return plan


@dataclass
class Side:
    db: HostedDatabase
    sql: Any
    unique: str

    @property
    def name(self) -> str:
        return self.db.uid

    @property
    def home(self) -> OracleHome:
        assert self.db.oracle is not None
        i = self.db.oracle
        return OracleHome(
            oracle_home=i.oracle_home,
            sid=i.oracle_sid,
            time_zone=i.time_zone,
            work_dir=i.staging_dir,
        )

    async def rows(self, what: str, sql: str) -> list[dict[str, Any]]:
        try:
            found: list[dict[str, Any]] = await self.sql.rows(what, sql)
            return found
        except OracleSessionError as exc:
            raise _engine_error(self, what, exc) from None

    async def run(self, what: str, sql: str) -> None:
        try:
            await self.sql.call(what, sql)
        except OracleSessionError as exc:
            raise _engine_error(self, what, exc) from None

    async def role(self) -> Role:
        """V$DATABASE now; a down instance is `SHUTDOWN`, one started NOMOUNT `STARTED`."""
        try:
            rows = await self.sql.rows("reading V$DATABASE", q.ROLE_SQL)
        except OracleSessionError as exc:
            if exc.code == "ORA-01034":
                return Role(None, "SHUTDOWN", "", 0, 0)
            if exc.code == "ORA-01507":
                return Role(None, "STARTED", "", 0, 0)
            raise _engine_error(self, "reading V$DATABASE", exc) from None
        r = rows[0]
        return Role(
            role=str(r["database_role"]) if r["database_role"] else None,
            open_mode=str(r["open_mode"]),
            switchover_status=str(r["switchover_status"] or ""),
            scn=int(r["current_scn"] or 0),
            dbid=int(r["dbid"] or 0),
        )


@dataclass(frozen=True)
class Role:
    role: str | None
    open_mode: str
    switchover_status: str
    scn: int
    dbid: int

    @property
    def primary(self) -> bool:
        return self.role == "PRIMARY"

    @property
    def standby(self) -> bool:
        return self.role == "PHYSICAL STANDBY"

    def __str__(self) -> str:
        return f"{self.role or 'no role'} ({self.open_mode})"


def _engine_error(side: Side, what: str, exc: OracleSessionError) -> EngineError:
    return EngineError.of(
        f"{side.name}: {what}: {exc.reason}", code=exc.code, retryable=exc.retryable
    )


class Sides:
    def __init__(
        self, settings: EngineSettings, db: HostedDatabase, command: MigrationStep, sql_of: SqlOf
    ) -> None:
        self.command = command
        self.plan = plan_of(command)

        def declared(uid: str, unique: str) -> Side | None:
            found = db if db.uid == uid else settings.database(uid)
            if found is None or found.oracle is None:
                return None
            return Side(found, sql_of(found), unique)

        self.source = declared(command.source, self.plan.primary)
        self.target = declared(command.target, self.plan.standby)

    def both(self) -> tuple[Side, Side]:
        missing = [
            uid
            for uid, side in (
                (self.command.source, self.source),
                (self.command.target, self.target),
            )
            if side is None
        ]
        if missing:
            raise EngineError.of(
                f"{', '.join(missing)} not an Oracle database of this node: Data Guard's steps "
                "speak to both the primary and the standby (declare both in [[databases]])",
                code=CODE_DATAGUARD,
            )
        assert self.source is not None
        assert self.target is not None
        return self.source, self.target


# -- preflight --------------------------------------------------------------------------------


async def _preflight(sides: Sides, command: RunMigrationPreflight) -> MigrationStepResult:
    if command.side == "source":
        return await _source_preflight(sides)
    return await _target_preflight(sides)


async def _source_preflight(sides: Sides) -> MigrationStepResult:
    source = sides.source
    if source is None:
        return MigrationStepResult(
            step="preflight",
            problems=[f"the source {sides.command.source} is not an Oracle database of this node"],
        )
    assert source.db.oracle is not None
    found = await preflight.examine_side(
        MigrationMethod.DATAGUARD,
        "source",
        sides.command.options,
        source.name,
        source.db.oracle,
        source.sql,
        staging_path=str(source.db.oracle.staging_dir),
    )
    problems, facts = list(found.problems), dict(found.facts)
    try:
        now = await source.role()
        if not now.primary or now.open_mode != "READ WRITE":
            problems.append(f"{source.name}: is {now}, not an open PRIMARY")
        facts |= {"system_identifier": str(now.dbid), "scn": str(now.scn)}
    except EngineError as exc:
        problems.append(f"{exc.failure.reason} ({exc.failure.code})")
    facts["db_unique_name"] = sides.plan.primary
    return MigrationStepResult(step="preflight", facts=facts, problems=problems[:32])


async def _first(side: Side, what: str, sql: str) -> dict[str, Any] | None:
    try:
        rows = await side.rows(what, sql)
    except EngineError:
        return None
    return rows[0] if rows else None


async def _target_preflight(sides: Sides) -> MigrationStepResult:
    try:
        source, target = sides.both()
    except EngineError as exc:
        return MigrationStepResult(step="preflight", problems=[exc.failure.reason[:500]])
    problems: list[str] = []
    facts = {"db_unique_name": sides.plan.standby}
    try:
        now, primary = await target.role(), await source.role()
        facts["state"] = str(now)
        if now.open_mode != "STARTED" and not (now.standby and now.dbid == primary.dbid):
            problems.append(
                f"{target.name} is {now}: the standby is built on an instance started NOMOUNT "
                "(a database that exists is never written over)"
            )
        theirs = await _first(target, "reading V$INSTANCE", dq.INSTANCE_SQL)
        ours = await _first(source, "reading V$INSTANCE", dq.INSTANCE_SQL)
        if theirs is None or ours is None or theirs["version"] != ours["version"]:
            seen = (theirs or {}).get("version"), (ours or {}).get("version")
            problems.append(
                f"release: the target runs {seen[0]}, the source {seen[1]}: a physical standby "
                "applies redo with the same release"
            )
        facts["version"] = str((theirs or {}).get("version"))
        params = {
            str(r["name"]): str(r["value"] or "")
            for r in await target.rows("reading V$PARAMETER", dq.PARAMETERS_SQL)
        }
        if params.get("standby_file_management", "").upper() != "AUTO":
            problems.append(
                f"{target.name}: STANDBY_FILE_MANAGEMENT="
                f"{params.get('standby_file_management') or '(unset)'}: a datafile added on the "
                "primary would stop Redo Apply (set AUTO)"
            )
        if params.get("remote_login_passwordfile", "").upper() not in ("EXCLUSIVE", "SHARED"):
            problems.append(
                f"{target.name}: REMOTE_LOGIN_PASSWORDFILE is not EXCLUSIVE or SHARED: redo "
                "transport logs on with the password file (ORA-16191)"
            )
        users = {
            str(r["username"]).upper(): str(r["sysdba"]).upper()
            for r in await target.rows("reading V$PWFILE_USERS", dq.PASSWORD_FILE_USERS_SQL)
        }
        if users.get("SYS") != "TRUE":
            problems.append(
                f"{target.name}: no password file with SYS as SYSDBA (copy the primary's)"
            )
        encrypted = await _first(source, "reading DBA_TABLESPACES", dq.ENCRYPTED_TABLESPACES_SQL)
        if encrypted is not None and int(encrypted["n"] or 0):
            wallets = await target.rows("reading V$ENCRYPTION_WALLET", dq.ENCRYPTION_WALLET_SQL)
            if not any(str(w["status"]) == "OPEN" for w in wallets):
                problems.append(
                    f"{target.name}: the source has encrypted tablespaces and the target's "
                    "keystore is not OPEN (copy the keystore before the duplicate)"
                )
        theirs_p = await _first(target, "reading V$DATABASE", dq.PLATFORM_SQL)
        ours_p = await _first(source, "reading V$DATABASE", dq.PLATFORM_SQL)
        if theirs_p is not None and ours_p is not None:
            if theirs_p["platform_name"] != ours_p["platform_name"]:
                problems.append(
                    f"platform: {ours_p['platform_name']} to {theirs_p['platform_name']}: a "
                    "physical standby needs the same platform (or a pair MOS 413484.1 lists)"
                )
        else:
            facts["platform"] = "read after the duplicate (an instance NOMOUNT cannot say)"
    except EngineError as exc:
        problems.append(f"{exc.failure.reason} ({exc.failure.code})")
    return MigrationStepResult(step="preflight", facts=facts, problems=problems[:32])


# -- copy: the standby ---------------------------------------------------------------------------


async def _rman(side: Side, script: str, what: str, connect: Connect | None = None) -> None:
    if side.home.work_dir is not None:
        side.home.work_dir.mkdir(parents=True, exist_ok=True)
    result = await run_tool(side.home, Tool.RMAN, script, connect=connect, timeout=RMAN_TIMEOUT_S)
    result.raise_for_failure(f"{side.name}: {what}")


async def _mounted(side: Side) -> Role:
    """The side's roles, its instance started and mounted first if it was down."""
    now = await side.role()
    if now.open_mode == "SHUTDOWN":
        await _rman(side, q.startup_mount_script(), "STARTUP MOUNT")
        now = await side.role()
    return now


async def _apply_running(side: Side) -> bool:
    return bool(await side.rows("reading V$DATAGUARD_PROCESS", q.MRP_SQL))


async def _start_apply(side: Side) -> None:
    if await _apply_running(side):
        return
    try:
        await side.sql.call("starting Redo Apply", q.START_APPLY_SQL)
    except OracleSessionError as exc:
        if benign_in("dataguard.start_apply", exc.code or "", exc.reason) is None:
            raise _engine_error(side, "starting Redo Apply", exc) from None
    if not await _apply_running(side):
        raise EngineError.of(
            f"{side.name}: Redo Apply was started but MRP0 is not running", code="ORA-16766"
        )


async def _copy(sides: Sides) -> MigrationStepResult:
    source, target = sides.both()
    primary = await source.role()
    now = await _mounted(target)
    duplicated = False
    if not (now.standby and now.dbid == primary.dbid):
        if now.open_mode != "STARTED":
            raise EngineError.of(
                f"{target.name} is {now}: DUPLICATE needs an instance started NOMOUNT",
                code=CODE_DATAGUARD,
            )
        await _rman(
            target,
            q.duplicate_script(channels=sides.plan.channels),
            "DUPLICATE FOR STANDBY FROM ACTIVE DATABASE",
            Connect(alias=sides.plan.primary, auxiliary=sides.plan.standby),
        )
        duplicated = True
    await _start_apply(target)
    built = await target.role()
    if not built.standby or built.dbid != primary.dbid:
        raise EngineError.of(
            f"{target.name} is {built} with DBID {built.dbid} after the duplicate, not a "
            f"standby of DBID {primary.dbid}",
            code=CODE_ROLES,
        )
    return MigrationStepResult(
        step="copy",
        target_position=Scn(value=built.scn),
        facts={"duplicated": str(duplicated).lower(), "apply": "running"},
    )


# -- lag -------------------------------------------------------------------------------------------


async def _lag(sides: Sides) -> MigrationStepResult:
    target = sides.target
    if target is None:
        sides.both()
        raise AssertionError("unreachable")
    rows = await target.rows("reading V$DATAGUARD_STATS", q.STATS_SQL)
    clock = await target.rows("reading the standby's clock", q.CLOCK_SQL)
    try:
        lag = q.judge_lag(
            rows, str(clock[0]["now"]) if clock else None, stale_after_s=sides.plan.lag_stale_s
        )
    except ValueError as exc:
        raise EngineError.of(f"{target.name}: {exc}", code=CODE_DATAGUARD) from None
    unknown = lag.unknown
    if not unknown and not await _apply_running(target):
        unknown = "Redo Apply is not running (MRP0 absent): the lag only grows"
    now = await target.role()
    facts = {
        "transport_lag_s": "" if lag.transport_s is None else f"{lag.transport_s:g}",
        "apply_lag_s": "" if lag.apply_s is None else f"{lag.apply_s:g}",
        "datum_age_s": "" if lag.datum_age_s is None else f"{lag.datum_age_s:.1f}",
    }
    if unknown:
        facts["unknown"] = unknown[:500]
    return MigrationStepResult(
        step="lag",
        lag_seconds=None if unknown else lag.seconds,
        target_position=Scn(value=now.scn),
        facts=facts,
    )


# -- the switchover ------------------------------------------------------------------------------


async def _verify(primary: Side, standby: Side, wait_s: float) -> str:
    """SWITCHOVER ... VERIFY on `primary` until it answers ready; what it warned, if anything."""
    statement = q.switchover_sql(standby.unique, verify=True)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + wait_s
    started_apply = False
    while True:
        try:
            await primary.sql.call("SWITCHOVER VERIFY", statement)
            return ""
        except OracleSessionError as exc:
            if exc.code == "ORA-16475":
                return exc.reason[:500]
            if exc.code == "ORA-16470" and not started_apply:
                await _start_apply(standby)  # the documented answer: start apply, VERIFY again
                started_apply = True
                continue
            if exc.code == "ORA-16467" and loop.time() < deadline:
                await asyncio.sleep(1.0)
                continue
            raise _engine_error(primary, "SWITCHOVER VERIFY", exc) from None


async def _validate(primary: Side, standby: Side) -> None:
    """DGMGRL VALIDATE DATABASE: read, not its exit status (dgmgrl exits 0 on "No")."""
    result = await run_tool(
        primary.home, Tool.DGMGRL, q.validate_script(standby.unique), timeout=300.0
    )
    try:
        found = q.parse_validate(result.tail)
    except ValueError as exc:
        raise EngineError.of(f"{primary.name}: {exc}", code=CODE_DATAGUARD) from None
    if not found.ready:
        why = "; ".join(found.findings) or "Ready for Switchover: No"
        raise EngineError.of(
            f"{primary.name}: VALIDATE DATABASE {standby.unique}: {why}"[:2000],
            code="ORA-16467" if not found.findings else CODE_DATAGUARD,
            retryable=not found.findings,
        )


async def _switch(old: Side, new: Side, plan: Plan) -> dict[str, str]:
    """Old primary → standby, `new` → primary (mounted), by the documented matrix."""
    facts: dict[str, str] = {}
    before_old, before_new = await old.role(), await new.role()
    if before_old.standby and before_new.primary:
        return {"switchover": "already done"}
    if not (before_old.primary and before_new.standby):
        # A rerun after the statement: settle by the matrix below.
        facts["found"] = f"{old.name} {before_old}, {new.name} {before_new}"
    else:
        if plan.broker:
            await _validate(old, new)
        warned = await _verify(old, new, plan.verify_wait_s)
        if warned:
            facts["verify_warning"] = warned
        try:
            await old.sql.call("SWITCHOVER", q.switchover_sql(new.unique))
        except OracleSessionError as exc:
            facts["switchover_error"] = f"{exc.code}: {exc.reason}"[:500]
    # Whatever it answered: mount both and read the roles (the documented matrix).
    now_old, now_new = await _mounted(old), await _mounted(new)
    if now_old.primary and now_new.standby:
        if now_old.open_mode != "READ WRITE":
            await old.run("opening the old primary again", q.OPEN_SQL)
        raise EngineError.of(
            f"the switchover failed before {old.name} converted "
            f"({facts.get('switchover_error', 'no error')}): it is primary and open again; "
            "fix the cause and cut over again",
            code=CODE_ROLES,
        )
    if now_old.standby and now_new.standby:
        force = q.switchover_sql(new.unique, force=True)
        try:
            await new.sql.call("SWITCHOVER FORCE", force)
        except OracleSessionError as exc:
            if exc.code != "ORA-16473":
                raise _engine_error(new, "SWITCHOVER FORCE", exc) from None
            await _start_apply(new)  # "not in limbo": apply first, then FORCE again
            await new.run("SWITCHOVER FORCE", force)
        facts["recovered"] = "FORCE on the target"
        now_new = await new.role()
    if not (now_new.primary and (await old.role()).standby):
        raise EngineError.of(
            f"after the switchover {old.name} is {await old.role()} and {new.name} is {now_new}",
            code=CODE_ROLES,
        )
    return facts


async def _fence(sides: Sides) -> MigrationStepResult:
    source, target = sides.both()
    at = utcnow()
    facts = await _switch(source, target, sides.plan)
    old = await source.role()
    return MigrationStepResult(step="fence", source_position=Scn(value=old.scn), at=at, facts=facts)


async def _open_and_follow(new: Side, old: Side) -> tuple[Role, Role, bool]:
    """The new primary opened, the old one mounted with Redo Apply (the way back)."""
    now = await new.role()
    if not now.primary:
        raise EngineError.of(f"{new.name} is {now}, not the primary", code=CODE_ROLES)
    if now.open_mode != "READ WRITE":
        await new.run("opening the new primary", q.OPEN_SQL)
    await _mounted(old)
    following = True
    try:
        await _start_apply(old)
    except EngineError:
        following = False  # verifying says so: the way back needs it
    return await new.role(), await old.role(), following


async def _promote(sides: Sides, command: RunMigrationPromote) -> MigrationStepResult:
    from services.engines.oracle.migration_steps import _endpoint

    source, target = sides.both()
    new, old, following = await _open_and_follow(target, source)
    return MigrationStepResult(
        step="promote",
        source_position=command.source_final,
        target_position=Scn(value=new.scn),
        at=utcnow(),
        endpoint=_endpoint(target.db, command.target_instance.node),
        facts={
            "system_identifier": str(new.dbid),
            "target_role": new.role or "",
            "target_open_mode": new.open_mode,
            "source_role": old.role or "",
            "source_open_mode": old.open_mode,
            "source_apply": "running" if following else "not running",
        },
    )


async def _switch_back(sides: Sides) -> tuple[Role, bool]:
    source, target = sides.both()
    now = await source.role()
    if not (now.primary and now.open_mode == "READ WRITE"):
        if now.standby or now.open_mode == "SHUTDOWN":
            await _mounted(source)
            await _start_apply(source)
            current = await target.role()
            if current.primary and current.open_mode != "READ WRITE":
                await target.run("opening the target to switch back", q.OPEN_SQL)
            back = Plan(
                primary=sides.plan.standby,
                standby=sides.plan.primary,
                broker=False,
                verify_wait_s=sides.plan.verify_wait_s,
            )
            await _switch(target, source, back)
        now = await source.role()
        if now.open_mode != "READ WRITE":
            await source.run("opening the old primary", q.OPEN_SQL)
    new, _old, following = await _open_and_follow(source, target)
    return new, following


async def _final_sync(sides: Sides, command: RunMigrationFinalSync) -> MigrationStepResult:
    target = sides.target
    if target is None:
        sides.both()
        raise AssertionError("unreachable")
    now = await target.role()
    if not now.primary:
        raise EngineError.of(
            f"{target.name} is {now} after the switchover, not the primary", code=CODE_ROLES
        )
    return MigrationStepResult(
        step="final_sync",
        source_position=command.source_final,
        target_position=Scn(value=now.scn),
        facts={"target_role": now.role or "", "target_open_mode": now.open_mode},
    )


async def run_step(
    settings: EngineSettings, db: HostedDatabase, command: MigrationStep, *, sql_of: SqlOf
) -> MigrationStepResult:
    sides = Sides(settings, db, command, sql_of)
    if isinstance(command, RunMigrationPreflight):
        return await _preflight(sides, command)
    if isinstance(command, RunMigrationCopy):
        return await _copy(sides)
    if isinstance(command, RunMigrationLag):
        return await _lag(sides)
    if isinstance(command, RunMigrationFence):
        return await _fence(sides)
    if isinstance(command, RunMigrationFinalSync):
        return await _final_sync(sides, command)
    if isinstance(command, RunMigrationPromote):
        return await _promote(sides, command)
    if isinstance(command, RunMigrationUnfence):
        source, _ = sides.both()
        now = await source.role()
        if now.primary and now.open_mode == "READ WRITE":
            return MigrationStepResult(step="unfence", facts={"switched": "false"})
        await _switch_back(sides)
        return MigrationStepResult(step="unfence", facts={"switched": "back"})
    if isinstance(command, RunMigrationRewind):
        from services.engines.oracle.migration_steps import _endpoint

        new, following = await _switch_back(sides)
        return MigrationStepResult(
            step="rewind",
            source_position=Scn(value=new.scn),
            at=utcnow(),
            endpoint=_endpoint(
                sides.source.db if sides.source else None, command.target_instance.node
            ),
            facts={"target_following": str(following).lower()},
        )
    raise EngineError.of(f"dataguard has no {command.TYPE} step", code=CODE_DATAGUARD)
