"""What a control command (pause, resume, cutover, abort, rollback, cutover_ack) changes on a
migration's record, or the refusal that says why not. Pure: the saga writes the changes with
compare-and-set and goes on from them (`migrations.py`)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from schemas.messages import (
    AbortMigration,
    AcknowledgeCutover,
    CutoverMigration,
    CutoverStep,
    MigrationPhase,
    PauseMigration,
    PhaseVisit,
    ResumeMigration,
    RollbackMigration,
)
from schemas.messages.migrations import ROLLBACK_AFTER_CUTOVER
from services.planner.errors import NOT_FOUND, Refusal, Refused
from services.planner.migration_record import CODE_METHOD, CODE_STATE, MigrationRecord

P = MigrationPhase
S = CutoverStep

Visit = Callable[[str], list[PhaseVisit]]
"""The record's visits with one more (a message in the current phase)."""


def decide(record: MigrationRecord, data: Any, visit: Visit) -> tuple[dict[str, Any], str]:
    """What a control command changes on the record, or a refusal saying why not."""
    mid = record.migration_id
    if isinstance(data, PauseMigration):
        if record.paused:
            return {}, f"migration {mid} is already paused in {record.phase}"
        if record.phase is P.READY or (record.waiting is not None and not record.pending):
            # Waiting (for a window, a command, a sample): nothing to finish first.
            return (
                {
                    "paused": True,
                    "paused_for": record.phase,
                    "visits": visit(f"paused in {record.phase}: {data.reason}"),
                },
                f"migration {mid} paused in {record.phase}",
            )
        return (
            {"pause_point": record.phase},
            f"migration {mid} pauses at the end of {record.phase}",
        )
    if isinstance(data, ResumeMigration):
        return (
            {
                "paused": False,
                "pause_point": data.pause_after,
                "waiting": None,
                "visits": visit("resumed"),
            },
            f"migration {mid} resumed in {record.phase}",
        )
    if isinstance(data, CutoverMigration):
        if record.phase not in (P.CATCHING_UP, P.READY):
            raise Refused(
                Refusal(
                    f"migration {mid} is {record.phase}: a cutover is asked for in "
                    "catching_up or ready",
                    CODE_STATE,
                )
            )
        if not data.wait_for_window and record.request.windows:
            raise Refused(
                Refusal(
                    f"migration {mid} has cutover windows; it never cuts over outside "
                    "them (ask without --now to cut over at the next window)",
                    CODE_STATE,
                )
            )
        paused = record.paused and record.phase is not P.READY
        return (
            {
                "cutover_requested": True,
                "paused": paused,
                "waiting": None,
            },
            f"migration {mid}: cutover once ready"
            + (" in its next window" if record.request.windows else ""),
        )
    if isinstance(data, AbortMigration):
        if record.point_of_no_return_passed:
            raise Refused(
                Refusal(
                    f"migration {mid} passed its point of no return (the target was "
                    "opened): abort is no longer possible; roll back instead",
                    CODE_STATE,
                )
            )
        return (
            {"abort_reason": data.reason, "paused": False, "waiting": None},
            f"aborting migration {mid}: the source will be left serving",
        )
    if isinstance(data, RollbackMigration):
        if not record.point_of_no_return_passed:
            raise Refused(
                Refusal(
                    f"migration {mid} has not passed its point of no return: nothing to "
                    "roll back (abort it instead; the source is left serving)",
                    CODE_STATE,
                )
            )
        if record.request.method not in ROLLBACK_AFTER_CUTOVER:
            raise Refused(
                Refusal(
                    f"{record.request.method.value} keeps no way back after the cutover",
                    CODE_METHOD,
                )
            )
        source = record.results.get("preflight_source")
        if source is not None and source.facts.get("rollback") == "impossible":
            raise Refused(
                Refusal(
                    f"migration {mid} cannot roll back: the source has neither data "
                    "checksums nor wal_log_hints, which pg_rewind needs",
                    CODE_METHOD,
                )
            )
        return (
            {"rollback_reason": data.reason, "paused": False, "waiting": None},
            f"rolling back migration {mid}: the old source becomes the primary again",
        )
    assert isinstance(data, AcknowledgeCutover)
    if data.participant not in record.request.participants:
        raise Refused(
            Refusal(f"{data.participant} is not a participant of migration {mid}", NOT_FOUND)
        )
    if record.phase is not P.CUTTING_OVER or record.step is not S.DRAIN:
        raise Refused(
            Refusal(f"migration {mid} is not waiting for drain acknowledgements", CODE_STATE)
        )
    return (
        {"acks": {**record.acks, data.participant: data.ready}},
        f"{data.participant} {'drained' if data.ready else 'refused to drain'}",
    )
