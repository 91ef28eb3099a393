"""Migrations: moving a database onto the platform, one saga per database, in named phases.

    tool ──migration.request──▶ planner ──migration.<step>──▶ executor (source or target node)
    tool ◀──migration.requested / phase / ready / cutover_starting / completed / failed /
            rolled_back── planner
    participant ──migration.cutover_ack──▶ planner (its applications are drained)

Every migration subject ends with two database tokens, the source then the target
(`tm.cmd.planner.any.migration.pause.orders-db.orders-db-new`), so NATS permissions can scope a
platform team's credentials to its own databases: `tm.cmd.planner.any.migration.*.orders-db.*`
grants every command on the migrations whose source is `orders-db`, and
`tm.evt.migration.*.orders-db.*` every event of them. The source is the envelope's `database`;
the target's uid travels in the payload (`target`) and fills the `{target}` token.

What a model can check it checks (window order, budgets, the method's engine). What depends on
the clock or on what the planner knows (a window already over, source equal to target, an
unknown database) is checked by `check_request` at intake: a model that consulted the clock
would refuse to decode its own message when replayed from the event stream a day later.
"""

from __future__ import annotations

import re
import uuid
from datetime import datetime, timedelta
from enum import StrEnum
from itertools import pairwise
from typing import Annotated, ClassVar, Literal

from pydantic import Field, StringConstraints, model_validator

from schemas._base import DatabaseUid, NodeName, StrictModel, UtcDateTime
from schemas.database import DatabaseRef, Engine
from schemas.envelope import Command, Event
from schemas.messages.common import AbsPath, Failure, Port, Reason
from schemas.positions import Position


class MigrationPhase(StrEnum):
    """Where a migration is. Engine-neutral (ZDM's model, named for what each phase does).

    Terminal phases (completed, failed, aborted, rolled_back) are immutable: the saga that
    reached one never leaves it, so a late event cannot reopen a migration that a tool has
    already acted on (repointed its applications, dropped the source).
    """

    VALIDATING = "validating"
    """Preflight of both sides: facts gathered, method checked against them. Nothing changed."""
    PREPARING = "preparing"
    """The target instance is made ready to receive a copy (directories, configuration)."""
    COPYING = "copying"
    """The initial copy (base backup, restore from the archive, dump) runs."""
    CATCHING_UP = "catching_up"
    """The target rolls forward from the source's changes; lag is reported on a cadence."""
    READY = "ready"
    """Lag has stayed under budget for the hold time. By default the saga pauses here and waits
    for a cutover command or its window. The source is still the only writable side."""
    CUTTING_OVER = "cutting_over"
    """Inside a window only: the steps of `CutoverStep`, in order. The point of no return is one
    of them (`POINT_OF_NO_RETURN`); the saga records whether it was passed."""
    VERIFYING = "verifying"
    """Parity of the two sides. A physical copy is the source itself: the same system
    identifier, opened past the source's final position. A logical method adds row counts and
    checksums per table, objects and sequences."""
    COMPLETED = "completed"
    """The target is the database's primary and parity was verified."""
    FAILED = "failed"
    """Stopped on an error; `migration.failed` says where, and whether the source serves."""
    ABORTED = "aborted"
    """Stopped on request before the point of no return; the source is unfenced and serving."""
    ROLLED_BACK = "rolled_back"
    """After the point of no return, the old source is the primary again (the way back)."""


TERMINAL_PHASES: frozenset[MigrationPhase] = frozenset(
    {
        MigrationPhase.COMPLETED,
        MigrationPhase.FAILED,
        MigrationPhase.ABORTED,
        MigrationPhase.ROLLED_BACK,
    }
)

PHASE_ORDER: tuple[MigrationPhase, ...] = (
    MigrationPhase.VALIDATING,
    MigrationPhase.PREPARING,
    MigrationPhase.COPYING,
    MigrationPhase.CATCHING_UP,
    MigrationPhase.READY,
    MigrationPhase.CUTTING_OVER,
    MigrationPhase.VERIFYING,
    MigrationPhase.COMPLETED,
)
"""The forward path. A saga may pause after any phase before `completed`."""


