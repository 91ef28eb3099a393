"""Query parameters of the JSON API, parsed strictly: an unknown, repeated or malformed parameter
is a 400 that names the parameter and says what was expected, never a silent default.

A restore target is exactly one of `time=` (ISO 8601 with a zone), `scn=` (Oracle) or `lsn=`
(PostgreSQL, `X/Y`), optionally on a `lineage=`.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

from schemas import DatabaseRef, Engine, Lsn, Scn, parse_lsn
from schemas.messages import RestoreTarget, TargetPosition, TargetTime

__all__ = [
    "MAX_KEEP_DAYS",
    "BadRequest",
    "Query",
    "TargetQuery",
    "parse_keep_days",
    "parse_target",
    "refuse_any",
    "refuse_unknown",
]

TARGET_NAMES = ("time", "scn", "lsn")
MAX_KEEP_DAYS = 36500.0
"""A century: beyond it a retention window is a typo, and `timedelta` overflows not far off."""

_DIGITS = re.compile(r"[0-9]{1,20}")
_LINEAGE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
# `+` in a query string decodes to a space, so `…T12:00:00+02:00` arrives as `…T12:00:00 02:00`.
_PLUS_AS_SPACE = re.compile(r" \d{2}(:?\d{2})?$")


class BadRequest(ValueError):
    """A request the API refuses as written; `parameter` names the culprit when there is one."""

    def __init__(self, message: str, parameter: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.parameter = parameter


@dataclass(frozen=True)
class TargetQuery:
    target: RestoreTarget
    lineage: str | None


Query = Mapping[str, Sequence[str]]
"""Every value of every parameter, in order (repeats included)."""


def _single(query: Query, name: str) -> str | None:
    values = query.get(name, ())
    if len(values) > 1:
        raise BadRequest(f"{name} given {len(values)} times; give it once", name)
    return values[0] if values else None


def refuse_unknown(query: Query, allowed: Sequence[str]) -> None:
    unknown = sorted(set(query) - set(allowed))
    if unknown:
        raise BadRequest(
            f"unknown parameter {unknown[0]!r}; expected {', '.join(allowed)}", unknown[0]
        )


def refuse_any(query: Query) -> None:
    if query:
        name = sorted(query)[0]
        raise BadRequest(f"unknown parameter {name!r}; this endpoint takes none", name)


def parse_time(text: str) -> datetime:
    try:
        value = datetime.fromisoformat(text)
    except ValueError:
        hint = ""
        if _PLUS_AS_SPACE.search(text):
            hint = " ('+' in a URL query means a space: write the offset as %2B02:00, or use Z)"
        raise BadRequest(
            f"time must be an ISO 8601 timestamp like 2026-01-31T12:00:00Z, got {text!r}{hint}",
            "time",
        ) from None
    if value.tzinfo is None or value.utcoffset() is None:
        raise BadRequest(
            f"time must carry a zone (Z or an offset such as %2B02:00), got {text!r}: "
            "a time without one means different moments on different machines",
            "time",
        )
    try:
        value.astimezone(UTC)
    except OverflowError:
        # 9999-12-31T23:59:59-23:59 parses, but is past year 9999 in UTC: a 400, not a 500.
        raise BadRequest(f"time {text!r} is out of range once converted to UTC", "time") from None
    return value


def parse_target(query: Query, database: DatabaseRef) -> TargetQuery:
    """The restore target of a check or restore-plan request, for this database's engine."""
    refuse_unknown(query, (*TARGET_NAMES, "lineage"))
    given = {name: value for name in TARGET_NAMES if (value := _single(query, name)) is not None}
    if len(given) != 1:
        found = f"got {' and '.join(given)}" if given else "got none"
        raise BadRequest(
            "give exactly one target: time=<ISO 8601 with a zone>, scn=<integer> (Oracle) or "
            f"lsn=<X/Y> (PostgreSQL); {found}"
        )
    (name, text), *_ = given.items()
    expected = "scn" if database.engine is Engine.ORACLE else "lsn"
    if name in ("scn", "lsn") and name != expected:
        raise BadRequest(
            f"{database.uid} is a {database.engine.value} database: its positions are "
            f"{expected.upper()}s, so use {expected}= (or time=), not {name}=",
            name,
        )
    target: RestoreTarget
    if name == "time":
        target = TargetTime(at=parse_time(text))
    elif name == "scn":
        # str.isdigit() would let other scripts' digits through; the wire wants ASCII.
        if not _DIGITS.fullmatch(text) or int(text) >= 1 << 64:
            raise BadRequest(f"scn must be an integer from 0 to 2^64-1, got {text!r}", "scn")
        target = TargetPosition(position=Scn(value=int(text)))
    else:
        try:
            target = TargetPosition(position=Lsn(value=parse_lsn(text)))
        except ValueError as exc:
            raise BadRequest(f"lsn: {exc}", "lsn") from None
    lineage = _single(query, "lineage")
    if lineage is not None and not _LINEAGE.fullmatch(lineage):
        raise BadRequest(
            f"lineage must be a lineage key such as tl-00000002 or inc-1234, got {lineage!r}",
            "lineage",
        )
    return TargetQuery(target, lineage)


def parse_keep_days(query: Query) -> float:
    refuse_unknown(query, ("keep_days",))
    text = _single(query, "keep_days")
    if text is None:
        raise BadRequest("keep_days is required: the recovery window to keep, in days", "keep_days")
    try:
        days = float(text)
    except ValueError:
        days = math.nan
    if not (0 <= days <= MAX_KEEP_DAYS):  # also refuses nan and inf
        raise BadRequest(
            f"keep_days must be a number of days from 0 to {MAX_KEEP_DAYS:g}, got {text!r}",
            "keep_days",
        )
    return days
