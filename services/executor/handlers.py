"""The executor's consumers: jobs and cancels for this node, on two durables.

    executor-<node>          tm.cmd.executor.<node>.backup|restore|verify   → JobRunner.run
                             tm.cmd.executor.<node>.migration.<step>.>      → JobRunner.run
    executor-<node>-cancel   tm.cmd.executor.<node>.cancel                  → JobRunner.cancel

Cancels have their own consumer so a node whose job slots are all taken by long backups still
reads them at once. Nothing consumes `tm.cmd.executor.any.>`: every executor command acts on a
database, and only the node hosting it can run it, so the planner always names the node (from
the `tm_nodes` heartbeats).

Ack policy (the bus's table in `services/bus/consumer.py` applies):

| the command                                        | action                                   |
|----------------------------------------------------|------------------------------------------|
| job ran; outcome journaled and published           | ack                                      |
| job already finished (journal)                     | publish the recorded events again, ack   |
| job in hand already (same job id again)            | wait for its outcome, publish it, ack    |
| outcome journaled but not published (NATS down)    | RetryableError: nak; the redelivery      |
|                                                    | publishes the journaled events           |
| database not hosted here, no engine for it         | journal failed, job.failed, TerminalError |
| job id journaled for another operation / database  | TerminalError (dead letter)              |
| envelope names no database                         | TerminalError (dead letter)              |
| cancel for a job in hand                           | cancel its task, ack (its own delivery   |
|                                                    | reports job.failed TM-JOB-CANCELLED)     |
| cancel for an unknown or finished job              | log, ack                                 |

A long job's delivery stays alive through the consumer's `in_progress()` timer and every
progress report of the engine.
"""

from __future__ import annotations

import logging
from typing import Any

from schemas import Envelope, node_token
from schemas.messages import CancelJob
from services.bus import Delivery
from services.executor.jobs import JobRunner
from services.executor.operations import OPERATIONS
from services.runtime import ConsumerSpec

log = logging.getLogger("tidemark.executor")

JOB_ACTIONS = tuple(spec.action for spec in OPERATIONS)


def job_subjects(node: str) -> list[str]:
    """One filter per operation; a migration step's subject goes on with its databases."""
    token = node_token(node)
    return [
        f"tm.cmd.executor.{token}.{action}" + (".>" if "." in action else "")
        for action in JOB_ACTIONS
    ]


def cancel_subject(node: str) -> str:
    return f"tm.cmd.executor.{node_token(node)}.cancel"


def job_consumer(runner: JobRunner, node: str, queue_limit: int) -> ConsumerSpec:
    async def on_job(message: Envelope[Any], delivery: Delivery) -> None:
        await runner.run(message, delivery.in_progress)

    return ConsumerSpec(
        stream="TM_CMD",
        durable=f"executor-{node_token(node)}",
        filter_subjects=job_subjects(node),
        handlers=dict.fromkeys((spec.command for spec in OPERATIONS), on_job),
        concurrency=queue_limit,
    )


def cancel_consumer(runner: JobRunner, node: str) -> ConsumerSpec:
    async def on_cancel(message: Envelope[Any], delivery: Delivery) -> None:
        data: CancelJob = message.data
        if runner.cancel(data.job_id, data.reason):
            log.info("job %s: cancelling (%s)", data.job_id, data.reason)
        else:
            log.info("job.cancel for job %s, which is not in hand here: nothing to do", data.job_id)

    return ConsumerSpec(
        stream="TM_CMD",
        durable=f"executor-{node_token(node)}-cancel",
        filter_subjects=[cancel_subject(node)],
        handlers={CancelJob: on_cancel},
        concurrency=4,
    )