class CutoverStep(StrEnum):
    """The steps of `cutting_over`, in order. Each is safe to rerun from its start."""

    DRAIN = "drain"
    """`migration.cutover_starting` sent; every named participant acknowledges (its
    applications drained) before the deadline, or the cutover is abandoned, nothing fenced."""
    FENCE_SOURCE = "fence_source"
    """The source accepts no new commit. Undone by unfencing (abort)."""
    FINAL_SYNC = "final_sync"
    """The target replays up to the source's final position (taken after the fence)."""
    VERIFY_POSITIONS = "verify_positions"
    """Both sides report the same position; a mismatch stops here, before anything is opened."""
    OPEN_TARGET = "open_target"
    """The target is opened read-write (promote, switchover). The point of no return: from here
    the target may accept commits the source never saw, so the source cannot simply be
    unfenced; the way back is a rollback that makes the old source follow the new primary."""


CUTOVER_STEPS: tuple[CutoverStep, ...] = tuple(CutoverStep)
POINT_OF_NO_RETURN: CutoverStep = CutoverStep.OPEN_TARGET


class MigrationMethod(StrEnum):
    """How the data moves. Each method belongs to one engine (`METHOD_ENGINE`)."""

    PHYSICAL_STREAM = "physical-stream"
    """PostgreSQL: the target is a streaming standby of the source, promoted at cutover."""
    PHYSICAL_ARCHIVE = "physical-archive"
    """PostgreSQL: the target is restored from Tidemark's base backup and rolls forward from the
    archive's WAL; source and target share nothing but the bucket."""
    LOGICAL_UPGRADE = "logical-upgrade"
    """PostgreSQL: logical replication into a newer major release, then sequences."""
    DUMP = "dump"
    """PostgreSQL: `pg_dump -Fd -j` / `pg_restore -j`; the whole copy is downtime."""
    DATAGUARD = "dataguard"
    """Oracle: physical standby (DUPLICATE FOR STANDBY), lag-gated switchover."""
    RMAN = "rman"
    """Oracle: restore of Tidemark's level 0/1 backups, roll forward from archived logs."""
    DATAPUMP = "datapump"
    """Oracle: Data Pump export/import (dump set via the bucket, or NETWORK_LINK)."""
    XTTS = "xtts"
    """Oracle: cross-platform transportable tablespaces with incremental roll-forward, then
    full transportable export/import of the metadata."""


METHOD_ENGINE: dict[MigrationMethod, Engine] = {
    MigrationMethod.PHYSICAL_STREAM: Engine.POSTGRES,
    MigrationMethod.PHYSICAL_ARCHIVE: Engine.POSTGRES,
    MigrationMethod.LOGICAL_UPGRADE: Engine.POSTGRES,
    MigrationMethod.DUMP: Engine.POSTGRES,
    MigrationMethod.DATAGUARD: Engine.ORACLE,
    MigrationMethod.RMAN: Engine.ORACLE,
    MigrationMethod.DATAPUMP: Engine.ORACLE,
    MigrationMethod.XTTS: Engine.ORACLE,
}

ROLLBACK_AFTER_CUTOVER: frozenset[MigrationMethod] = frozenset(
    {MigrationMethod.PHYSICAL_STREAM, MigrationMethod.LOGICAL_UPGRADE, MigrationMethod.DATAGUARD}
)
"""Methods whose way back after the point of no return keeps the target's new commits: the old
source follows the new primary (a standby of it, or, for logical-upgrade, a subscriber of it set
up at the cutover, before the target took its first write). For the others the source is left
as it was at the fence: going back to it means losing what the target accepted since."""

