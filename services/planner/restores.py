"""The restore saga: checking → planning → dispatched → running → completed | failed.

A saga kind on the generic machinery (`sagas/`): this module is the restore's steps, its phase
table is `phases.py`, and the driver (`sagas/driver.py`) moves the record, kept in
`restore.<restore_id>` and written with compare-and-set: a step that loses the race re-reads
and continues from whatever the winner wrote. Every message a step publishes has an id derived
from the restore id, so doing a step twice publishes nothing twice.

**Resuming after a restart.** Two things carry a restore across a planner restart:

- the `restore.request` command is acked only once the saga is dispatched (or refused), so a
  planner that dies in `checking` or `planning` gets the command again and `advance` picks up
  from the recorded phase; on start, the driver's `resume_all` also advances every non-final
  record, which covers a command that was dead-lettered or whose record was left half-sent;
- after dispatch the saga waits for events (`job.*`, `restore.completed`). Those are read by
  the planner's durable consumer on TM_EVT, whose position the server keeps: events published
  while no planner ran are delivered to the next one. Nothing is re-derived from the executor,
  so there is no second source of truth to reconcile.
"""

from __future__ import annotations

import contextlib
import logging
import uuid
from typing import Any

from schemas import DatabaseRef, Envelope, Lineage, Position, lineage_from_key
from schemas.catalog import CheckReply, RestorePlanReply
from schemas.messages import (
    CancelJob,
    CancelRequest,
    JobAccepted,
    JobFailed,
    JobProgress,
    JobSucceeded,
    RequestAccepted,
    RequestRestore,
    RestoreCompleted,
    RestoreFailed,
    RestoreMode,
    RestorePlan,
    RestoreProgress,
    RestoreRequested,
    RestoreResult,
    RunRestore,
)
from schemas.messages.common import Failure
from services.bus import RetryableError
from services.catalog.client import CatalogError
from services.planner.context import PlannerContext, require_database
from services.planner.errors import FINISHED, NOT_RESTORABLE, UNKNOWN_DB, Refusal, Refused
from services.planner.keys import restore_key, step_id
from services.planner.locks import release_lock, take_lock
from services.planner.phases import RestorePhase, RestoreRecord
from services.planner.records import Lock
from services.planner.sagas import Idle, Move, Outcome, SagaRef, Update, until_written
from services.planner.store import Conflict, Versioned
from services.runtime.phases import IllegalTransition

log = logging.getLogger("tidemark.planner")


def restore_id_for(command_id: uuid.UUID) -> uuid.UUID:
    return step_id(command_id, "restore")


def job_id_for(restore_id: uuid.UUID) -> uuid.UUID:
    return step_id(restore_id, "job")


def lineage_of(key: str, branch_at: Position | None = None) -> Lineage:
    """The contract's `Lineage` for the catalog's lineage key; an Oracle incarnation's
    RESETLOGS SCN is where it branched (the catalog's `LineageView.branch_at`)."""
    try:
        return lineage_from_key(key, branch_at=branch_at)
    except ValueError as exc:
        raise Refused(Refusal(f"the catalog's lineage: {exc}", NOT_RESTORABLE)) from None


def plan_from(reply: RestorePlanReply, branch_at: Position | None = None) -> RestorePlan:
    """The catalog's RestorePlanReply as the executor's RestorePlan: the base's manifest, every
    log object in order, and the lineage, typed. The target travels beside it in `restore.run`;
    the engine alone writes it in its own words."""
    if reply.base.manifest_key is None:
        raise Refused(
            Refusal(
                f"backup {reply.base.backup_id} has no manifest key in the catalog; "
                "it cannot be a restore base",
                NOT_RESTORABLE,
            )
        )
    return RestorePlan(
        base_backup_id=reply.base.backup_id,
        base_manifest_key=reply.base.manifest_key,
        log_keys=[o.key for o in reply.objects],
        lineage=lineage_of(reply.lineage, branch_at),
    )


