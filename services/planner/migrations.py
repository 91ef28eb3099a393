"""The migration saga: one database moved onto a target in ZDM's engine-neutral phases.

    validating ─▶ preparing ─▶ copying ─▶ catching_up ─▶ ready ─▶ cutting_over ─▶ verifying
        │             │           │            │            │      drain                │
        │             │           │            │            │      fence_source         ▼
        │             │           │            │            │      final_sync        completed
        │             │           │            │            │      verify_positions
        └─────────────┴───────────┴────────────┴────────────┤      open_target ◀─ PNR
            failed | aborted (before the point of no return) │          │
                                   rolled_back (after it) ◀──┴──────────┘

A saga kind on the generic machinery (`sagas/`). Each phase's work is one or more executor
steps (`migration.<step>`, run by the engine of the method on the node of the step's side);
a step's job id is `(migration, step, attempt)`, so a redelivered or resumed step is the same
job (the executor's journal answers it again) and a retry is a new attempt. The record, kept in
`migration.<id>` and written with compare-and-set, is the only truth: a planner killed in any
phase resumes from it (`resume_all` on start; the job events wait in TM_EVT), and an executor
killed mid-step reports the job interrupted, after which the step runs again from its start
(every step is idempotent).

The rules that keep data safe:
- nothing is changed before `validating` has passed both sides' preflights; a refusal there is
  a `request.rejected` with the reasons;
- the source is fenced only inside a window (or on a cutover command when no window was given)
  and only after every participant acknowledged `migration.cutover_starting`;
- the point of no return (`open_target`) is recorded *before* the promote is sent: from then
  on the source is never unfenced by the saga (two writable primaries), only rolled back;
- a failure or an abort before it unfences the source, drops the migration's slot and stops
  the target (its directory is kept); after it, the migration fails with the source fenced and
  says so (`source_serving=false`), and `rollback` is the way back.

Pause: `pause_after` X pauses once X's work is done, before the next phase starts (`resume` goes
on). `ready` is itself the wait for the cutover — its command, or its windows when windows were
given (agreed windows are the owners' consent) — so pausing after it is what `ready` does.
Pausing after `verifying` keeps the way back open: the target serves as the primary and the
saga waits; `resume` completes it, `rollback` turns back.
"""

from __future__ import annotations

import contextlib
import logging
import uuid
from datetime import datetime, timedelta
from typing import Any

from schemas import DatabaseRef, Envelope, Payload, uuid7
from schemas.messages import (
    AbortMigration,
    AcknowledgeCutover,
    CancelJob,
    CutoverMigration,
    CutoverStarting,
    CutoverStep,
    JobFailed,
    JobProgress,
    JobSucceeded,
    MigrationCompleted,
    MigrationFailed,
    MigrationPhase,
    MigrationPhaseChanged,
    MigrationProgress,
    MigrationReady,
    MigrationRequested,
    MigrationRequestError,
    MigrationRolledBack,
    MigrationStatusRequest,
    MigrationStepResult,
    MigrationView,
    PauseMigration,
    PhaseVisit,
    RequestMigration,
    ResumeMigration,
    RollbackMigration,
    RunMigrationCopy,
    RunMigrationFence,
    RunMigrationFinalSync,
    RunMigrationLag,
    RunMigrationParity,
    RunMigrationPreflight,
    RunMigrationPrepare,
    RunMigrationPromote,
    RunMigrationRewind,
    RunMigrationUnfence,
)
from schemas.messages.common import Failure
from schemas.messages.migrations import (
    ROLLBACK_AFTER_CUTOVER,
    CutoverWindow,
    check_request,
)
from services.planner.context import PlannerContext, require_database
from services.planner.errors import BUSY, FINISHED, NO_NODE, NOT_FOUND, Refusal, Refused
from services.planner.keys import step_id
from services.planner.locks import release_lock, take_lock
from services.planner.migration_control import decide
from services.planner.migration_record import (
    CODE_DDL,
    CODE_DRAIN,
    CODE_METHOD,
    CODE_PARITY,
    CODE_PREFLIGHT,
    CODE_STATE,
    CODE_STEP,
    CODE_WINDOW,
    CUTOVER_OVERHEAD_S,
    METHOD_STEPS,
    METHODS_BUILT,
    STEP_ATTEMPTS,
    TABLE,
    MigrationRecord,
    migration_key,
    next_phase,
    source_claim_key,
)
from services.planner.records import Lock
from services.planner.sagas import (
    Idle,
    Move,
    Outcome,
    SagaRef,
    TimeWindow,
    Update,
    Wait,
    check_gate,
    check_windows,
    step_ref,
    until_written,
)
from services.planner.store import Conflict, Versioned

__all__ = [
    "CODE_DRAIN",
    "CODE_METHOD",
    "CODE_PARITY",
    "CODE_PREFLIGHT",
    "CODE_STATE",
    "CODE_STEP",
    "CODE_WINDOW",
    "TABLE",
    "MigrationRecord",
    "Migrations",
    "migration_key",
]

log = logging.getLogger("tidemark.planner")

P = MigrationPhase
S = CutoverStep


def _role_problems(facts: dict[str, str]) -> list[str]:
    """What the roles read back from both sides after a role change say is wrong."""
    want = {
        "target_role": "PRIMARY",
        "target_open_mode": "READ WRITE",
        "source_role": "PHYSICAL STANDBY",
        "source_apply": "running",
    }
    return [
        f"{key.replace('_', ' ')} is {facts.get(key) or 'unknown'}, not {value}"
        for key, value in want.items()
        if facts.get(key) != value
    ]