METHOD_OPTIONS: dict[MigrationMethod, dict[str, str]] = {
    MigrationMethod.LOGICAL_UPGRADE: {
        "database": "the database to move (one per migration); default the source's `dbname`",
    },
    MigrationMethod.DUMP: {
        "database": "the database to move (one per migration); default the source's `dbname`",
        "jobs": "parallel pg_dump and pg_restore jobs (1-32); default 2",
    },
    MigrationMethod.DATAPUMP: {
        "schemas": "the schemas to move, a comma list (SCHEMAS=); none: FULL=YES, every user "
        "Oracle does not maintain",
        "parallel": "Data Pump workers and dump files (PARALLEL=, %U: 1-99); default 1",
        "network_link": "the target's database link to the source: import over it "
        "(NETWORK_LINK=), no dump set in the store",
    },
    MigrationMethod.DATAGUARD: {
        "primary_unique_name": "the source's DB_UNIQUE_NAME (also its wallet alias); default "
        "its uid upper-cased, '-' as '_'",
        "standby_unique_name": "the target's DB_UNIQUE_NAME (also its wallet alias); default "
        "its uid upper-cased, '-' as '_'",
        "channels": "RMAN channels on each side of the duplicate (1-16); default 2",
        "lag_stale_s": "a DATUM_TIME older than this many seconds makes the lag unknown and "
        "keeps the gate closed (1-3600); default 10",
        "verify_wait_s": "how long SWITCHOVER ... VERIFY waits out ORA-16467 (0-600); default 30",
        "broker": "yes: DGMGRL VALIDATE DATABASE must say ready before the switchover; default no",
    },
}
"""The `options` each method reads, with what they mean; any other option is refused."""

MAX_WINDOWS = 32
MAX_WINDOW = timedelta(days=7)
MAX_HOLD_S = 24 * 3600.0
MAX_DOWNTIME_BUDGET_S = 7 * 24 * 3600.0
MAX_PARTICIPANTS = 16

OptionName = Annotated[str, StringConstraints(pattern=r"^[a-z][a-z0-9_]{0,62}$")]
OptionValue = Annotated[str, StringConstraints(max_length=500)]
DATABASE_NAME = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")
"""A database a logical method moves: a plain (unquoted, lower-case) PostgreSQL name."""
ORACLE_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_$#]{0,127}$")
"""A schema `datapump` moves: an unquoted Oracle identifier (upper-cased in the parfile)."""
ORACLE_LINK = re.compile(r"^[A-Za-z][A-Za-z0-9_$#.]{0,127}$")
ParticipantName = Annotated[str, StringConstraints(pattern=r"^[a-z][a-z0-9-]{0,62}$")]
"""A platform tool that must acknowledge a cutover (its own name, as it signs its acks)."""


class CutoverWindow(StrictModel):
    """When a cutover may start: `[start, end)`, UTC. The fence is never raised outside one."""

    start: UtcDateTime
    end: UtcDateTime

    @model_validator(mode="after")
    def _ordered(self) -> CutoverWindow:
        if self.end <= self.start:
            raise ValueError(f"window ends ({self.end:%Y-%m-%dT%H:%M:%SZ}) before it starts")
        if self.end - self.start > MAX_WINDOW:
            raise ValueError("a cutover window is at most 7 days; give several windows instead")
        return self


class LagBudget(StrictModel):
    """The `ready` gate: lag under these bounds, continuously, for `hold_s` seconds."""

    max_bytes: int | None = Field(default=None, ge=0, le=1 << 50)
    max_seconds: float | None = Field(default=None, ge=0, le=MAX_HOLD_S)
    hold_s: float = Field(default=60.0, ge=0, le=MAX_HOLD_S)

    @model_validator(mode="after")
    def _bounded(self) -> LagBudget:
        if self.max_bytes is None and self.max_seconds is None:
            raise ValueError("a lag budget needs max_bytes, max_seconds or both")
        return self


class TargetInstance(StrictModel):
    """Where the target runs: its database, its node, and (PostgreSQL) its directory, port and
    release."""

    database: DatabaseRef
    node: NodeName
    data_dir: AbsPath | None = None
    port: Port | None = None
    release: int | None = Field(
        default=None,
        ge=10,
        le=99,
        description="PostgreSQL major release the target runs (logical-upgrade, dump: newer "
        "than or equal to the source's); default the source's. The target node's executor "
        "runs the binaries of that release it found (`postgres_bin_dirs` and "
        "/usr/lib/postgresql/*/bin, each asked its version); its preflight refuses a release "
        "it does not have",
    )


class ConnectionEndpoint(StrictModel):
    """How applications reach the new primary (no credentials: those stay in the platform)."""

    host: Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9.:-]{1,253}$")]
    port: Port
    database: Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9_$#.-]{1,128}$")] = Field(
        description="PostgreSQL database name or Oracle service name"
    )


