"""The planner's cron matcher: fields, lists, ranges, steps, and the day-of-month/day-of-week
OR rule."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from services.planner.cron import CronError, CronSchedule, latest_match

pytestmark = pytest.mark.unit


def at(day: int, hour: int, minute: int, month: int = 3) -> datetime:
    return datetime(2026, month, day, hour, minute, tzinfo=UTC)  # 2026-03-01 is a Sunday


@pytest.mark.parametrize(
    ("expression", "moment", "expected"),
    [
        ("* * * * *", at(1, 0, 0), True),
        ("0 1 * * *", at(1, 1, 0), True),
        ("0 1 * * *", at(1, 1, 1), False),
        ("*/15 * * * *", at(1, 5, 45), True),
        ("*/15 * * * *", at(1, 5, 50), False),
        ("0-30/10 * * * *", at(1, 5, 30), True),
        ("0-30/10 * * * *", at(1, 5, 40), False),
        ("5/20 * * * *", at(1, 5, 45), True),
        ("0 9-17 * * *", at(1, 17, 0), True),
        ("0 9-17 * * *", at(1, 18, 0), False),
        ("0 1,13 * * *", at(1, 13, 0), True),
        ("0 0 * * 0", at(1, 0, 0), True),  # Sunday
        ("0 0 * * 7", at(1, 0, 0), True),  # 7 is Sunday too
        ("0 0 * * 1-5", at(1, 0, 0), False),
        ("0 0 * * 1-5", at(2, 0, 0), True),  # Monday
        ("0 0 1 * *", at(1, 0, 0), True),
        ("0 0 * 4 *", at(1, 0, 0), False),
        ("0 0 * 3 *", at(1, 0, 0), True),
        # Both day fields restricted: either matches (Vixie cron).
        ("0 0 15 * 1", at(2, 0, 0), True),  # a Monday that is not the 15th
        ("0 0 15 * 1", at(15, 0, 0), True),  # the 15th, a Sunday
        ("0 0 15 * 1", at(3, 0, 0), False),
        # One restricted: both must match.
        ("0 0 */2 * *", at(2, 0, 0), False),
        ("0 0 */2 * *", at(3, 0, 0), True),
        ("0 0 * * */2", at(3, 0, 0), True),  # Tuesday = 2
    ],
)
def test_matches(expression: str, moment: datetime, expected: bool) -> None:
    assert CronSchedule.parse(expression).matches(moment) is expected


@pytest.mark.parametrize(
    ("expression", "says"),
    [
        ("* * * *", "5 fields"),
        ("60 * * * *", "outside 0-59"),
        ("* 24 * * *", "outside 0-23"),
        ("* * 0 * *", "outside 1-31"),
        ("* * * 13 *", "outside 1-12"),
        ("* * * * 8", "outside 0-7"),
        ("*/0 * * * *", "positive"),
        ("5-1 * * * *", "backwards"),
        ("1,,2 * * * *", "empty"),
        ("a * * * *", "not a number"),
    ],
)
def test_refuses_with_the_reason(expression: str, says: str) -> None:
    with pytest.raises(CronError, match=says):
        CronSchedule.parse(expression)


def test_latest_match_looks_back_no_further_than_the_grace() -> None:
    nightly = CronSchedule.parse("0 1 * * *")
    assert latest_match(nightly, at(1, 1, 40), lookback=timedelta(hours=1)) == at(1, 1, 0)
    assert latest_match(nightly, at(1, 2, 5), lookback=timedelta(hours=1)) is None
    assert latest_match(nightly, at(1, 1, 0, 3).replace(second=59), lookback=timedelta(0)) == at(
        1, 1, 0
    )