class Migrations:
    """The migration saga kind, its intake and control commands, and its status query."""

    kind = MigrationRecord.KIND
    record = MigrationRecord
    prefix = "migration."

    def __init__(self, ctx: PlannerContext) -> None:
        self.ctx = ctx
        self._finished: set[uuid.UUID] = set()
        """Migrations this process saw final with every event said: the clock reads them no
        more (a final record never changes again)."""

    def key(self, saga_id: uuid.UUID) -> str:
        return migration_key(saga_id)

    @staticmethod
    def ref(migration_id: uuid.UUID) -> SagaRef:
        return SagaRef(kind=MigrationRecord.KIND, id=migration_id)

    @property
    def settings(self) -> Any:
        return self.ctx.settings

    def now(self) -> datetime:
        return self.ctx.clock.now()

    async def load(self, migration_id: uuid.UUID) -> Versioned[MigrationRecord] | None:
        return await self.ctx.plans.get(migration_key(migration_id), MigrationRecord)

    async def advance(self, migration_id: uuid.UUID) -> MigrationRecord | None:
        record: MigrationRecord | None = await self.ctx.sagas.advance(self.ref(migration_id))
        return record

    # -- intake ------------------------------------------------------------------------------

    async def request(self, command: Envelope[RequestMigration]) -> None:
        """Check a `migration.request`, create its saga (once), and run it to its first wait.
        Refusals before the record exists are `request.rejected` (the caller's intake)."""
        source = require_database(command)
        data = command.data
        key = migration_key(data.migration_id)
        if await self.ctx.plans.get(key, MigrationRecord) is None:
            await self.check(source, data)
            hosting = await self.ctx.nodes.hosting(source.uid)
            source_node = hosting[0].node
            now = self.now()
            record = MigrationRecord(
                migration_id=data.migration_id,
                command_id=command.id,
                correlation_id=command.correlation_id,
                source=source,
                source_node=source_node,
                request=data,
                phase=P.VALIDATING,
                databases=[data.target],
                created_at=now,
                updated_at=now,
                visits=[PhaseVisit(phase=P.VALIDATING, at=now, message="requested")],
            )
            await self._claim(record)
            with contextlib.suppress(Conflict):  # a redelivery raced us: go on with its record
                await self.ctx.plans.create(key, record)
            await self._send(
                record,
                MigrationRequested(
                    migration_id=data.migration_id,
                    target=data.target,
                    method=data.method,
                    target_instance=data.target_instance,
                    windows=data.windows,
                    downtime_budget_s=data.downtime_budget_s,
                    lag=data.lag,
                    pause_after=data.pause_after,
                    participants=data.participants,
                    reason=data.reason,
                ),
                "requested",
            )
        await self.advance(data.migration_id)

    async def check(self, source: DatabaseRef, data: RequestMigration) -> None:
        """Refuse a request the planner cannot run (`Refused`, with the reason); changes nothing."""
        hosting = await self.ctx.nodes.hosting(source.uid)
        known = frozenset({source.uid}) if hosting else frozenset()
        described = await self.ctx.nodes.ref(source.uid) if hosting else None
        try:
            check_request(data, described or source, now=self.now(), known=known)
        except MigrationRequestError as exc:
            if exc.code == "TM-MIG-UNKNOWN":
                raise Refused(
                    Refusal(
                        f"unknown source database {source.uid!r}: no executor hosts it (tm_nodes)",
                        exc.code,
                    )
                ) from None
            raise Refused(Refusal(exc.reason, exc.code)) from None
        if data.method not in METHODS_BUILT:
            built = ", ".join(sorted(m.value for m in METHODS_BUILT))
            raise Refused(
                Refusal(
                    f"method {data.method.value!r} is part of the contract but not built yet "
                    f"(methods that run today: {built}); `tidemark migrate advise` ranks them",
                    CODE_METHOD,
                )
            )
        if not await self.ctx.nodes.is_live(data.target_instance.node):
            raise Refused(
                Refusal(
                    f"no executor runs on the target node {data.target_instance.node!r} "
                    "(no heartbeat in tm_nodes)",
                    NO_NODE,
                )
            )
        if METHOD_STEPS[data.method].builds_target and await self.ctx.nodes.hosting(data.target):
            raise Refused(
                Refusal(
                    f"the target {data.target!r} is already a database an executor hosts: a "
                    "migration builds a new database, it never writes over one",
                    CODE_PREFLIGHT,
                )
            )

    async def _claim(self, record: MigrationRecord) -> None:
        """The target's lock and the source's claim, or a refusal naming who holds them."""
        await take_lock(self.ctx.plans, record.target, self._lock(record, record.target_node))
        claim = source_claim_key(record.source.uid)
        try:
            await self.ctx.plans.create(claim, record.ref)
        except Conflict:
            held = await self.ctx.plans.get(claim, SagaRef)
            if held is not None and held.value != record.ref:
                await release_lock(self.ctx.plans, record.target, self._lock_id(record))
                raise Refused(
                    Refusal(
                        f"{record.source.uid} is already being migrated ({held.value}); one "
                        "migration per source at a time",
                        BUSY,
                    )
                ) from None

    def _lock_id(self, record: MigrationRecord) -> uuid.UUID:
        return step_ref(record.migration_id, "lock")

    def _lock(self, record: MigrationRecord, node: str) -> Lock:
        return Lock(
            kind=self.kind,
            holder=record.ref,
            job_id=self._lock_id(record),
            node=node,
            command_id=record.command_id,
            taken_at=record.created_at,
        )

    # -- the steps -----------------------------------------------------------------------------

    async def step(self, record: MigrationRecord, revision: int) -> Outcome:
        mark = f"{record.phase}/{record.step}/{record.paused}"
        if record.announced != mark:
            await self._announce_phase(record)
            return Update({"announced": mark})
        if record.rollback_reason is not None:
            return await self._rolling_back(record)
        if record.abort_reason is not None or record.failing is not None:
            return await self._stopping(record)
        phase = record.phase
        if phase is P.VALIDATING:
            return await self._validating(record)
        if phase is P.PREPARING:
            if record.steps.prepare:
                prepared = await self._need(
                    record, "prepare", RunMigrationPrepare, record.target_node
                )
                if not isinstance(prepared, MigrationStepResult):
                    return prepared
            return await self._done(record, {})
        if phase is P.COPYING:
            if not record.steps.copy:
                return await self._done(record, {})
            copied = await self._need(record, "copy", RunMigrationCopy, record.target_node)
            if not isinstance(copied, MigrationStepResult):
                return copied
            progress = record.progress.model_copy(
                update={"bytes_copied": copied.bytes_copied, "bytes_total": copied.bytes_copied}
            )
            return await self._done(record, {"progress": progress})
        if phase is P.CATCHING_UP:
            return await self._catching_up(record)
        if phase is P.READY:
            return await self._ready(record)
        if phase is P.CUTTING_OVER:
            return await self._cutting_over(record)
        if phase is P.VERIFYING:
            return await self._verifying(record)
        return Idle()

    async def _done(self, record: MigrationRecord, changes: dict[str, Any]) -> Outcome:
        """The phase's work is done: move on, or pause first if asked to pause after it (the
        paused state is announced here: a paused saga takes no step until resumed)."""
        after = next_phase(record.phase)
        asked = record.phase in (record.pause_point, record.request.pause_after)
        if asked and record.paused_for is not record.phase:
            paused = record.model_copy(
                update={
                    **changes,
                    "paused": True,
                    "paused_for": record.phase,
                    "visits": self._visit(record, f"paused after {record.phase}"),
                }
            )
            await self._announce_phase(paused)
            return Update(
                {
                    **changes,
                    "paused": True,
                    "paused_for": record.phase,
                    "visits": paused.visits,
                    "announced": f"{record.phase}/{record.step}/True",
                }
            )
        assert after is not None
        return Move(after, {**changes, "visits": self._visit(record, "", phase=after)})

    def _visit(
        self,
        record: MigrationRecord,
        message: str,
        *,
        phase: MigrationPhase | None = None,
        step: CutoverStep | None = None,
    ) -> list[PhaseVisit]:
        visit = PhaseVisit(phase=phase or record.phase, step=step, at=self.now(), message=message)
        return [*record.visits, visit][-200:]

    async def _validating(self, record: MigrationRecord) -> Outcome:
        source = await self._need(
            record,
            "preflight_source",
            RunMigrationPreflight,
            record.source_node,
            side="source",
        )
        if not isinstance(source, MigrationStepResult):
            return source
        target = await self._need(
            record, "preflight_target", RunMigrationPreflight, record.target_node, side="target"
        )
        if not isinstance(target, MigrationStepResult):
            return target
        problems = [f"source: {p}" for p in source.problems]
        problems += [f"target: {p}" for p in target.problems]
        if problems:
            raise Refused(
                Refusal(
                    "the preflight found what stops this migration (nothing was changed): "
                    + "; ".join(problems),
                    CODE_PREFLIGHT,
                )
            )
        if not record.accepted:
            await self.ctx.accept_command(
                record.command_id,
                RequestMigration.TYPE,
                record.source,
                str(record.migration_id),
                f"migration {record.migration_id} of {record.source.uid} onto {record.target} "
                f"({record.request.method.value}): preflight passed",
                correlation_id=record.correlation_id,
            )
            return Update({"accepted": True})
        size = int(source.facts.get("size_bytes", "0") or 0)
        progress = record.progress.model_copy(update={"bytes_total": size or None})
        return await self._done(record, {"progress": progress})

    async def _lag(self, record: MigrationRecord) -> MigrationStepResult | Outcome:
        """A lag sample; for a method that replicates rows only, a changed schema on the
        source stops the migration (the sample is dropped and the failure handled)."""
        got = await self._need(record, "lag", RunMigrationLag, record.target_node)
        if isinstance(got, MigrationStepResult):
            ddl = self._schema_changed(record, got)
            if ddl is not None:
                results = {k: v for k, v in record.results.items() if k != "lag"}
                return Update({"results": results, "failing": ddl})
        return got

    def _schema_changed(
        self, record: MigrationRecord, sample: MigrationStepResult
    ) -> Failure | None:
        if not record.steps.schema_watch or "prepare" not in record.results:
            return None
        want = record.results["prepare"].facts.get("schema_signature")
        got = sample.facts.get("schema_signature")
        if want is None or got is None or want == got:
            return None
        return Failure(
            reason="the source's schema changed during the migration (a DDL): logical "
            "replication carries rows, not schema changes; the source keeps serving, apply the "
            "change to both sides or request the migration again",
            code=CODE_DDL,
        )

    def _lag_changes(self, record: MigrationRecord, lag: MigrationStepResult) -> dict[str, Any]:
        """Forget the sample (the next check takes a new one) and keep what it showed."""
        now = self.now()
        lag_bytes = lag.lag_bytes or 0
        eta: float | None = None
        if record.lag_sample is not None:
            then, before = record.lag_sample
            elapsed = (now - then).total_seconds()
            shrink = (before - lag_bytes) / elapsed if elapsed > 0 else 0.0
            if lag_bytes == 0:
                eta = 0.0
            elif shrink > 0:
                eta = lag_bytes / shrink
        results = {k: v for k, v in record.results.items() if k != "lag"}
        progress = record.progress.model_copy(
            update={"lag_bytes": lag.lag_bytes, "lag_seconds": lag.lag_seconds, "eta_ready_s": eta}
        )
        return {"results": results, "progress": progress, "lag_sample": (now, lag_bytes)}

    def _within_budget(self, record: MigrationRecord, lag: MigrationStepResult) -> bool:
        budget = record.request.lag
        if lag.lag_bytes is None and lag.lag_seconds is None:
            return False  # the engine could not say (stale or empty statistics): gate closed
        if budget.max_bytes is not None and (lag.lag_bytes or 0) > budget.max_bytes:
            return False
        return budget.max_seconds is None or (lag.lag_seconds or 0.0) <= budget.max_seconds

    def _lag_text(self, record: MigrationRecord, lag: MigrationStepResult) -> str:
        budget = record.request.lag
        if lag.lag_bytes is None and lag.lag_seconds is None:
            return f"lag unknown ({lag.facts.get('unknown') or 'no measure'})"[:400]
        bounds = []
        if budget.max_bytes is not None:
            bounds.append(f"{lag.lag_bytes or 0} of {budget.max_bytes} bytes")
        if budget.max_seconds is not None:
            bounds.append(f"{lag.lag_seconds or 0.0:.2f} of {budget.max_seconds:g} s")
        return "lag " + ", ".join(bounds)

    async def _catching_up(self, record: MigrationRecord) -> Outcome:
        if not record.steps.lag:
            # Nothing streams: the target is as ready as it will be before the fence.
            await self._send(
                record,
                MigrationReady(
                    migration_id=record.migration_id,
                    target=record.target,
                    lag_bytes=0,
                    lag_seconds=0.0,
                    held_s=0.0,
                    next_window=self._next_window(record, self.now()),
                ),
                "ready",
            )
            return await self._done(record, {})
        lag = await self._lag(record)
        if not isinstance(lag, MigrationStepResult):
            return lag
        now = self.now()
        changes = self._lag_changes(record, lag)
        await self._progress(record, changes["progress"], "lag measured")
        hold = timedelta(seconds=record.request.lag.hold_s)
        gate = check_gate(record, "lag", holds=self._within_budget(record, lag), hold=hold, now=now)
        changes.update(gate.changes)
        if gate.open:
            await self._send(
                record,
                MigrationReady(
                    migration_id=record.migration_id,
                    target=record.target,
                    lag_bytes=lag.lag_bytes or 0,
                    lag_seconds=lag.lag_seconds or 0.0,
                    held_s=gate.held_for.total_seconds(),
                    next_window=self._next_window(record, now),
                ),
                "ready",
            )
            return await self._done(record, changes)
        interval = timedelta(seconds=self.settings.migration_lag_interval_s)
        return Wait(
            f"{self._lag_text(record, lag)}; under budget for "
            f"{gate.held_for.total_seconds():.0f} of {record.request.lag.hold_s:g} s",
            until=now + interval,
            changes=changes,
        )

    def _windows(self, record: MigrationRecord) -> list[TimeWindow]:
        return [TimeWindow(start=w.start, end=w.end) for w in record.request.windows]

    def _next_window(self, record: MigrationRecord, now: datetime) -> CutoverWindow | None:
        later = sorted((w for w in record.request.windows if w.end > now), key=lambda w: w.start)
        return later[0] if later else None

    async def _ready(self, record: MigrationRecord) -> Outcome:
        """Wait for the cutover (its command, or a window) while sampling the lag; cut over
        only with a fresh sample under budget (a method that streams nothing has no lag)."""
        now = self.now()
        changes: dict[str, Any] = {}
        lag: MigrationStepResult | None = None
        if record.steps.lag:
            sampled = await self._lag(record)
            if not isinstance(sampled, MigrationStepResult):
                return sampled
            lag = sampled
            changes = self._lag_changes(record, lag)
            await self._progress(record, changes["progress"], "lag measured")
        later = now + timedelta(seconds=self.settings.migration_ready_interval_s)
        windows = self._windows(record)
        if windows:
            state = check_windows(windows, now)
            if not state.open:
                if state.next_start is None:
                    raise Refused(
                        Refusal(
                            "every cutover window has passed without a cutover; the source "
                            "keeps serving (request again with new windows)",
                            CODE_WINDOW,
                        )
                    )
                return Wait(
                    f"ready; outside its cutover windows, the next opens at "
                    f"{state.next_start:%Y-%m-%dT%H:%M:%SZ}",
                    until=min(state.next_start, later),
                    changes=changes,
                )
        elif not record.cutover_requested:
            return Wait(
                "ready: waiting for a cutover command (`tidemark migrate cutover`)",
                until=later,
                changes=changes,
            )
        if lag is not None and not self._within_budget(record, lag):
            interval = timedelta(seconds=self.settings.migration_lag_interval_s)
            return Wait(
                f"{self._lag_text(record, lag)}: over budget, the cutover waits until it is "
                "under again",
                until=now + interval,
                changes=changes,
            )
        step = S.DRAIN
        changes["step"] = step
        changes["visits"] = self._visit(record, "cutover started", phase=P.CUTTING_OVER, step=step)
        return Move(P.CUTTING_OVER, changes)

    async def _cutting_over(self, record: MigrationRecord) -> Outcome:
        step = record.step or S.DRAIN
        if step is S.DRAIN:
            return await self._drain(record)
        if step is S.FENCE_SOURCE:
            fence = await self._need(record, "fence", RunMigrationFence, record.source_node)
            if not isinstance(fence, MigrationStepResult):
                return fence
            return self._next_step(
                record, S.FINAL_SYNC, f"source fenced at {fence.source_position}"
            )
        fence = record.results["fence"]
        assert fence.source_position is not None
        if step is S.FINAL_SYNC:
            synced = await self._need(
                record,
                "final_sync",
                RunMigrationFinalSync,
                record.target_node,
                source_final=fence.source_position,
            )
            if not isinstance(synced, MigrationStepResult):
                return synced
            return self._next_step(
                record, S.VERIFY_POSITIONS, f"target replayed {synced.target_position}"
            )
        if step is S.VERIFY_POSITIONS:
            synced = record.results["final_sync"]
            opening = "point of no return"
            if record.steps.parity:
                checked = await self._need(record, "parity", RunMigrationParity, record.target_node)
                if not isinstance(checked, MigrationStepResult):
                    return checked
                problem = self._parity_problem(record, checked)
                if problem is not None:
                    return Update({"failing": problem})
                compared = checked.facts.get("summary")
                if compared:  # what parity compared, kept in the history the status shows
                    opening = f"parity held ({compared}"[:440] + "); point of no return"
            elif (
                synced.target_position is None or not synced.target_position > fence.source_position
            ):
                return Update(
                    {
                        "failing": Failure(
                            reason=f"the target replayed {synced.target_position}, not past the "
                            f"source's final position {fence.source_position}",
                            code=CODE_PARITY,
                        )
                    }
                )
            # Recorded before the promote is sent: from here the source is never unfenced.
            return Update(
                {
                    "point_of_no_return_passed": True,
                    "step": S.OPEN_TARGET,
                    "visits": self._visit(
                        record, f"{opening}: opening the target", step=S.OPEN_TARGET
                    ),
                }
            )
        promoted = await self._need(
            record,
            "promote",
            RunMigrationPromote,
            record.target_node,
            source_final=fence.source_position,
        )
        if not isinstance(promoted, MigrationStepResult):
            return promoted
        return await self._done(record, {})

    def _parity_problem(
        self, record: MigrationRecord, checked: MigrationStepResult
    ) -> Failure | None:
        """Parity of the fenced source and the target, before the target is opened: a
        difference stops the cutover with the source unfenced (nothing lost)."""
        ddl = self._schema_changed(record, checked)
        if ddl is not None:
            return ddl
        if not checked.differences:
            return None
        total = max(int(checked.facts.get("differences", "0") or 0), len(checked.differences))
        shown = "; ".join(checked.differences[:8])
        tail = f"; and {total - 8} more" if total > 8 else ""
        return Failure(
            reason=f"parity: the target differs from the fenced source: {shown}{tail}"[:2000],
            code=CODE_PARITY,
        )

    def _next_step(self, record: MigrationRecord, step: CutoverStep, message: str) -> Outcome:
        return Update({"step": step, "visits": self._visit(record, message, step=step)})

    async def _drain(self, record: MigrationRecord) -> Outcome:
        participants = record.request.participants
        now = self.now()
        if participants:
            if record.drain_deadline is None:
                deadline = now + timedelta(seconds=record.request.ack_timeout_s)
                await self._send(
                    record,
                    CutoverStarting(
                        migration_id=record.migration_id,
                        target=record.target,
                        participants=participants,
                        ack_deadline=deadline,
                        window=self._next_window(record, now),
                    ),
                    f"cutover_starting.{len(record.visits)}",
                )
                return Update({"drain_deadline": deadline, "acks": {}})
            refused = sorted(p for p, ready in record.acks.items() if not ready)
            missing = sorted(set(participants) - set(record.acks))
            if refused or now >= record.drain_deadline:
                why = (
                    f"{', '.join(refused)} refused to drain"
                    if refused
                    else f"no acknowledgement from {', '.join(missing)} before the deadline"
                )
                return self._abandon(record, why)
            if missing:
                return Wait(
                    f"waiting for {', '.join(missing)} to drain", until=record.drain_deadline
                )
        windows = self._windows(record)
        if windows and not check_windows(windows, now).open:
            return self._abandon(record, "its window closed during the drain")
        if not record.source_locked:
            try:
                await take_lock(
                    self.ctx.plans, record.source.uid, self._lock(record, record.source_node)
                )
            except Refused as busy:
                return Wait(f"the source is busy: {busy.refusal.reason}"[:500])
        return Update(
            {
                "source_locked": True,
                "step": S.FENCE_SOURCE,
                "visits": self._visit(record, "fencing the source", step=S.FENCE_SOURCE),
            }
        )

    def _abandon(self, record: MigrationRecord, why: str) -> Outcome:
        """Give the cutover up before the fence: back to `ready`, nothing fenced. A cutover
        command must be given again (windows start the next one by themselves)."""
        log.info("migration %s: cutover abandoned: %s", record.migration_id, why)
        return Move(
            P.READY,
            {
                "step": None,
                "drain_deadline": None,
                "acks": {},
                "cutover_requested": False,
                "visits": self._visit(
                    record, f"cutover abandoned, nothing fenced: {why}", phase=P.READY
                ),
            },
        )

    async def _verifying(self, record: MigrationRecord) -> Outcome:
        if record.steps.parity:
            return await self._done(record, {})  # compared before the target was opened
        source = record.results["preflight_source"]
        promoted = record.results["promote"]
        fence = record.results["fence"]
        problems = []
        want = source.facts.get("system_identifier")
        got = promoted.facts.get("system_identifier")
        if want and got and want != got:
            problems.append(f"the target is system {got}, the source was {want}")
        if (
            promoted.target_position is None
            or fence.source_position is None
            or not promoted.target_position > fence.source_position
        ):
            problems.append(
                f"the target was opened at {promoted.target_position}, not past the source's "
                f"final {fence.source_position}"
            )
        if record.steps.roles:
            problems += _role_problems(promoted.facts)
        if problems:
            return Update(
                {"failing": Failure(reason="parity: " + "; ".join(problems), code=CODE_PARITY)}
            )
        return await self._done(record, {})

    # -- abort, failure, rollback --------------------------------------------------------------

    async def _stopping(self, record: MigrationRecord) -> Outcome:
        """Abort, or fail, leaving the source as it was when that is still possible."""
        end = P.ABORTED if record.failing is None else P.FAILED
        if record.point_of_no_return_passed:
            if record.request.method in ROLLBACK_AFTER_CUTOVER and not record.failure_held:
                # The target may be open: keep the way back. Rollback turns back; resume
                # accepts the failure (the saga ends failed, the target as it is).
                assert record.failing is not None
                reason = (
                    f"failed after the point of no return ({record.failing.reason}); "
                    "`rollback` returns to the old source, `resume` ends the migration failed"
                )
                held = record.model_copy(
                    update={
                        "paused": True,
                        "failure_held": True,
                        "visits": self._visit(record, reason[:500]),
                    }
                )
                await self._announce_phase(held)
                return Update(
                    {
                        "paused": True,
                        "failure_held": True,
                        "visits": held.visits,
                        "announced": f"{record.phase}/{record.step}/True",
                    }
                )
            return Move(P.FAILED, {"step": record.step})
        for key, job_id in record.pending.items():
            if key != "unfence" and job_id not in record.cancelled:
                await self.ctx.send(
                    CancelJob(job_id=job_id, reason=record.abort_reason or "migration failing"),
                    record.source,
                    message_id=step_id(job_id, "cancel"),
                    correlation_id=record.correlation_id,
                    node=record.source_node if key == "fence" else record.target_node,
                )
                return Update({"cancelled": [*record.cancelled, job_id]})
        if any(k != "unfence" for k in record.pending):
            return Idle()  # its end (cancelled or not) comes as a job event
        if record.touched():
            undone = await self._need(record, "unfence", RunMigrationUnfence, record.source_node)
            if not isinstance(undone, MigrationStepResult):
                return undone
        return Move(end, {"visits": self._visit(record, "source serving", phase=end)})

    async def _rolling_back(self, record: MigrationRecord) -> Outcome:
        if any(k != "rewind" for k in record.pending):
            return Idle()
        back = await self._need(record, "rewind", RunMigrationRewind, record.source_node)
        if not isinstance(back, MigrationStepResult):
            return back
        return Move(
            P.ROLLED_BACK,
            {"visits": self._visit(record, "the old source is primary", phase=P.ROLLED_BACK)},
        )

    # -- running a step on an executor ---------------------------------------------------------

    async def _need(
        self,
        record: MigrationRecord,
        key: str,
        command: type[Any],
        node: str,
        **fields: Any,
    ) -> MigrationStepResult | Outcome:
        """The step's result if it has one; else send it (once per attempt) and wait."""
        if key in record.results:
            return record.results[key]
        if key in record.pending:
            return Idle()
        attempt = record.attempts.get(key, 0)
        job_id = step_ref(record.migration_id, key, attempt)
        await self.ctx.sagas.bind_job(record.ref, job_id)
        request = record.request
        await self.ctx.send(
            command(
                migration_id=record.migration_id,
                target=record.target,
                job_id=job_id,
                source=record.source.uid,
                method=request.method,
                target_instance=request.target_instance,
                options=request.options,
                **fields,
            ),
            record.source,
            message_id=job_id,
            correlation_id=record.correlation_id,
            causation_id=record.command_id,
            node=node,
        )
        return Update({"pending": {**record.pending, key: job_id}})

    async def on_job(self, event: Envelope[Any], migration_id: uuid.UUID) -> None:
        """A job event of one of this migration's steps."""
        data = event.data

        async def attempt() -> bool:
            current = await self.load(migration_id)
            if current is None:
                return False
            record, revision = current.value, current.revision
            key = next((k for k, j in record.pending.items() if j == data.job_id), None)
            if key is None or record.final:
                return False
            if isinstance(data, JobProgress):
                await self._job_progress(record, data)
                return False
            pending = {k: v for k, v in record.pending.items() if k != key}
            attempts = {**record.attempts, key: record.attempts.get(key, 0) + 1}
            changes: dict[str, Any] = {"pending": pending, "attempts": attempts}
            if isinstance(data, JobSucceeded):
                assert isinstance(data.result, MigrationStepResult)
                changes["results"] = {**record.results, key: data.result}
            elif isinstance(data, JobFailed):
                changes.update(self._after_failure(record, key, data, attempts[key]))
            else:
                return False
            updated = record.model_copy(update={**changes, "updated_at": self.now()})
            await self.ctx.plans.update(migration_key(migration_id), updated, last=revision)
            return True

        if await until_written(attempt, f"migration {migration_id}"):
            await self.advance(migration_id)

    def _after_failure(
        self, record: MigrationRecord, key: str, data: JobFailed, attempts: int
    ) -> dict[str, Any]:
        """A step's job failed: run it again (a new attempt) while that can help; else stop
        the migration (`_stopping` leaves the source serving where it still can)."""
        failure = data.failure
        if data.job_id in record.cancelled:
            return {}  # cancelled by an abort or a failure already being handled
        if (failure.retryable or data.interrupted) and attempts < STEP_ATTEMPTS:
            log.info("migration %s: step %s again: %s", record.migration_id, key, failure.reason)
            return {}
        log.warning("migration %s: step %s failed: %s", record.migration_id, key, failure.reason)
        code = failure.code or CODE_STEP
        if key == "unfence":
            # The way back itself failed: say the source does not serve, and end there.
            return {
                "unfence_failed": True,
                "results": {**record.results, "unfence": MigrationStepResult(step="unfence")},
                "failing": Failure(
                    reason=f"the source could not be unfenced: {failure.reason}"[:2000], code=code
                ),
            }
        changes: dict[str, Any] = {"refused": key.startswith("preflight")}
        if record.failing is None:
            changes["failing"] = Failure(
                reason=f"step {key} failed: {failure.reason}"[:2000], code=code
            )
        return changes

    async def _job_progress(self, record: MigrationRecord, data: JobProgress) -> None:
        if data.unit != "bytes" or data.done is None:
            return
        progress = record.progress.model_copy(
            update={"bytes_copied": data.done, "bytes_total": data.total}
        )
        await self._progress(record, progress, data.message or data.phase, event_id=data.job_id)

    # -- control commands ----------------------------------------------------------------------

    async def _control(self, command: Envelope[Any], verb: str) -> Versioned[MigrationRecord]:
        source = require_database(command)
        current = await self.load(command.data.migration_id)
        if (
            current is None
            or current.value.source.uid != source.uid
            or current.value.target != command.data.target
        ):
            raise Refused(
                Refusal(
                    f"no migration {command.data.migration_id} of {source.uid} onto "
                    f"{command.data.target}",
                    NOT_FOUND,
                )
            )
        if current.value.final:
            raise Refused(
                Refusal(
                    f"migration {command.data.migration_id} already {current.value.phase}; "
                    f"it cannot {verb}",
                    FINISHED,
                )
            )
        return current

    async def control(self, command: Envelope[Any]) -> None:
        data = command.data
        verbs: dict[type[Any], str] = {
            PauseMigration: "be paused",
            ResumeMigration: "be resumed",
            CutoverMigration: "cut over",
            AbortMigration: "be aborted",
            RollbackMigration: "be rolled back",
            AcknowledgeCutover: "take an acknowledgement",
        }
        message = ""

        async def attempt() -> str:
            current = await self._control(command, verbs[type(data)])
            record, revision = current.value, current.revision
            changes, said = decide(record, data, lambda message: self._visit(record, message))
            updated = record.model_copy(update={**changes, "updated_at": self.now()})
            await self.ctx.plans.update(migration_key(record.migration_id), updated, last=revision)
            return said

        message = await until_written(attempt, f"migration {data.migration_id}")
        await self.ctx.accept(command, str(data.migration_id), message)
        current = await self.load(data.migration_id)
        if current is not None and current.value.paused:
            await self._announce_phase(current.value)  # a paused saga takes no step to say so
        await self.advance(data.migration_id)

    # -- ending --------------------------------------------------------------------------------

    async def fail(self, record: MigrationRecord, revision: int, refusal: Refusal) -> None:
        """A step refused. In `validating` nothing was changed: the request is rejected. Later,
        the migration stops the way `_stopping` does (the source left serving if it can be)."""
        if record.phase is P.VALIDATING and not record.touched():
            failure = Failure(reason=refusal.reason[:2000], code=refusal.code)
            with contextlib.suppress(Exception):
                await self.ctx.sagas.write(
                    self, record, revision, P.FAILED, failure=failure, refused=True
                )
            return
        updated = record.model_copy(
            update={
                "failing": Failure(reason=refusal.reason[:2000], code=refusal.code),
                "updated_at": self.now(),
            }
        )
        await self.ctx.plans.update(migration_key(record.migration_id), updated, last=revision)

    async def announce(self, record: MigrationRecord) -> None:
        """What a finished migration owes the world, again under the same ids; recorded once
        said, so the clock (`tick`) says it again for a planner that died halfway."""
        await release_lock(self.ctx.plans, record.target, self._lock_id(record))
        await release_lock(self.ctx.plans, record.source.uid, self._lock_id(record))
        claim = await self.ctx.plans.get(source_claim_key(record.source.uid), SagaRef)
        if claim is not None and claim.value == record.ref:
            await self.ctx.plans.delete(source_claim_key(record.source.uid), last=claim.revision)
        await self._announce_phase(record)
        failure = record.failure or record.failing
        if record.phase is P.FAILED:
            failure = failure or Failure(reason="failed", code=CODE_STEP)
            if record.refused or not record.accepted:
                await self.ctx.reject(
                    record.command_id,
                    RequestMigration.TYPE,
                    record.source,
                    Refusal(failure.reason, failure.code or CODE_PREFLIGHT),
                    correlation_id=record.correlation_id,
                )
            await self._send(
                record,
                MigrationFailed(
                    migration_id=record.migration_id,
                    target=record.target,
                    phase=self._failed_in(record),
                    step=record.step,
                    point_of_no_return_passed=record.point_of_no_return_passed,
                    source_serving=self._source_serving(record),
                    failure=failure,
                ),
                "failed",
            )
        elif record.phase is P.COMPLETED:
            await self._send(record, self._completed(record), "completed")
        elif record.phase is P.ROLLED_BACK:
            back = record.results["rewind"]
            assert back.source_position is not None
            assert back.endpoint is not None
            await self._send(
                record,
                MigrationRolledBack(
                    migration_id=record.migration_id,
                    target=record.target,
                    source_position=back.source_position,
                    target_following=back.facts.get("target_following") == "true",
                    endpoint=back.endpoint,
                ),
                "rolled_back",
            )
        if not record.final_announced:
            current = await self.load(record.migration_id)
            if current is not None and not current.value.final_announced:
                done = current.value.model_copy(update={"final_announced": True})
                with contextlib.suppress(Conflict):  # another replica recorded it first
                    await self.ctx.plans.update(
                        migration_key(record.migration_id), done, last=current.revision
                    )

    def _failed_in(self, record: MigrationRecord) -> MigrationPhase:
        before = [v.phase for v in record.visits if v.phase is not P.FAILED]
        return before[-1] if before else P.VALIDATING

    def _source_serving(self, record: MigrationRecord) -> bool:
        if record.point_of_no_return_passed or record.unfence_failed:
            return False
        return "fence" not in record.results or "unfence" in record.results

    def _completed(self, record: MigrationRecord) -> MigrationCompleted:
        fence, promoted = record.results["fence"], record.results["promote"]
        assert fence.at is not None
        assert promoted.at is not None
        assert fence.source_position is not None
        assert promoted.target_position is not None
        assert promoted.endpoint is not None
        return MigrationCompleted(
            migration_id=record.migration_id,
            target=record.target,
            method=record.request.method,
            downtime_s=max(0.0, (promoted.at - fence.at).total_seconds()),
            fenced_at=fence.at,
            target_writable_at=promoted.at,
            source_final=fence.source_position,
            target_final=promoted.target_position,
            endpoint=promoted.endpoint,
        )

    # -- telling the world ---------------------------------------------------------------------

    async def _send(self, record: MigrationRecord, data: Payload, what: str) -> None:
        await self.ctx.send(
            data,
            record.source,
            message_id=step_id(record.migration_id, what),
            correlation_id=record.correlation_id,
            causation_id=record.command_id,
        )

    async def _announce_phase(self, record: MigrationRecord) -> None:
        last = record.visits[-1].message if record.visits else ""
        await self._send(
            record,
            MigrationPhaseChanged(
                migration_id=record.migration_id,
                target=record.target,
                phase=record.phase,
                step=record.step,
                paused=record.paused,
                point_of_no_return_passed=record.point_of_no_return_passed,
                progress=record.progress,
                message=(record.waiting.reason if record.waiting else last)[:500],
            ),
            f"phase.{record.phase}.{record.step}.{record.paused}.{len(record.visits)}",
        )

    async def _progress(
        self,
        record: MigrationRecord,
        progress: MigrationProgress,
        message: str,
        *,
        event_id: uuid.UUID | None = None,
    ) -> None:
        """A progress report (not kept as an id of its own: each is a new fact)."""
        await self.ctx.send(
            MigrationPhaseChanged(
                migration_id=record.migration_id,
                target=record.target,
                phase=record.phase,
                step=record.step,
                paused=record.paused,
                point_of_no_return_passed=record.point_of_no_return_passed,
                progress=progress,
                message=message[:500],
            ),
            record.source,
            message_id=uuid7(),
            correlation_id=record.correlation_id,
            causation_id=event_id or record.command_id,
        )

    # -- the status query and the clock --------------------------------------------------------

    async def views(self, asked: MigrationStatusRequest) -> list[MigrationView]:
        found = []
        for key in await self.ctx.plans.keys(self.prefix):
            with contextlib.suppress(ValueError):
                uuid.UUID(key.removeprefix(self.prefix))
                current = await self.ctx.plans.get(key, MigrationRecord)
                if current is None:
                    continue
                record = current.value
                if asked.migration_id is not None and record.migration_id != asked.migration_id:
                    continue
                if asked.source is not None and record.source.uid != asked.source:
                    continue
                if asked.target is not None and record.target != asked.target:
                    continue
                if record.final and not asked.include_finished:
                    continue
                found.append(self.view(record))
        return sorted(found, key=lambda v: v.requested_at)

    def view(self, record: MigrationRecord) -> MigrationView:
        lag_s = record.progress.lag_seconds
        estimate = None if lag_s is None or record.final else lag_s + CUTOVER_OVERHEAD_S
        if record.phase is P.COMPLETED:
            estimate = self._completed(record).downtime_s
        waiting = record.waiting.reason if record.waiting else None
        if record.paused and record.failure_held and record.visits:
            waiting = record.visits[-1].message
        elif record.paused:
            waiting = f"paused after {record.paused_for or record.phase} (resume to go on)"
        elif record.pending and waiting is None:
            waiting = "step " + ", ".join(sorted(record.pending)) + " running"
        return MigrationView(
            migration_id=record.migration_id,
            source=record.source.uid,
            target=record.target,
            method=record.request.method,
            phase=record.phase,
            step=record.step,
            paused=record.paused,
            waiting=waiting[:500] if waiting else None,
            point_of_no_return_passed=record.point_of_no_return_passed,
            progress=record.progress,
            downtime_estimate_s=estimate,
            downtime_budget_s=record.request.downtime_budget_s,
            windows=record.request.windows,
            history=record.visits,
            requested_at=record.created_at,
            updated_at=record.updated_at,
        )

    async def tick(self) -> int:
        """Advance every migration whose wait may be over (a lag sample due, a window open, a
        drain deadline passed). Returns how many were advanced."""
        now = self.now()
        moved = 0
        for key in await self.ctx.plans.keys(self.prefix):
            try:
                migration_id = uuid.UUID(key.removeprefix(self.prefix))
            except ValueError:
                continue
            if migration_id in self._finished:
                continue
            current = await self.ctx.plans.get(key, MigrationRecord)
            if current is None:
                continue
            record = current.value
            if record.final:
                if not record.final_announced:
                    # A planner killed between the end and its events: say them now (same ids).
                    await self.announce(record)
                else:
                    self._finished.add(migration_id)
                continue
            if record.paused or record.pending:
                continue
            waiting = record.waiting
            if waiting is not None and waiting.until is not None and waiting.until > now:
                continue
            try:
                await self.advance(migration_id)
                moved += 1
            except Exception as exc:  # one stuck migration must not stop the others' clock
                log.warning("migration %s: advancing failed (retried next tick): %s", key, exc)
        return moved