class MigrationProgress(StrictModel):
    """Numbers a progress bar shows. Unknown values are null, never guessed."""

    bytes_copied: int | None = Field(default=None, ge=0)
    bytes_total: int | None = Field(default=None, ge=0)
    lag_bytes: int | None = Field(default=None, ge=0)
    lag_seconds: float | None = Field(default=None, ge=0)
    eta_ready_s: float | None = Field(default=None, ge=0, description="estimate to `ready`")


class _Migration(StrictModel):
    """Fields every migration message shares, and the `{target}` subject token."""

    migration_id: uuid.UUID
    target: DatabaseUid = Field(description="the target database's uid (a subject token)")

    def subject_values(self) -> dict[str, str]:
        return {"target": self.target}


# --- tool → planner ------------------------------------------------------------------------


class RequestMigration(Command):
    """Plan a migration of the envelope's database (the source) onto `target_instance`."""

    TYPE: ClassVar[str] = "migration.request"
    SUBJECT: ClassVar[str] = "tm.cmd.planner.any.migration.request.{database}.{target}"
    SUMMARY: ClassVar[str] = "Ask the planner to migrate a database onto a target."

    migration_id: uuid.UUID
    target_instance: TargetInstance
    method: MigrationMethod
    options: dict[OptionName, OptionValue] = Field(
        default_factory=dict, max_length=32, description="the method's options (METHOD_OPTIONS)"
    )
    windows: list[CutoverWindow] = Field(
        default_factory=list,
        max_length=MAX_WINDOWS,
        description="cutover windows; empty: cut over only on a `migration.cutover` command",
    )
    downtime_budget_s: float = Field(gt=0, le=MAX_DOWNTIME_BUDGET_S)
    lag: LagBudget
    pause_after: MigrationPhase | None = Field(
        default=MigrationPhase.READY, description="pause after this phase; null: never pause"
    )
    participants: list[ParticipantName] = Field(default_factory=list, max_length=MAX_PARTICIPANTS)
    ack_timeout_s: float = Field(default=300.0, gt=0, le=3600.0)
    reason: Reason = "on request"

    @property
    def target(self) -> str:
        return self.target_instance.database.uid

    def subject_values(self) -> dict[str, str]:
        return {"target": self.target}

    @model_validator(mode="after")
    def _coherent(self) -> RequestMigration:
        engine = self.target_instance.database.engine
        if METHOD_ENGINE[self.method] is not engine:
            known = ", ".join(m.value for m, e in METHOD_ENGINE.items() if e is engine)
            raise ValueError(
                f"method {self.method.value!r} is not a {engine.value} method ({known})"
            )
        ordered = sorted(self.windows, key=lambda w: w.start)
        for before, after in pairwise(ordered):
            if after.start < before.end:
                raise ValueError(f"cutover windows overlap at {after.start:%Y-%m-%dT%H:%M:%SZ}")
        if self.lag.max_seconds is not None and self.lag.max_seconds > self.downtime_budget_s:
            # The final sync after the fence replays at most the lag: a lag budget larger than
            # the downtime budget lets the gate open on a cutover that cannot meet its budget.
            raise ValueError(
                f"lag budget of {self.lag.max_seconds:g} s exceeds the downtime budget of "
                f"{self.downtime_budget_s:g} s"
            )
        if self.pause_after in TERMINAL_PHASES:
            raise ValueError(f"cannot pause after {self.pause_after}: it is terminal")
        if len(set(self.participants)) != len(self.participants):
            raise ValueError("participants are named once each")
        accepted = METHOD_OPTIONS.get(self.method, {})
        unknown = sorted(set(self.options) - set(accepted))
        if unknown:
            takes = ", ".join(sorted(accepted)) or "none"
            raise ValueError(
                f"method {self.method.value!r} has no option {', '.join(unknown)} "
                f"(its options: {takes})"
            )
        jobs = self.options.get("jobs")
        if jobs is not None and not (jobs.isdigit() and 1 <= int(jobs) <= 32):
            raise ValueError(f"option jobs is a number of parallel jobs, 1 to 32, not {jobs!r}")
        database = self.options.get("database")
        if database is not None and not DATABASE_NAME.fullmatch(database):
            raise ValueError(f"option database is a plain database name, not {database!r}")
        schemas = self.options.get("schemas")
        if schemas is not None and not all(
            ORACLE_NAME.fullmatch(s.strip()) for s in schemas.split(",")
        ):
            raise ValueError(f"option schemas is a comma list of Oracle names, not {schemas!r}")
        parallel = self.options.get("parallel")
        if parallel is not None and not (parallel.isdigit() and 1 <= int(parallel) <= 99):
            raise ValueError(f"option parallel is a number of workers, 1 to 99, not {parallel!r}")
        link = self.options.get("network_link")
        if link is not None and not ORACLE_LINK.fullmatch(link):
            raise ValueError(f"option network_link is a database link name, not {link!r}")
        if self.method is MigrationMethod.DATAGUARD:
            _check_dataguard(self)
        return self


