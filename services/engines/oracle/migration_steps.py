"""The executor's migration steps on Oracle: a `migration.<step>` of the `datapump` method in,
the Data Pump calls of `datapump.py` run in the saga's order, a `MigrationStepResult` out.

    preflight    the doctor's checks of the method on each side (`preflight.py`: release,
                 TDE keystore, the directory object at the staging path (the source's not
                 over a link), the Data Pump roles), then the source's schemas, and on the
                 target: declared on this node, the link, none of the schemas there yet.
                 Problems are reported, nothing changes
    prepare      `datapump.prepare` (both sides, and the export's ESTIMATE_ONLY size)
    fence        the schemas' users locked and their sessions killed, then expdp at the
                 current SCN into the store (over a link: the SCN and the source's inventory
                 are stored instead); the fence's position is that SCN
    final_sync   impdp from the store, or over the link at the fence's SCN
    parity       `datapump.validate` against the fenced source's inventory; every object or
                 row count that differs, and every object INVALID at the target only
    promote      nothing switches: the target serves the schemas already; its endpoint
    unfence      the users the fence locked unlocked again (one locked before it stays locked)

**Which databases.** Both are `[[databases]]` of the node, by uid: the source is the command's
`source`, the target its `target` (an existing database the schemas are imported into; Data
Pump builds no database). `prepare` needs both on the node it runs on; the other steps one
side each: `fence`/`unfence` the source, `final_sync`/`parity`/`promote` the target.

**The fence** is the owners' accounts locked (`ALTER USER ... ACCOUNT LOCK`) and their
sessions killed, rather than the whole database read only: the source's other schemas keep
serving, and a rollback is an unlock. Writes from another user through grants are not fenced;
they would show as row differences at `parity`, which fails the migration with the source
unfenced. The account statuses before the fence are stored first (`datapump-fence.json`), so
a rerun of the fence or the unfence knows which accounts were open.

Steps are idempotent: the export and import resume their jobs (`datapump.py`), the stored
fence record and source state are create-only, locking a locked account changes nothing.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from pydantic import BaseModel, ConfigDict

from schemas import Scn, utcnow
from schemas.messages import (
    ConnectionEndpoint,
    MigrationMethod,
    MigrationStep,
    MigrationStepResult,
    RunMigrationFence,
    RunMigrationFinalSync,
    RunMigrationParity,
    RunMigrationPreflight,
    RunMigrationPrepare,
    RunMigrationPromote,
    RunMigrationUnfence,
)
from services.blobstore import BlobStore, BlobStoreError, ObjectConflict, validate_key
from services.blobstore.layout import database_prefix
from services.engines.base import EngineError
from services.engines.oracle import datapump as dp
from services.engines.oracle import preflight
from services.engines.oracle.runner import OracleHome
from services.engines.oracle.session import OracleSessionError
from services.engines.settings import EngineSettings, HostedDatabase, OracleInstance

__all__ = [
    "ACCOUNT_SQL",
    "LOCK_SQL",
    "UNLOCK_SQL",
    "SqlFactory",
    "plan_of",
    "run_step",
]

CODE_UNSUPPORTED = "TM-ORA-060"
"""A step this node cannot run: a side not declared here, a step the method has not, bad
options."""
METHODS = frozenset({MigrationMethod.DATAPUMP, MigrationMethod.DATAGUARD})

SqlFactory = Callable[[HostedDatabase], dp.DataPumpSql]
"""The SQL of one database (called once per database; python-oracledb, or the simulator's)."""

ACCOUNT_SQL = "SELECT account_status FROM dba_users WHERE username = :name"
LOCK_SQL = """\
BEGIN
  IF :name <> SYS_CONTEXT('USERENV', 'SESSION_USER') THEN
    EXECUTE IMMEDIATE 'ALTER USER ' || DBMS_ASSERT.ENQUOTE_NAME(:name, FALSE) || ' ACCOUNT LOCK';
    FOR s IN (SELECT sid, serial# AS serial FROM v$session WHERE username = :name) LOOP
      EXECUTE IMMEDIATE 'ALTER SYSTEM KILL SESSION ''' || s.sid || ',' || s.serial
        || ''' IMMEDIATE';
    END LOOP;
  END IF;
END;"""
"""Lock one owner and end its sessions (a locked account keeps the sessions it has). Never
Tidemark's own account: a full export's owners are every user Oracle does not maintain."""
UNLOCK_SQL = """\
BEGIN
  EXECUTE IMMEDIATE 'ALTER USER ' || DBMS_ASSERT.ENQUOTE_NAME(:name, FALSE) || ' ACCOUNT UNLOCK';
END;"""

_EASY_CONNECT = re.compile(
    r"^(?:[a-z]+://)?(?P<host>[A-Za-z0-9.-]+)(?::(?P<port>\d+))?/(?P<service>[A-Za-z0-9_$#.-]+)"
)


# -- the plan and the sides ------------------------------------------------------------------------


def plan_of(command: MigrationStep) -> dp.DataPumpPlan:
    """The Data Pump of a migration from its options (validated at intake; again here, since a
    parfile is built from them)."""
    options = command.options
    schemas = tuple(s.strip().upper() for s in options.get("schemas", "").split(",") if s.strip())
    link = options.get("network_link")
    try:
        return dp.DataPumpPlan(
            migration_id=str(command.migration_id),
            schemas=schemas,
            parallel=int(options.get("parallel", "1")),
            link=link.upper() if link else None,
        )
    except ValueError as exc:
        raise EngineError.of(f"datapump options: {exc}", code=CODE_UNSUPPORTED) from None


def _instance(db: HostedDatabase) -> OracleInstance:
    if db.oracle is None:
        raise EngineError.of(f"{db.uid} has no [oracle] section", code="TM-ORA-030")
    return db.oracle


def _side(db: HostedDatabase, sql: dp.DataPumpSql) -> dp.DataPumpSide:
    instance = _instance(db)
    return dp.DataPumpSide(
        name=db.uid,
        home=OracleHome(
            oracle_home=instance.oracle_home,
            sid=instance.oracle_sid,
            time_zone=instance.time_zone,
            work_dir=instance.staging_dir,
        ),
        sql=sql,
        directory=instance.datapump_directory,
        directory_path=staging_of(db),
    )


class Sides:
    """The source and target of one step, from this node's `[[databases]]` (module docstring)."""

    def __init__(
        self,
        settings: EngineSettings,
        db: HostedDatabase,
        command: MigrationStep,
        sql_of: SqlFactory,
    ) -> None:
        self.command = command

        def declared(uid: str) -> dp.DataPumpSide | None:
            found = db if db.uid == uid else settings.database(uid)
            return None if found is None or found.oracle is None else _side(found, sql_of(found))

        self.source = declared(command.source)
        self.target = declared(command.target)
        self.target_db = db if db.uid == command.target else settings.database(command.target)
        self.source_db = db if db.uid == command.source else settings.database(command.source)

    def need_source(self) -> dp.DataPumpSide:
        if self.source is None:
            raise EngineError.of(
                f"the source {self.command.source} is not an Oracle database of this node",
                code=CODE_UNSUPPORTED,
            )
        return self.source

    def need_target(self) -> dp.DataPumpSide:
        if self.target is None:
            raise EngineError.of(
                f"the target {self.command.target} is not an Oracle database of this node: "
                "Data Pump imports into a database declared in [[databases]]",
                code=CODE_UNSUPPORTED,
            )
        return self.target


# -- what the store keeps beside the dump set ------------------------------------------------------


class _Stored(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class FenceRecord(_Stored):
    """Written before the first account is locked: what the unfence gives back."""

    owners: tuple[str, ...]
    locked_before: tuple[str, ...]


class SourceState(_Stored):
    """Over a link there is no manifest: the fenced source's SCN and inventory are kept here."""

    scn: int
    inventory: dp.Inventory


def _keys(prefix: str, command: MigrationStep) -> tuple[str, str, str]:
    base = f"{database_prefix(prefix, command.source)}/migrations/{command.migration_id}"
    # Beside the dump set's prefix, not under it: an export forgets every other object there.
    return f"{base}/datapump", f"{base}/datapump-fence.json", f"{base}/datapump-source.json"


M = TypeVar("M", bound=_Stored)


async def _read(store: BlobStore, key: str, model: type[M]) -> M | None:
    try:
        if await store.head(key) is None:
            return None
        return model.model_validate_json(await store.get_bytes(key))
    except BlobStoreError as exc:
        raise EngineError.of(f"{key}: {exc}", code="TM-ORA-056", retryable=True) from exc


async def _create(store: BlobStore, key: str, value: M) -> M:
    """Create-only: a rerun that raced an earlier run keeps the earlier run's value."""
    try:
        await store.put_stream(validate_key(key), value.model_dump_json().encode())
    except ObjectConflict:
        found = await _read(store, key, type(value))
        if found is None:
            raise
        return found
    except BlobStoreError as exc:
        raise EngineError.of(f"writing {key}: {exc}", code="TM-ORA-056", retryable=True) from exc
    return value


# -- the steps ------------------------------------------------------------------------------------


async def _call(side: dp.DataPumpSide, what: str, sql: str, **binds: object) -> None:
    try:
        await side.sql.call(what, sql, **binds)
    except OracleSessionError as exc:
        raise EngineError.of(
            f"{side.name}: {what}: {exc.reason}", code=exc.code, retryable=exc.retryable
        ) from None


async def _doctor(
    sides: Sides, command: RunMigrationPreflight, side: dp.DataPumpSide
) -> tuple[list[str], dict[str, str]]:
    """The doctor's checks of the method on this side (`preflight.py`), through its session."""
    db = sides.source_db if command.side == "source" else sides.target_db
    assert db is not None
    found = await preflight.examine_side(
        command.method,
        command.side,
        command.options,
        side.name,
        _instance(db),
        side.sql,
        staging_path=str(side.directory_path),
    )
    return found.problems, found.facts


async def _preflight(
    sides: Sides, plan: dp.DataPumpPlan, command: RunMigrationPreflight
) -> MigrationStepResult:
    facts = {"mode": plan.mode.value, "parallel": str(plan.parallel)}
    problems: list[str] = []
    if command.side == "source":
        if sides.source is None:
            return MigrationStepResult(
                step="preflight",
                problems=[f"the source {command.source} is not an Oracle database of this node"],
            )
        source = sides.source
        try:
            problems, found = await _doctor(sides, command, source)
            facts |= found
            owners = await dp._owners(source, plan)
            for owner in owners:
                if not await dp._rows(source, "reading DBA_USERS", dp.USER_SQL, name=owner):
                    problems.append(f"{source.name}: schema {owner} was not found")
            facts |= {"owners": ",".join(owners)[:500], "scn": str(await dp.current_scn(source))}
        except EngineError as exc:
            problems.append(f"{exc.failure.reason} ({exc.failure.code})")
        return MigrationStepResult(step="preflight", facts=facts, problems=problems[:32])
    if sides.target is None:
        return MigrationStepResult(
            step="preflight",
            problems=[
                f"the target {command.target} is not an Oracle database of this node: Data Pump "
                "imports into an existing database declared in [[databases]]"
            ],
        )
    target = sides.target
    try:
        problems, found = await _doctor(sides, command, target)
        facts |= found
        if plan.link is not None and not await dp._rows(
            target, "reading DBA_DB_LINKS", dp.DB_LINK_SQL, name=plan.link
        ):
            problems.append(f"{target.name}: no database link {plan.link}")
        # A full migration's owners are the source's: known here when the source is too.
        owners = list(plan.schemas)
        if not owners and sides.source is not None:
            owners = await dp._owners(sides.source, plan)
        for owner in owners:
            if await dp._rows(target, "reading DBA_USERS", dp.USER_SQL, name=owner):
                problems.append(
                    f"{target.name}: user {owner} already exists: the method imports into a "
                    "fresh schema only"
                )
    except EngineError as exc:
        problems.append(f"{exc.failure.reason} ({exc.failure.code})")
    return MigrationStepResult(step="preflight", facts=facts, problems=problems[:32])


async def _fence(
    sides: Sides, plan: dp.DataPumpPlan, command: RunMigrationFence, store: BlobStore, prefix: str
) -> MigrationStepResult:
    source = sides.need_source()
    key_prefix, fence_key, state_key = _keys(prefix, command)
    at = utcnow()
    fence = await _read(store, fence_key, FenceRecord)
    if fence is None:
        owners = await dp._owners(source, plan)
        locked = [
            owner
            for owner in owners
            if any(
                "LOCKED" in str(r["account_status"])
                for r in await dp._rows(source, "reading DBA_USERS", ACCOUNT_SQL, name=owner)
            )
        ]
        fence = await _create(
            store, fence_key, FenceRecord(owners=tuple(owners), locked_before=tuple(locked))
        )
    for owner in fence.owners:
        await _call(source, f"locking {owner}", LOCK_SQL, name=owner)
    facts = {"locked": ",".join(fence.owners)[:500]}
    if plan.link is not None:
        state = await _read(store, state_key, SourceState)
        if state is None:
            scn = await dp.current_scn(source)
            taken = await dp.inventory(source, list(fence.owners))
            state = await _create(store, state_key, SourceState(scn=scn, inventory=taken))
        return MigrationStepResult(
            step="fence", source_position=Scn(value=state.scn), at=at, facts=facts
        )
    manifest = await dp.export_to_store(plan, source, store, key_prefix)
    return MigrationStepResult(
        step="fence",
        source_position=Scn(value=manifest.flashback_scn),
        at=at,
        bytes_copied=sum(f.size for f in manifest.files),
        facts={**facts, "files": str(len(manifest.files))},
    )


async def _unfence(
    sides: Sides, command: RunMigrationUnfence, store: BlobStore, prefix: str
) -> MigrationStepResult:
    _, fence_key, _ = _keys(prefix, command)
    fence = await _read(store, fence_key, FenceRecord)
    if fence is None:  # never fenced: nothing was locked
        return MigrationStepResult(step="unfence")
    source = sides.need_source()
    opened = [o for o in fence.owners if o not in fence.locked_before]
    for owner in opened:
        await _call(source, f"unlocking {owner}", UNLOCK_SQL, name=owner)
    return MigrationStepResult(step="unfence", facts={"unlocked": ",".join(opened)[:500]})


async def _source_inventory(
    plan: dp.DataPumpPlan, command: MigrationStep, store: BlobStore, prefix: str
) -> dp.Inventory:
    key_prefix, _, state_key = _keys(prefix, command)
    if plan.link is not None:
        state = await _read(store, state_key, SourceState)
        if state is None:
            raise EngineError.of(f"no fenced source state at {state_key}", code="TM-ORA-059")
        return state.inventory
    manifest = await dp.read_manifest(store, key_prefix)
    if manifest is None:
        raise EngineError.of(f"no finished export under {key_prefix}", code="TM-ORA-059")
    return manifest.inventory


def _endpoint(db: HostedDatabase | None, node: str) -> ConnectionEndpoint:
    """The target's service, from its easy-connect DSN; a TNS alias says no host: the node."""
    dsn = db.oracle.dsn if db is not None and db.oracle is not None else ""
    match = _EASY_CONNECT.match(dsn)
    if match is not None:
        return ConnectionEndpoint(
            host=match.group("host"),
            port=int(match.group("port") or 1521),
            database=match.group("service"),
        )
    name = db.name if db is not None else "ORCL"
    return ConnectionEndpoint(host=node, port=1521, database=name)


async def run_step(
    settings: EngineSettings,
    db: HostedDatabase,
    command: MigrationStep,
    *,
    store: BlobStore,
    prefix: str,
    sql_of: SqlFactory,
) -> MigrationStepResult:
    if command.method not in METHODS:
        raise EngineError.of(
            f"the Oracle engine has no {command.method.value} steps yet "
            "(it has: dataguard, datapump)",
            code=CODE_UNSUPPORTED,
        )
    if command.method is MigrationMethod.DATAGUARD:
        from services.engines.oracle import dataguard

        return await dataguard.run_step(settings, db, command, sql_of=sql_of)
    plan = plan_of(command)
    sides = Sides(settings, db, command, sql_of)
    key_prefix, _, _ = _keys(prefix, command)
    if isinstance(command, RunMigrationPreflight):
        return await _preflight(sides, plan, command)
    if isinstance(command, RunMigrationPrepare):
        prepared = await dp.prepare(plan, sides.need_source(), sides.need_target())
        return MigrationStepResult(
            step="prepare",
            facts={
                "estimate_kb": str(prepared.estimate_kb),
                "owners": ",".join(prepared.owners)[:500],
            },
        )
    if isinstance(command, RunMigrationFence):
        return await _fence(sides, plan, command, store, prefix)
    if isinstance(command, RunMigrationUnfence):
        return await _unfence(sides, command, store, prefix)
    if isinstance(command, RunMigrationFinalSync):
        target = sides.need_target()
        if plan.link is not None:
            scn = command.source_final.value
            outcome = await dp.import_over_link(plan, target, scn)
        else:
            outcome = await dp.import_from_store(plan, target, store, key_prefix)
        return MigrationStepResult(
            step="final_sync",
            source_position=command.source_final,
            target_position=command.source_final,
            facts={
                "rows": str(sum(outcome.rows.values())),
                "tables": str(len(outcome.rows)),
                "benign": str(len(outcome.warnings)),
                "resumed": str(outcome.resumed).lower(),
            },
        )
    if isinstance(command, RunMigrationParity):
        target = sides.need_target()
        source_inventory = await _source_inventory(plan, command, store, prefix)
        report = await dp.validate(plan, target, source_inventory)
        differences = [
            *report.object_differences,
            *report.row_differences,
            *(f"{o}: INVALID at the target, VALID at the source" for o in report.new_invalid),
        ]
        return MigrationStepResult(
            step="parity",
            differences=[d[:500] for d in differences[:64]],
            facts={
                "differences": str(len(differences)),
                "objects": str(report.objects),
                "tables": str(report.tables),
                "rows": str(report.rows),
                "summary": report.summary()[:500],
                "recompiled": ",".join(report.recompiled)[:500],
                "invalid_as_at_source": ",".join(report.invalid_as_at_source)[:500],
            },
        )
    if isinstance(command, RunMigrationPromote):
        sides.need_target()
        return MigrationStepResult(
            step="promote",
            source_position=command.source_final,
            target_position=command.source_final,
            at=utcnow(),
            endpoint=_endpoint(sides.target_db, command.target_instance.node),
        )
    raise EngineError.of(
        f"datapump has no {command.TYPE} step: nothing streams before the cutover, and it keeps "
        "no way back after it",
        code=CODE_UNSUPPORTED,
    )


def staging_of(db: HostedDatabase) -> Path:
    """Where this database's dump files are staged (its directory object's path)."""
    instance = _instance(db)
    return instance.datapump_dir or instance.staging_dir / "datapump"
