"""Why a job ends without a result, as stable codes, and the refusals the handlers raise.

    Failure codes (in `job.failed`, `backup.failed`, `restore.failed`):

    TM-JOB-CANCELLED    a `job.cancel` stopped it (running or waiting its turn)
    TM-JOB-TIMEOUT      it ran longer than `executor.job_timeout_s`; the engine was stopped
    TM-JOB-INTERRUPTED  the executor stopped or died while it ran; nothing is assumed done
                        (`interrupted=true`; the planner retries with a NEW job id)
    TM-JOB-NOT-HOSTED   the database is not hosted on this node (the command is dead-lettered)
    TM-JOB-NO-ENGINE    this node has no driver for the database's engine (dead-lettered)
    TM-JOB-UNSUPPORTED  the database's engine cannot do this operation (dead-lettered)
    TM-JOB-MISMATCH     the job id is journaled for another operation or database (dead-lettered)
    TM-JOB-ERROR        the engine failed in a way it did not classify (a bug or an OS fault)

Engine failures keep the engine's own code (`ORA-19511`, `TM-PG-…`).

The refusals `NOT-HOSTED` and `NO-ENGINE` are journaled and reported like any failure and then
raised as `TerminalError`, so the command also lands in `TM_DLQ` with the reason: no retry can
help until a person changes the node's configuration or the planner's routing. `MISMATCH` is
only dead-lettered: the job id's events belong to the job already journaled under it.
"""

from __future__ import annotations

from schemas.messages import Failure

CANCELLED = "TM-JOB-CANCELLED"
TIMEOUT = "TM-JOB-TIMEOUT"
INTERRUPTED = "TM-JOB-INTERRUPTED"
NOT_HOSTED = "TM-JOB-NOT-HOSTED"
NO_ENGINE = "TM-JOB-NO-ENGINE"
UNSUPPORTED = "TM-JOB-UNSUPPORTED"
MISMATCH = "TM-JOB-MISMATCH"
ERROR = "TM-JOB-ERROR"

REFUSALS = frozenset({NOT_HOSTED, NO_ENGINE, UNSUPPORTED})
"""Codes whose command is dead-lettered, on the first delivery and on any redelivery."""


def is_refusal(failure: Failure | None) -> bool:
    return failure is not None and failure.code in REFUSALS


class JobTimeout(Exception):
    """The engine ran past `job_timeout_s` and was cancelled."""


def cancelled(reason: str) -> Failure:
    return Failure(reason=f"cancelled: {reason}", code=CANCELLED, retryable=False)


def timed_out(timeout_s: float) -> Failure:
    return Failure(
        reason=f"the job ran longer than job_timeout_s ({timeout_s:g}s) and was stopped",
        code=TIMEOUT,
        retryable=False,
    )


def interrupted(why: str) -> Failure:
    # Retryable: a restart is transient. But only with a new job id — this one is finished.
    return Failure(
        reason=f"interrupted: {why}; nothing of it is assumed done",
        code=INTERRUPTED,
        retryable=True,
    )


def unexpected(exc: BaseException) -> Failure:
    # Retryable, as the bus treats unclassified errors: more often transient than permanent.
    text = f"{type(exc).__name__}: {exc}"
    return Failure(
        reason=f"the engine failed unexpectedly: {text}"[:2000], code=ERROR, retryable=True
    )