UNIQUE_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_]{0,29}$")
"""A DB_UNIQUE_NAME `dataguard` writes into SWITCHOVER TO (upper-cased)."""
_DATAGUARD_NUMBERS = {
    "channels": (1, 16),
    "lag_stale_s": (1, 3600),
    "verify_wait_s": (0, 600),
}


def _check_dataguard(request: RequestMigration) -> None:
    if request.lag.max_seconds is None:
        # V$DATAGUARD_STATS says how far behind in time, never in bytes.
        raise ValueError("dataguard measures its lag in seconds: give lag.max_seconds")
    for key in ("primary_unique_name", "standby_unique_name"):
        value = request.options.get(key)
        if value is not None and not UNIQUE_NAME.fullmatch(value):
            raise ValueError(f"option {key} is a DB_UNIQUE_NAME, not {value!r}")
    for key, (low, high) in _DATAGUARD_NUMBERS.items():
        value = request.options.get(key)
        if value is not None and not (value.isdigit() and low <= int(value) <= high):
            raise ValueError(f"option {key} is a whole number {low} to {high}, not {value!r}")
    broker = request.options.get("broker")
    if broker is not None and broker not in ("yes", "no"):
        raise ValueError(f"option broker is yes or no, not {broker!r}")


class MigrationRequestError(ValueError):
    """A request refused at intake; nothing was changed. `code` is stable."""

    def __init__(self, reason: str, code: str) -> None:
        super().__init__(reason)
        self.reason = reason
        self.code = code


def check_request(
    request: RequestMigration,
    source: DatabaseRef | None,
    *,
    now: datetime,
    known: frozenset[str] | None = None,
) -> None:
    """What the model cannot check alone: raise `MigrationRequestError` saying what is wrong.

    `known` is the set of database uids the planner hosts; None skips that check.
    """
    if source is None:
        raise MigrationRequestError(
            "a migration request must name its source database", "TM-MIG-SOURCE"
        )
    if known is not None and source.uid not in known:
        raise MigrationRequestError(f"unknown source database {source.uid!r}", "TM-MIG-UNKNOWN")
    if source.uid == request.target:
        raise MigrationRequestError(
            f"source and target are the same database ({source.uid})", "TM-MIG-SAME"
        )
    engine = request.target_instance.database.engine
    if source.engine is not engine:
        raise MigrationRequestError(
            f"source is {source.engine.value}, target is {engine.value}: cross-engine migration "
            "is not a method Tidemark has",
            "TM-MIG-ENGINE",
        )
    if request.windows and all(w.end <= now for w in request.windows):
        raise MigrationRequestError(
            f"every cutover window is in the past (latest ended "
            f"{max(w.end for w in request.windows):%Y-%m-%dT%H:%M:%SZ})",
            "TM-MIG-WINDOW",
        )


class _Control(_Migration, Command):
    """A control command on a running migration."""


class PauseMigration(_Control):
    TYPE: ClassVar[str] = "migration.pause"
    SUBJECT: ClassVar[str] = "tm.cmd.planner.any.migration.pause.{database}.{target}"
    SUMMARY: ClassVar[str] = "Pause a migration at the end of its current phase."

    reason: Reason = "paused on request"


class ResumeMigration(_Control):
    TYPE: ClassVar[str] = "migration.resume"
    SUBJECT: ClassVar[str] = "tm.cmd.planner.any.migration.resume.{database}.{target}"
    SUMMARY: ClassVar[str] = "Resume a paused migration, optionally with a new pause point."

    pause_after: MigrationPhase | None = None


