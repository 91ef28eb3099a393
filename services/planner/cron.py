"""A five-field cron matcher, UTC: `minute hour day-of-month month day-of-week`.

Each field is `*`, a number, a range `a-b`, a list `a,b,c`, or any of those with a step
(`*/15`, `0-30/10`). Day of week is 0-7 with 0 and 7 both Sunday. Names (`MON`, `JAN`) and the
extensions `L`, `W`, `#`, `?` are not accepted: the contract's `CronExpr` allows only digits and
`* , / -`, so anything else cannot arrive here.

The day rule is Vixie cron's: when both day-of-month and day-of-week are restricted (neither
starts with `*`), a day matches if *either* matches; otherwise both must. `0 0 1 * 1` is "the
1st of the month and every Monday", not "Mondays that are the 1st" — the rule people rely on
when they write it, so a matcher that ANDs them would silently skip backups.

Written here rather than taken from a library because the planner's exactly-once slots depend
on this function's exact answer, and the whole of it is a page.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

__all__ = ["CronError", "CronSchedule", "latest_match"]


class CronError(ValueError):
    """A cron expression that cannot be parsed; the message says which field and why."""


@dataclass(frozen=True)
class _Field:
    name: str
    low: int
    high: int


_FIELDS = (
    _Field("minute", 0, 59),
    _Field("hour", 0, 23),
    _Field("day-of-month", 1, 31),
    _Field("month", 1, 12),
    _Field("day-of-week", 0, 7),
)


def _number(text: str, field: _Field) -> int:
    if not text.isdigit():
        raise CronError(f"{field.name}: {text!r} is not a number")
    value = int(text)
    if not field.low <= value <= field.high:
        raise CronError(f"{field.name}: {value} is outside {field.low}-{field.high}")
    return value


def _parse_field(text: str, field: _Field) -> frozenset[int]:
    values: set[int] = set()
    for part in text.split(","):
        if not part:
            raise CronError(f"{field.name}: empty list item in {text!r}")
        base, slash, step_text = part.partition("/")
        step = 1
        if slash:
            if not step_text.isdigit() or int(step_text) == 0:
                raise CronError(f"{field.name}: step {step_text!r} must be a positive number")
            step = int(step_text)
        if base == "*":
            low, high = field.low, field.high
        elif "-" in base:
            first, _, last = base.partition("-")
            low, high = _number(first, field), _number(last, field)
            if low > high:
                raise CronError(f"{field.name}: range {base!r} runs backwards")
        else:
            low = _number(base, field)
            # `5/15` means from 5 to the end in steps of 15, as in Vixie cron.
            high = field.high if slash else low
        values.update(range(low, high + 1, step))
    return frozenset(values)


@dataclass(frozen=True)
class CronSchedule:
    """A parsed expression. `matches(t)` answers for the minute containing `t` (UTC)."""

    expression: str
    minutes: frozenset[int]
    hours: frozenset[int]
    days: frozenset[int]
    months: frozenset[int]
    weekdays: frozenset[int]
    """0 = Sunday … 6 = Saturday (a 7 in the expression is folded into 0)."""
    day_restricted: bool
    weekday_restricted: bool

    @classmethod
    def parse(cls, expression: str) -> CronSchedule:
        parts = expression.split()
        if len(parts) != 5:
            raise CronError(
                f"{expression!r}: a schedule is 5 fields "
                "(minute hour day-of-month month day-of-week), not "
                f"{len(parts)}"
            )
        minutes, hours, days, months, weekdays = (
            _parse_field(p, f) for p, f in zip(parts, _FIELDS, strict=True)
        )
        return cls(
            expression=" ".join(parts),
            minutes=minutes,
            hours=hours,
            days=days,
            months=months,
            weekdays=frozenset(d % 7 for d in weekdays),
            day_restricted=not parts[2].startswith("*"),
            weekday_restricted=not parts[4].startswith("*"),
        )

    def matches(self, at: datetime) -> bool:
        if at.minute not in self.minutes or at.hour not in self.hours:
            return False
        if at.month not in self.months:
            return False
        day_ok = at.day in self.days
        # Python: Monday = 0; cron: Sunday = 0.
        weekday_ok = (at.weekday() + 1) % 7 in self.weekdays
        if self.day_restricted and self.weekday_restricted:
            return day_ok or weekday_ok
        return day_ok and weekday_ok


def floor_minute(at: datetime) -> datetime:
    return at.replace(second=0, microsecond=0)


def latest_match(schedule: CronSchedule, now: datetime, *, lookback: timedelta) -> datetime | None:
    """The latest minute at or before `now` that the schedule matches, no further back than
    `lookback` (the catch-up grace). None when no slot falls in that span."""
    minute = floor_minute(now)
    oldest = minute - lookback
    while minute >= oldest:
        if schedule.matches(minute):
            return minute
        minute -= timedelta(minutes=1)
    return None
