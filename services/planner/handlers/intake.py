"""Intake: the planner's durable consumer on `tm.cmd.planner.any.>`.

    policy.set       policy.<uid> written (CAS), policy.changed   accepted, ref = revision
    backup.request   lock taken, backup.run to the node,          accepted, ref = backup id
                     backup.requested
    restore.request  the restore saga (restores.py)               accepted at dispatch,
                                                                  ref = restore id
    request.cancel   job.cancel to the node running it            accepted, ref = target id
    migration.request  the migration saga (migrations.py)         accepted once the preflight
                                                                  passed, ref = migration id
    migration.pause|resume|cutover|abort|rollback|cutover_ack     accepted, ref = migration id
    migration.program.request  the program (programs.py)          migration.program.accepted
                                                                  or .rejected (it names no
                                                                  database: not request.*)

Ack policy: a command is acked once its effect is durable in KV/JetStream and it has been
answered. A refusal (`Refused`) is an answer — `request.rejected` with the reason (and, for a
target outside the window, the nearest restorable points) — and the command is acked: nothing
was changed, retrying would refuse again. A catalog that does not answer is a `RetryableError`
(nak with backoff). A command without `envelope.database` cannot be answered and is terminal
(dead-lettered). Contract violations never reach a handler: the consumer dead-letters them.
"""

from __future__ import annotations

import logging
from typing import Any

from schemas import Envelope
from schemas.messages import (
    AbortMigration,
    AcknowledgeCutover,
    CancelJob,
    CancelRequest,
    CutoverMigration,
    PauseMigration,
    RequestBackup,
    RequestMigration,
    RequestMigrationProgram,
    RequestRestore,
    ResumeMigration,
    RollbackMigration,
    SetPolicy,
)
from services.bus import Delivery, Handler
from services.planner.backups import Backups
from services.planner.context import PlannerContext, require_database
from services.planner.errors import NOT_FOUND, Refusal, Refused
from services.planner.feasibility import refuse_what_the_engine_cannot
from services.planner.keys import step_id
from services.planner.locks import held_lock
from services.planner.migrations import Migrations
from services.planner.policies import Policies
from services.planner.programs import Programs
from services.planner.restores import Restores

log = logging.getLogger("tidemark.planner")

INTAKE_SUBJECT = "tm.cmd.planner.any.>"
INTAKE_DURABLE = "planner-intake"


class Intake:
    def __init__(
        self,
        ctx: PlannerContext,
        policies: Policies,
        backups: Backups,
        restores: Restores,
        migrations: Migrations,
        programs: Programs,
    ) -> None:
        self.ctx = ctx
        self.policies = policies
        self.backups = backups
        self.restores = restores
        self.migrations = migrations
        self.programs = programs

    def handlers(self) -> dict[Any, Handler]:
        return {
            SetPolicy: self._answering(self.on_set_policy),
            RequestBackup: self._answering(self.on_backup),
            RequestRestore: self._answering(self.on_restore),
            CancelRequest: self._answering(self.on_cancel),
            RequestMigration: self._answering(self.migrations.request),
            **{
                control: self._answering(self.migrations.control)
                for control in (
                    PauseMigration,
                    ResumeMigration,
                    CutoverMigration,
                    AbortMigration,
                    RollbackMigration,
                    AcknowledgeCutover,
                )
            },
            RequestMigrationProgram: self.on_program,
        }

    def _answering(self, handle: Any) -> Handler:
        """Wrap a handler so a refusal becomes `request.rejected` and the command is acked."""

        async def handler(message: Envelope[Any], delivery: Delivery) -> None:
            database = require_database(message)
            try:
                refuse_what_the_engine_cannot(message, database)
                await handle(message)
            except Refused as refused:
                await self.ctx.reject(
                    message.id,
                    message.type,
                    database,
                    refused.refusal,
                    correlation_id=message.correlation_id,
                )

        return handler

    async def on_program(
        self, message: Envelope[RequestMigrationProgram], delivery: Delivery
    ) -> None:
        # Not `_answering`: a program names no database (no `request.*` subject to answer
        # on); it answers with its own events, refusals included.
        await self.programs.request(message)

    async def on_set_policy(self, message: Envelope[SetPolicy]) -> None:
        await self.policies.set(message)

    async def on_backup(self, message: Envelope[RequestBackup]) -> None:
        await self.backups.request(message)

    async def on_restore(self, message: Envelope[RequestRestore]) -> None:
        # The saga answers by itself: accepted at dispatch, rejected when refused.
        await self.restores.request(message)

    async def on_cancel(self, message: Envelope[CancelRequest]) -> None:
        database = require_database(message)
        if await self.restores.cancel(message, database):
            return
        target = message.data.target_id
        held = await held_lock(self.ctx.plans, database.uid)
        if held is not None and held.value.job_id == target:
            await self.ctx.send(
                CancelJob(job_id=target, reason=message.data.reason),
                database,
                message_id=step_id(message.id, "cancel"),
                correlation_id=message.correlation_id,
                causation_id=message.id,
                node=held.value.node,
            )
            await self.ctx.accept(
                message,
                str(target),
                f"cancelling {held.value.kind} job {target} on {held.value.node}",
            )
            return
        raise Refused(
            Refusal(
                f"nothing with id {target} is running on {database.uid}: no restore has that id "
                "and the database's running job (if any) is another",
                NOT_FOUND,
            )
        )