class CutoverMigration(_Control):
    TYPE: ClassVar[str] = "migration.cutover"
    SUBJECT: ClassVar[str] = "tm.cmd.planner.any.migration.cutover.{database}.{target}"
    SUMMARY: ClassVar[str] = "Cut a ready migration over (at once, or at its next window)."

    wait_for_window: bool = Field(
        default=True, description="false: now, if no windows were given; never outside one"
    )


class AbortMigration(_Control):
    TYPE: ClassVar[str] = "migration.abort"
    SUBJECT: ClassVar[str] = "tm.cmd.planner.any.migration.abort.{database}.{target}"
    SUMMARY: ClassVar[str] = "Abort before the point of no return; the source keeps serving."

    reason: Reason = "aborted on request"


class RollbackMigration(_Control):
    TYPE: ClassVar[str] = "migration.rollback"
    SUBJECT: ClassVar[str] = "tm.cmd.planner.any.migration.rollback.{database}.{target}"
    SUMMARY: ClassVar[str] = "After the point of no return, make the old source primary again."

    reason: Reason = "rolled back on request"


class AcknowledgeCutover(_Control):
    """A participant's answer to `migration.cutover_starting`: its applications are drained."""

    TYPE: ClassVar[str] = "migration.cutover_ack"
    SUBJECT: ClassVar[str] = "tm.cmd.planner.any.migration.cutover_ack.{database}.{target}"
    SUMMARY: ClassVar[str] = "A participant says its applications are drained for a cutover."

    participant: ParticipantName
    ready: bool = Field(default=True, description="false: refuse; the cutover is abandoned")
    message: Annotated[str, StringConstraints(max_length=500)] = ""


# --- planner → tools (events) ----------------------------------------------------------------


class MigrationRequested(_Migration, Event):
    TYPE: ClassVar[str] = "migration.requested"
    SUBJECT: ClassVar[str] = "tm.evt.migration.requested.{database}.{target}"
    SUMMARY: ClassVar[str] = "The planner accepted a migration; the request was checked."

    method: MigrationMethod
    target_instance: TargetInstance
    windows: list[CutoverWindow] = Field(default_factory=list, max_length=MAX_WINDOWS)
    downtime_budget_s: float = Field(gt=0, le=MAX_DOWNTIME_BUDGET_S)
    lag: LagBudget
    pause_after: MigrationPhase | None
    participants: list[ParticipantName] = Field(default_factory=list, max_length=MAX_PARTICIPANTS)
    reason: Reason


class MigrationPhaseChanged(_Migration, Event):
    TYPE: ClassVar[str] = "migration.phase"
    SUBJECT: ClassVar[str] = "tm.evt.migration.phase.{database}.{target}"
    SUMMARY: ClassVar[str] = "A migration entered a phase or step, or reported progress."

    phase: MigrationPhase
    step: CutoverStep | None = Field(default=None, description="inside cutting_over")
    paused: bool = False
    point_of_no_return_passed: bool = False
    progress: MigrationProgress = Field(default_factory=MigrationProgress)
    message: Annotated[str, StringConstraints(max_length=500)] = ""


class MigrationReady(_Migration, Event):
    TYPE: ClassVar[str] = "migration.ready"
    SUBJECT: ClassVar[str] = "tm.evt.migration.ready.{database}.{target}"
    SUMMARY: ClassVar[str] = "Lag held under budget for the hold time; awaiting cutover."

    lag_bytes: int = Field(ge=0)
    lag_seconds: float = Field(ge=0)
    held_s: float = Field(ge=0)
    next_window: CutoverWindow | None = None


class CutoverStarting(_Migration, Event):
    TYPE: ClassVar[str] = "migration.cutover_starting"
    SUBJECT: ClassVar[str] = "tm.evt.migration.cutover_starting.{database}.{target}"
    SUMMARY: ClassVar[str] = "Drain now: the source is fenced once every participant acks."

    participants: list[ParticipantName] = Field(max_length=MAX_PARTICIPANTS)
    ack_deadline: UtcDateTime
    window: CutoverWindow | None = None


