"""Positions in a database's redo history, and the lineages they live on.

An Oracle SCN and a PostgreSQL LSN are both 64-bit counters, and that is exactly why they must
never be compared with each other: each is its own type, ordering only against its own kind, and
a lineage (Oracle incarnation, PostgreSQL timeline) says which history a position belongs to.
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal, Self

from pydantic import BeforeValidator, Field, PlainSerializer, WithJsonSchema

from schemas._base import StrictModel

_U64 = 1 << 64
_LSN_RE = re.compile(r"([0-9A-Fa-f]{1,8})/([0-9A-Fa-f]{1,8})")


def parse_lsn(text: str) -> int:
    """`16/B374D848` → integer byte position."""
    match = _LSN_RE.fullmatch(text)
    if match is None:
        raise ValueError(f"not a PostgreSQL LSN (expected like 16/B374D848): {text!r}")
    return (int(match.group(1), 16) << 32) | int(match.group(2), 16)


def format_lsn(value: int) -> str:
    return f"{value >> 32:X}/{value & 0xFFFFFFFF:X}"


def _lsn_input(value: Any) -> Any:
    if isinstance(value, str):
        return parse_lsn(value)
    return value


_LsnValue = Annotated[
    int,
    BeforeValidator(_lsn_input),
    Field(ge=0, lt=_U64),
    PlainSerializer(format_lsn, return_type=str, when_used="json"),
    WithJsonSchema({"type": "string", "pattern": r"^[0-9A-F]{1,8}/[0-9A-F]{1,8}$"}),
]


class _Ordered(StrictModel):
    """Ordering only against the same kind; comparing an SCN with an LSN is a TypeError."""

    value: int

    def _same_kind(self, other: object) -> _Ordered:
        if type(other) is not type(self):
            raise TypeError(f"cannot compare {type(self).__name__} with {type(other).__name__}")
        assert isinstance(other, _Ordered)
        return other

    def __lt__(self, other: object) -> bool:
        return self.value < self._same_kind(other).value

    def __le__(self, other: object) -> bool:
        return self.value <= self._same_kind(other).value

    def __gt__(self, other: object) -> bool:
        return self.value > self._same_kind(other).value

    def __ge__(self, other: object) -> bool:
        return self.value >= self._same_kind(other).value

    def advanced(self, delta: int) -> Self:
        return self.model_copy(update={"value": self.value + delta})


class Scn(_Ordered):
    """Oracle System Change Number."""

    kind: Literal["scn"] = "scn"
    value: int = Field(ge=0, lt=_U64)

    def __str__(self) -> str:
        return str(self.value)


class Lsn(_Ordered):
    """PostgreSQL Log Sequence Number, written `X/Y` on the wire as PostgreSQL prints it."""

    kind: Literal["lsn"] = "lsn"
    value: _LsnValue

    @classmethod
    def parse(cls, text: str) -> Lsn:
        return cls(value=parse_lsn(text))

    def __str__(self) -> str:
        return format_lsn(self.value)


Position = Annotated[Scn | Lsn, Field(discriminator="kind")]
"""An SCN or an LSN, tagged by `kind`."""


class Incarnation(StrictModel):
    """An Oracle incarnation: each OPEN RESETLOGS starts one and restarts sequences at 1."""

    kind: Literal["incarnation"] = "incarnation"
    resetlogs_id: int = Field(ge=0, lt=1 << 32)
    resetlogs_scn: Scn
    number: int | None = Field(default=None, ge=1, description="INCARNATION# in the control file")
    prior_resetlogs_id: int | None = Field(default=None, ge=0, lt=1 << 32)

    @property
    def key(self) -> str:
        return f"inc-{self.resetlogs_id}"


class Timeline(StrictModel):
    """A PostgreSQL timeline: each promotion or PITR starts one, branching from its parent."""

    kind: Literal["timeline"] = "timeline"
    id: int = Field(ge=1, lt=1 << 32)
    parent: int | None = Field(default=None, ge=1, lt=1 << 32)
    branch_lsn: Lsn | None = None

    @property
    def key(self) -> str:
        return f"tl-{self.id:08X}"


Lineage = Annotated[Incarnation | Timeline, Field(discriminator="kind")]
"""Which history a position belongs to: an Oracle incarnation or a PostgreSQL timeline."""


_LINEAGE_KEY = re.compile(r"tl-([0-9A-Fa-f]{1,8})|inc-([0-9]{1,10})")


def lineage_from_key(key: str, *, branch_at: Scn | Lsn | None = None) -> Incarnation | Timeline:
    """The lineage a key names (`tl-0000000A`, `inc-N`): the one parser of a lineage key. An
    incarnation's key holds only its RESETLOGS id; its RESETLOGS SCN is where it branched
    (`branch_at`), 0 when the caller does not know it."""
    match = _LINEAGE_KEY.fullmatch(key)
    if match is None:
        raise ValueError(f"{key!r} is not a lineage key (tl-XXXXXXXX or inc-N)")
    if match.group(1) is not None:
        return Timeline(id=int(match.group(1), 16))
    scn = branch_at.value if isinstance(branch_at, Scn) else 0
    return Incarnation(resetlogs_id=int(match.group(2)), resetlogs_scn=Scn(value=scn))


def check_on_lineage(lineage: Incarnation | Timeline, *positions: Scn | Lsn | None) -> None:
    """Refuse an LSN on an Oracle incarnation or an SCN on a PostgreSQL timeline."""
    expected = "scn" if isinstance(lineage, Incarnation) else "lsn"
    for position in positions:
        if position is not None and position.kind != expected:
            found = position.kind.upper()
            raise ValueError(f"a {lineage.kind} carries {expected.upper()} positions, not {found}")
