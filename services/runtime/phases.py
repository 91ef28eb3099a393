"""Phases as data: one table of allowed moves per state machine, and one check that refuses the
others.

Every long-lived thing Tidemark drives — a planner saga, an executor job, an archived log on its
way to the catalog — is an enum of phases with a docstring each, a table of the moves allowed
from each phase, and this one check. A move the table does not list is a bug or a race lost to
another replica; either way, writing it would rewrite a fact someone may already have acted on
(a final phase is a result already told to the world), so it is refused, never "fixed up".
"""

from __future__ import annotations

from collections.abc import Hashable, Iterator, Mapping
from typing import TypeVar

P = TypeVar("P", bound=Hashable)


class IllegalTransition(RuntimeError):
    """A move the table does not allow (a bug, or a race lost to a newer writer)."""

    def __init__(self, subject: object, src: object = None, dst: object = None) -> None:
        def name(phase: object) -> str:
            return "nothing" if phase is None else str(getattr(phase, "value", phase))

        # Without a move, `subject` is the whole message (a write the machine cannot take).
        text = (
            str(subject) if dst is None else f"{subject}: {name(src)} → {name(dst)} is not allowed"
        )
        super().__init__(text)
        self.subject = subject
        self.src = src
        self.dst = dst


class Transitions(Mapping[P | None, frozenset[P]]):
    """The allowed moves of one state machine, read as the table it is (`TRANSITIONS[phase]`).
    `None` as a source is "not yet recorded", for machines whose first write is itself a move
    (a job accepted, a log discovered)."""

    def __init__(self, table: Mapping[P | None, frozenset[P]]) -> None:
        self.table = dict(table)

    def __getitem__(self, phase: P | None) -> frozenset[P]:
        return self.table[phase]

    def __iter__(self) -> Iterator[P | None]:
        return iter(self.table)

    def __len__(self) -> int:
        return len(self.table)

    @property
    def final(self) -> frozenset[P]:
        """The phases nothing leaves: their outcome is a fact already told to others."""
        return frozenset(p for p, after in self.table.items() if p is not None and not after)

    def allows(self, src: P | None, dst: P) -> bool:
        return dst in self.table.get(src, frozenset())

    def check(self, subject: object, src: P | None, dst: P) -> None:
        """Refuse `src → dst` unless the table lists it."""
        if not self.allows(src, dst):
            raise IllegalTransition(subject, src, dst)
