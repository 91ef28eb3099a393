"""When a cron schedule next fires, for `policy show` and `info`."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from services.planner.cron import CronSchedule

#: Far enough for any five-field schedule that can fire at all (29 February included).
_HORIZON_DAYS = 366 * 8


def next_run(expression: str | None, after: datetime) -> datetime | None:
    """The first minute strictly after `after` that `expression` matches (UTC); None for
    no schedule or one that never fires (e.g. `0 0 31 2 *`)."""
    if expression is None:
        return None
    schedule = CronSchedule.parse(expression)
    start = after.astimezone(UTC).replace(second=0, microsecond=0)
    times = sorted((h, m) for h in schedule.hours for m in schedule.minutes)
    day = start.replace(hour=0, minute=0)
    for _ in range(_HORIZON_DAYS):
        if day.month in schedule.months:
            for hour, minute in times:
                at = day.replace(hour=hour, minute=minute)
                if at > after and schedule.matches(at):
                    return at
        day += timedelta(days=1)
    return None
