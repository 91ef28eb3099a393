"""Requests an engine cannot carry out, refused at intake with the reason.

A request the engine cannot do must be answered `request.rejected` before anything is sent to a
node — never accepted, run to a 100 % progress bar, and failed there. The facts are one table,
checked by `refuse_what_the_engine_cannot` on every command before its handler runs.
"""

from __future__ import annotations

from typing import Any

from schemas import DatabaseRef, Engine, Envelope
from schemas.messages import BackupKind, RequestBackup
from services.planner.errors import Refusal, Refused

UNSUPPORTED = "TM-PLAN-UNSUPPORTED"

#: (engine, backup kind) the engine has no way to take, and what to do instead.
CANNOT_BACK_UP: dict[tuple[Engine, BackupKind], str] = {
    (Engine.POSTGRES, BackupKind.INCREMENTAL): (
        "PostgreSQL backups here are full base backups only (no incremental): take a full "
        "backup; the WAL archive already covers every moment between two fulls"
    ),
}


def refuse_what_the_engine_cannot(message: Envelope[Any], database: DatabaseRef) -> None:
    """Raise `Refused` for a request `database`'s engine cannot do; return otherwise."""
    data = message.data
    if isinstance(data, RequestBackup):
        reason = CANNOT_BACK_UP.get((database.engine, data.spec.kind))
        if reason is not None:
            raise Refused(Refusal(f"{database.uid}: {reason}", UNSUPPORTED))
