"""Why the planner refuses a request: stable codes, carried by `request.rejected.code`.

    Refusal (an answer, not an exception: the command is acked, nothing changed)
      TM-PLAN-UNKNOWN-DB      no node hosts the database and the catalog does not know it
      TM-PLAN-NO-NODE         the catalog knows it, but no live executor hosts it now
      TM-PLAN-BUSY            a backup or restore of the database is running (one at a time)
      TM-PLAN-NOT-RESTORABLE  the catalog says the target is outside every window
      TM-PLAN-NOT-FOUND       a cancel names nothing the planner is running
      TM-PLAN-FINISHED        a cancel names something that already ended
      TM-PLAN-NO-BACKUP       verification asked for a database with no backup yet

A handler raising `RetryableError` (catalog not answering, KV conflict storm) is redelivered;
a command without a database cannot be answered at all and is a `TerminalError`.
"""

from __future__ import annotations

from dataclasses import dataclass

from schemas import Position
from schemas.catalog import CheckReply

UNKNOWN_DB = "TM-PLAN-UNKNOWN-DB"
NO_NODE = "TM-PLAN-NO-NODE"
BUSY = "TM-PLAN-BUSY"
NOT_RESTORABLE = "TM-PLAN-NOT-RESTORABLE"
NOT_FOUND = "TM-PLAN-NOT-FOUND"
FINISHED = "TM-PLAN-FINISHED"
NO_BACKUP = "TM-PLAN-NO-BACKUP"


@dataclass(frozen=True)
class Refusal:
    """A reasoned no. Raised inside a handler, turned into `request.rejected` by intake."""

    reason: str
    code: str
    check: CheckReply | None = None

    @property
    def nearest_before(self) -> Position | None:
        return self.check.nearest_before if self.check else None


class Refused(Exception):
    def __init__(self, refusal: Refusal) -> None:
        super().__init__(refusal.reason)
        self.refusal = refusal