class MigrationCompleted(_Migration, Event):
    TYPE: ClassVar[str] = "migration.completed"
    SUBJECT: ClassVar[str] = "tm.evt.migration.completed.{database}.{target}"
    SUMMARY: ClassVar[str] = "The target is primary, parity verified; repoint applications."

    method: MigrationMethod
    downtime_s: float = Field(
        ge=0, description="from the fence raised on the source to the target accepting writes"
    )
    fenced_at: UtcDateTime
    target_writable_at: UtcDateTime
    source_final: Position = Field(description="the source's last position, after the fence")
    target_final: Position = Field(description="what the target had replayed when opened")
    endpoint: ConnectionEndpoint


class MigrationFailed(_Migration, Event):
    TYPE: ClassVar[str] = "migration.failed"
    SUBJECT: ClassVar[str] = "tm.evt.migration.failed.{database}.{target}"
    SUMMARY: ClassVar[str] = "A migration stopped on an error; says whether the source serves."

    phase: MigrationPhase
    step: CutoverStep | None = None
    point_of_no_return_passed: bool
    source_serving: bool = Field(description="the source is unfenced and accepts writes")
    failure: Failure


class MigrationRolledBack(_Migration, Event):
    TYPE: ClassVar[str] = "migration.rolled_back"
    SUBJECT: ClassVar[str] = "tm.evt.migration.rolled_back.{database}.{target}"
    SUMMARY: ClassVar[str] = "The old source is primary again."

    source_position: Position = Field(description="the old source's position when reopened")
    target_following: bool = Field(
        description="the target now follows the old source (a second switchover is possible)"
    )
    endpoint: ConnectionEndpoint


# --- the planner's query: `tm.qry.planner.migration` ----------------------------------------


class MigrationStatusRequest(StrictModel):
    """`tm.qry.planner.migration`: migrations of `source` (and `target`), or every one."""

    source: DatabaseUid | None = None
    target: DatabaseUid | None = None
    migration_id: uuid.UUID | None = None
    include_finished: bool = Field(default=True, description="terminal phases too")


class PhaseVisit(StrictModel):
    """One entry of a migration's phase history."""

    phase: MigrationPhase
    step: CutoverStep | None = None
    at: UtcDateTime
    message: Annotated[str, StringConstraints(max_length=500)] = ""


class MigrationView(StrictModel):
    """A migration as its saga record holds it."""

    migration_id: uuid.UUID
    source: DatabaseUid
    target: DatabaseUid
    method: MigrationMethod
    phase: MigrationPhase
    step: CutoverStep | None = None
    paused: bool = False
    waiting: Annotated[str, StringConstraints(max_length=500)] | None = Field(
        default=None, description="what it waits for: a gate, a window, an ack, a job"
    )
    point_of_no_return_passed: bool = False
    progress: MigrationProgress = Field(default_factory=MigrationProgress)
    downtime_estimate_s: float | None = Field(default=None, ge=0)
    downtime_budget_s: float = Field(gt=0, le=MAX_DOWNTIME_BUDGET_S)
    windows: list[CutoverWindow] = Field(default_factory=list, max_length=MAX_WINDOWS)
    history: list[PhaseVisit] = Field(default_factory=list)
    requested_at: UtcDateTime
    updated_at: UtcDateTime


class MigrationStatusReply(StrictModel):
    migrations: list[MigrationView]


# --- planner → executor: one command per engine step ----------------------------------------

StepSide = Literal["source", "target"]


class _Step(_Migration, Command):
    """An engine step, run by the executor on the node of `SIDE`. Steps are idempotent: the
    executor reruns one from its start after a restart (ZDM's rule for resumable phases)."""

    SIDE: ClassVar[StepSide]

    job_id: uuid.UUID
    source: DatabaseUid = Field(description="the source's uid (also the envelope's database)")
    method: MigrationMethod
    target_instance: TargetInstance
    options: dict[OptionName, OptionValue] = Field(
        default_factory=dict, max_length=32, description="the request's (METHOD_OPTIONS)"
    )


class RunMigrationPreflight(_Step):
    TYPE: ClassVar[str] = "migration.preflight"
    SUBJECT: ClassVar[str] = "tm.cmd.executor.{node}.migration.preflight.{database}.{target}"
    SUMMARY: ClassVar[str] = "Gather the facts of one side; change nothing."
    SIDE: ClassVar[StepSide] = "source"

    side: StepSide = "source"


