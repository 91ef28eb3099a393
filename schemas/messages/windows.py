"""The catalog's view changed: which moments of a lineage are restorable now."""

from __future__ import annotations

from typing import Annotated, ClassVar

from pydantic import Field, StringConstraints, model_validator

from schemas._base import StrictModel, UtcDateTime
from schemas.envelope import Event
from schemas.messages.common import BackupId
from schemas.positions import Position

LineageKey = Annotated[str, StringConstraints(pattern=r"^tl-[0-9A-F]{8}$|^inc-[0-9]{1,10}$")]
"""A lineage as the object store names it: `tl-00000002` (timeline) or `inc-1180000000`."""


class WindowSummary(StrictModel):
    """Targets T with `start < T <= end` are restorable."""

    start: Position = Field(description="exclusive: the base's consistent point or a branch")
    end: Position = Field(description="inclusive: where the contiguous log chain ends")
    start_time: UtcDateTime | None = None
    end_time: UtcDateTime | None = None
    bases: list[BackupId] = Field(default_factory=list, description="bases that reach into it")

    @model_validator(mode="after")
    def _ordered(self) -> WindowSummary:
        if self.start.kind != self.end.kind:
            raise ValueError("start and end must be the same kind of position")
        if self.end <= self.start:
            raise ValueError("a window ends after it starts")
        return self


class WindowChanged(Event):
    """The restorable windows of one lineage are now `windows` (the whole list, not a delta,
    so a reader that missed one event is right again at the next)."""

    TYPE: ClassVar[str] = "window.changed"
    SUBJECT: ClassVar[str] = "tm.evt.window.changed.{database}"
    SUMMARY: ClassVar[str] = "The restorable windows of a lineage changed; all of them are listed."

    lineage: LineageKey
    windows: list[WindowSummary] = Field(description="oldest first; empty: nothing restorable")