class Restores:
    """The restore saga kind: registered with the planner's saga driver."""

    kind = RestoreRecord.KIND
    record = RestoreRecord
    prefix = "restore."

    def __init__(self, ctx: PlannerContext) -> None:
        self.ctx = ctx

    def key(self, saga_id: uuid.UUID) -> str:
        return restore_key(saga_id)

    @staticmethod
    def ref(restore_id: uuid.UUID) -> SagaRef:
        return SagaRef(kind=RestoreRecord.KIND, id=restore_id)

    # -- intake --------------------------------------------------------------------------

    async def request(self, command: Envelope[RequestRestore]) -> None:
        """Start (or, on redelivery, continue) the saga of a `restore.request`."""
        database = require_database(command)
        restore_id = restore_id_for(command.id)
        now = self.ctx.clock.now()
        record = RestoreRecord(
            restore_id=restore_id,
            command_id=command.id,
            correlation_id=command.correlation_id,
            database=database,
            databases=[database.uid],
            request=command.data,
            phase=RestorePhase.CHECKING,
            created_at=now,
            updated_at=now,
        )
        # Exists already on a redelivery or a resumed saga: continue from the recorded phase.
        with contextlib.suppress(Conflict):
            await self.ctx.plans.create(restore_key(restore_id), record)
        await self.advance(restore_id)

    async def load(self, restore_id: uuid.UUID) -> Versioned[RestoreRecord] | None:
        return await self.ctx.plans.get(restore_key(restore_id), RestoreRecord)

    async def advance(self, restore_id: uuid.UUID) -> RestoreRecord | None:
        """Run the saga's next steps until it waits for an event or ends."""
        record: RestoreRecord | None = await self.ctx.sagas.advance(self.ref(restore_id))
        return record

    async def step(self, record: RestoreRecord, revision: int) -> Outcome:
        """The restore's steps, by phase (the driver writes what they decide)."""
        if record.phase is RestorePhase.CHECKING:
            await self._check(record)
            return Move(RestorePhase.PLANNING)
        if record.phase is RestorePhase.PLANNING:
            return Move(RestorePhase.DISPATCHED, await self._plan(record))
        if record.phase is RestorePhase.DISPATCHED and not record.sent:
            await self._dispatch(record)
            return Update({"sent": True})
        return Idle()  # waiting for the executor's events

    async def _check(self, record: RestoreRecord) -> None:
        uid = record.database.uid
        await self.ctx.require_known(uid)
        try:
            reply = await self.ctx.catalog.check(
                uid, record.request.target, _lineage_key(record.request)
            )
        except CatalogError as exc:
            if exc.status == 404:
                raise Refused(
                    Refusal(f"the catalog knows nothing of {uid!r}: {exc.error}", UNKNOWN_DB)
                ) from None
            raise RetryableError(f"catalog check of {uid} failed: {exc.error}") from exc
        if not reply.restorable:
            raise Refused(_not_restorable(reply))

    async def _plan(self, record: RestoreRecord) -> dict[str, Any]:
        """The plan, the node and the lock: what the move to `dispatched` records. If that move
        loses its race to a cancel, the driver finds the record failed and `announce` frees the
        lock taken here."""
        uid = record.database.uid
        request = record.request
        try:
            reply = await self.ctx.catalog.restore_plan(uid, request.target, _lineage_key(request))
        except CatalogError as exc:
            if exc.status == 409 and exc.body is not None and exc.body.check is not None:
                raise Refused(_not_restorable(exc.body.check)) from None
            if exc.status in (400, 404, 409):
                raise Refused(Refusal(exc.error, NOT_RESTORABLE)) from None
            raise RetryableError(f"catalog restore plan of {uid} failed: {exc.error}") from exc
        branch_at = None
        if reply.lineage.startswith("inc-"):
            windows = await self.ctx.catalog.windows(uid)
            view = next((v for v in windows.lineages if v.key == reply.lineage), None)
            branch_at = view.branch_at if view else None
        plan = plan_from(reply, branch_at)
        clone_node = request.clone.node if request.clone else None
        node = await self.ctx.route(uid, clone_node)
        job_id = job_id_for(record.restore_id)
        ref = record.ref
        await self.ctx.sagas.bind_job(ref, job_id)
        await take_lock(
            self.ctx.plans,
            uid,
            Lock(
                kind=RestoreRecord.KIND,
                holder=ref,
                job_id=job_id,
                node=node,
                restore_id=record.restore_id,
                command_id=record.command_id,
                taken_at=self.ctx.clock.now(),
            ),
        )
        return {"node": node, "job_id": job_id, "plan": plan, "jobs": {"restore": job_id}}

    async def _dispatch(self, record: RestoreRecord) -> None:
        """Publish restore.run, restore.requested and request.accepted (the driver then marks
        them sent). A crash between the two re-publishes under the same ids: JetStream keeps
        one copy, and the executor dedupes by job id beyond the duplicate window."""
        assert record.plan is not None
        assert record.job_id is not None
        assert record.node
        request = record.request
        db = record.database
        cause = record.command_id
        await self.ctx.send(
            RunRestore(
                job_id=record.job_id,
                restore_id=record.restore_id,
                target=request.target,
                mode=request.mode,
                clone=request.clone,
                plan=record.plan,
            ),
            db,
            message_id=step_id(record.restore_id, "run"),
            correlation_id=record.correlation_id,
            causation_id=cause,
            node=record.node,
        )
        await self.ctx.send(
            RestoreRequested(
                restore_id=record.restore_id,
                target=request.target,
                mode=request.mode,
                clone=request.clone,
                reason=request.reason,
            ),
            db,
            message_id=step_id(record.restore_id, "requested"),
            correlation_id=record.correlation_id,
            causation_id=cause,
        )
        await self._accept(record)
        log.info("restore %s of %s dispatched to %s", record.restore_id, db.uid, record.node)

    async def _accept(self, record: RestoreRecord) -> None:
        plan = record.plan
        where = "into a clone" if record.request.mode is RestoreMode.CLONE else "in place"
        message = (
            f"restore {record.restore_id} {where} on {record.node} (job {record.job_id}) from "
            f"backup {plan.base_backup_id if plan else '?'} with "
            f"{len(plan.log_keys) if plan else 0} logs"
        )
        await self.ctx.send(
            RequestAccepted(
                command_id=record.command_id,
                command_type=RequestRestore.TYPE,
                ref_id=str(record.restore_id),
                message=message[:500],
            ),
            record.database,
            message_id=step_id(record.command_id, "answer"),
            correlation_id=record.correlation_id,
            causation_id=record.command_id,
        )

    async def fail(self, record: RestoreRecord, revision: int, refusal: Refusal) -> None:
        """A step refused: before dispatch nothing changed, so the requester is told no."""
        await self._fail(record, revision, refusal, refused=True)

    async def announce(self, record: RestoreRecord) -> None:
        if record.phase is RestorePhase.FAILED:
            # Ours if it names our job: a lock taken by a step whose move lost to a cancel.
            await release_lock(self.ctx.plans, record.database.uid, job_id_for(record.restore_id))
        await self._announce_end(record)

    async def _fail(
        self,
        record: RestoreRecord,
        revision: int,
        refusal: Refusal,
        *,
        refused: bool,
        check: CheckReply | None = None,
    ) -> None:
        failure = Failure(reason=refusal.reason[:2000], code=refusal.code)
        try:
            failed = await self._write(
                record, revision, RestorePhase.FAILED, failure=failure, refused=refused
            )
        except IllegalTransition:
            return  # already final
        if record.job_id is not None:
            await release_lock(self.ctx.plans, record.database.uid, record.job_id)
        await self._announce_end(failed, refusal=refusal)

    async def _announce_end(self, record: RestoreRecord, refusal: Refusal | None = None) -> None:
        """Publish what a final record owes the world (again, under the same ids)."""
        if record.phase is not RestorePhase.FAILED or record.failure is None:
            return
        db = record.database
        if record.refused:
            await self.ctx.reject(
                record.command_id,
                RequestRestore.TYPE,
                db,
                refusal or Refusal(record.failure.reason, record.failure.code or NOT_RESTORABLE),
                correlation_id=record.correlation_id,
            )
        await self.ctx.send(
            RestoreFailed(restore_id=record.restore_id, failure=record.failure),
            db,
            message_id=step_id(record.restore_id, "failed"),
            correlation_id=record.correlation_id,
            causation_id=record.command_id,
        )

    async def _write(
        self, record: RestoreRecord, revision: int, to: RestorePhase, **changes: Any
    ) -> RestoreRecord:
        moved: RestoreRecord = await self.ctx.sagas.write(self, record, revision, to, **changes)
        return moved

    # -- events --------------------------------------------------------------------------

    async def on_job(self, event: Envelope[Any], restore_id: uuid.UUID) -> None:
        """A job event of the restore `restore_id` (found by the job's id)."""
        data = event.data

        async def attempt() -> None:
            current = await self.load(restore_id)
            if current is None:
                log.warning("job %s names restore %s, which has no record", data.job_id, restore_id)
                return
            record, revision = current.value, current.revision
            if isinstance(data, JobAccepted | JobProgress):
                await self._progress(record, revision, event)
            elif isinstance(data, JobSucceeded):
                await self._succeeded(record, revision, data)
            elif isinstance(data, JobFailed):
                await self._job_failed(record, revision, data)

        await until_written(attempt, f"restore {restore_id}")

    async def _progress(self, record: RestoreRecord, revision: int, event: Envelope[Any]) -> None:
        data = event.data
        if record.final:
            return
        percent = getattr(data, "percent", None)
        if record.phase is RestorePhase.DISPATCHED:
            await self._write(record, revision, RestorePhase.RUNNING, percent=percent)
        elif percent is not None:
            updated = record.model_copy(
                update={"percent": percent, "updated_at": self.ctx.clock.now()}
            )
            await self.ctx.plans.update(restore_key(record.restore_id), updated, last=revision)
        phase = data.phase if isinstance(data, JobProgress) else "running"
        message = data.message if isinstance(data, JobProgress) else f"accepted on {data.node}"
        await self.ctx.send(
            RestoreProgress(
                restore_id=record.restore_id, phase=phase, percent=percent, message=message
            ),
            record.database,
            message_id=step_id(event.id, "restore.progress"),
            correlation_id=record.correlation_id,
            causation_id=event.id,
        )

    async def _succeeded(self, record: RestoreRecord, revision: int, data: JobSucceeded) -> None:
        if not record.final:
            reached = data.result.reached if isinstance(data.result, RestoreResult) else None
            await self._write(
                record, revision, RestorePhase.COMPLETED, reached=reached, percent=100.0
            )
        elif record.phase is RestorePhase.FAILED:
            log.error("restore %s: job.succeeded after it was recorded failed", record.restore_id)
        assert record.job_id is not None
        await release_lock(self.ctx.plans, record.database.uid, record.job_id)

    async def _job_failed(self, record: RestoreRecord, revision: int, data: JobFailed) -> None:
        if record.final:
            if record.phase is RestorePhase.COMPLETED:
                log.error("restore %s: job.failed after it completed", record.restore_id)
        else:
            refusal = Refusal(data.failure.reason, data.failure.code or "TM-PLAN-JOB-FAILED")
            failure = data.failure
            failed = await self._write(
                record, revision, RestorePhase.FAILED, failure=failure, refused=False
            )
            await self._announce_end(failed, refusal=refusal)
        assert record.job_id is not None
        await release_lock(self.ctx.plans, record.database.uid, record.job_id)

    async def on_completed(self, event: Envelope[RestoreCompleted]) -> None:
        """The executor's `restore.completed`: record it, and finish the saga if the job's
        own `job.succeeded` has not done so yet."""
        data = event.data

        async def attempt() -> None:
            current = await self.load(data.restore_id)
            if current is None:
                return  # not one of ours (a restore run outside the planner)
            record, revision = current.value, current.revision
            if record.phase is RestorePhase.FAILED:
                log.error("restore %s: restore.completed after failure", data.restore_id)
                return
            if record.final:
                if record.completed is None:
                    updated = record.model_copy(update={"completed": data})
                    await self.ctx.plans.update(
                        restore_key(record.restore_id), updated, last=revision
                    )
            else:
                await self._write(
                    record,
                    revision,
                    RestorePhase.COMPLETED,
                    completed=data,
                    reached=data.reached,
                    percent=100.0,
                )
            if record.job_id is not None:
                await release_lock(self.ctx.plans, record.database.uid, record.job_id)

        await until_written(attempt, f"restore {data.restore_id}")

    # -- cancel and resume ---------------------------------------------------------------

    async def cancel(self, command: Envelope[CancelRequest], database: DatabaseRef) -> bool:
        """Cancel the restore `target_id` if it is one. False if it is not a restore."""
        current = await self.load(command.data.target_id)
        if current is None:
            return False
        record, revision = current.value, current.revision
        if record.final:
            raise Refused(
                Refusal(
                    f"restore {record.restore_id} already {record.phase.value}; nothing to cancel",
                    FINISHED,
                )
            )
        if record.phase in (RestorePhase.CHECKING, RestorePhase.PLANNING):
            # Nothing was dispatched: the saga ends here, and the requester is told so.
            await self._fail(
                record,
                revision,
                Refusal(f"cancelled before dispatch: {command.data.reason}", "TM-PLAN-CANCELLED"),
                refused=True,
            )
        else:
            assert record.node
            assert record.job_id
            await self.ctx.send(
                CancelJob(job_id=record.job_id, reason=command.data.reason),
                record.database,
                message_id=step_id(command.id, "cancel"),
                correlation_id=record.correlation_id,
                causation_id=command.id,
                node=record.node,
            )
        await self.ctx.accept(
            command, str(record.restore_id), f"cancelling restore {record.restore_id}"
        )
        return True

    async def resume(self) -> int:
        """Advance every non-final restore (after a restart). Returns how many were found."""
        return await self.ctx.sagas.resume_all()


def _lineage_key(request: RequestRestore) -> str | None:
    return request.lineage.key if request.lineage is not None else None


def _not_restorable(reply: CheckReply) -> Refusal:
    return Refusal(
        f"{reply.database} cannot be restored to that target ({reply.code}): {reply.reason}",
        NOT_RESTORABLE,
        check=reply,
    )