class RunMigrationPrepare(_Step):
    TYPE: ClassVar[str] = "migration.prepare"
    SUBJECT: ClassVar[str] = "tm.cmd.executor.{node}.migration.prepare.{database}.{target}"
    SUMMARY: ClassVar[str] = (
        "Make the target ready for the copy (a new cluster of its release, roles, schema)."
    )
    SIDE: ClassVar[StepSide] = "target"


class RunMigrationCopy(_Step):
    TYPE: ClassVar[str] = "migration.copy"
    SUBJECT: ClassVar[str] = "tm.cmd.executor.{node}.migration.copy.{database}.{target}"
    SUMMARY: ClassVar[str] = (
        "Build the target from the source (standby, archive restore, or table sync)."
    )
    SIDE: ClassVar[StepSide] = "target"


class RunMigrationLag(_Step):
    TYPE: ClassVar[str] = "migration.lag"
    SUBJECT: ClassVar[str] = "tm.cmd.executor.{node}.migration.lag.{database}.{target}"
    SUMMARY: ClassVar[str] = "Measure how far the target is behind the source."
    SIDE: ClassVar[StepSide] = "target"


class RunMigrationFence(_Step):
    TYPE: ClassVar[str] = "migration.fence"
    SUBJECT: ClassVar[str] = "tm.cmd.executor.{node}.migration.fence.{database}.{target}"
    SUMMARY: ClassVar[str] = "Fence the source against new commits; report its final position."
    SIDE: ClassVar[StepSide] = "source"


class RunMigrationUnfence(_Step):
    TYPE: ClassVar[str] = "migration.unfence"
    SUBJECT: ClassVar[str] = "tm.cmd.executor.{node}.migration.unfence.{database}.{target}"
    SUMMARY: ClassVar[str] = "Lift the fence (abort before the point of no return)."
    SIDE: ClassVar[StepSide] = "source"


class RunMigrationFinalSync(_Step):
    TYPE: ClassVar[str] = "migration.final_sync"
    SUBJECT: ClassVar[str] = "tm.cmd.executor.{node}.migration.final_sync.{database}.{target}"
    SUMMARY: ClassVar[str] = "Wait until the target has replayed the source's final position."
    SIDE: ClassVar[StepSide] = "target"

    source_final: Position


class RunMigrationParity(_Step):
    TYPE: ClassVar[str] = "migration.parity"
    SUBJECT: ClassVar[str] = "tm.cmd.executor.{node}.migration.parity.{database}.{target}"
    SUMMARY: ClassVar[str] = (
        "Compare the fenced source and the target: rows and checksums, objects, sequences."
    )
    SIDE: ClassVar[StepSide] = "target"


class RunMigrationPromote(_Step):
    TYPE: ClassVar[str] = "migration.promote"
    SUBJECT: ClassVar[str] = "tm.cmd.executor.{node}.migration.promote.{database}.{target}"
    SUMMARY: ClassVar[str] = "Open the target read-write: the point of no return."
    SIDE: ClassVar[StepSide] = "target"

    source_final: Position


class RunMigrationRewind(_Step):
    TYPE: ClassVar[str] = "migration.rewind"
    SUBJECT: ClassVar[str] = "tm.cmd.executor.{node}.migration.rewind.{database}.{target}"
    SUMMARY: ClassVar[str] = "Rollback: make the old source follow the new primary."
    SIDE: ClassVar[StepSide] = "source"


MigrationStep = _Step
"""Any of the executor's migration steps (the type the engines' `Migrates` takes)."""

MIGRATION_COMMANDS: tuple[type[Command], ...] = (
    RequestMigration,
    PauseMigration,
    ResumeMigration,
    CutoverMigration,
    AbortMigration,
    RollbackMigration,
    AcknowledgeCutover,
)
MIGRATION_STEPS: tuple[type[_Step], ...] = (
    RunMigrationPreflight,
    RunMigrationPrepare,
    RunMigrationCopy,
    RunMigrationLag,
    RunMigrationFence,
    RunMigrationUnfence,
    RunMigrationFinalSync,
    RunMigrationParity,
    RunMigrationPromote,
    RunMigrationRewind,
)
MIGRATION_EVENTS: tuple[type[Event], ...] = (
    MigrationRequested,
    MigrationPhaseChanged,
    MigrationReady,
    CutoverStarting,
    MigrationCompleted,
    MigrationFailed,
    MigrationRolledBack,
)
