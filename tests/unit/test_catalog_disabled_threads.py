"""A RAC thread disabled partway through a lineage (Oracle: ALTER DATABASE DISABLE THREAD) stops
bounding its windows past the disable, and bounds them again from where it was enabled again;
the answers are the same in any order of the reports, after a restart and after a rebuild.

Thread 1's log k and thread 2's log k cover [100k, 100k + 100) unless a test says otherwise;
the backup L0 is consistent at 130. Each test drives the real ingest over a real SQLite store
(`tests.doubles.catalog_rig`)."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from pydantic import ValidationError

from schemas import Incarnation, Scn, Timeline
from schemas.messages import LogArchived, TargetPosition, ThreadDisabled
from tests.doubles.catalog_events import ORA, backup, redo
from tests.doubles.catalog_rig import CatalogRig

pytestmark = pytest.mark.unit

INC = Incarnation(resetlogs_id=1_000, resetlogs_scn=Scn(value=1), number=1)
NOW = datetime(2026, 3, 20, tzinfo=UTC)


@pytest.fixture
def rig(tmp_path: Path) -> Iterator[CatalogRig]:
    opened = CatalogRig(tmp_path)
    yield opened
    opened.close()


def disabled(at: int, until: int, last_sequence: int = 3, thread: int = 2) -> ThreadDisabled:
    return ThreadDisabled(
        thread=thread, last_sequence=last_sequence, at=Scn(value=at), until=Scn(value=until)
    )


def log(
    thread: int,
    k: int,
    *,
    enabled: tuple[int, ...] | None = None,
    disables: tuple[ThreadDisabled, ...] | None = None,
    span: tuple[int, int] | None = None,
) -> LogArchived:
    first, next_ = span or (100 * k, 100 * (k + 1))
    found = redo(thread, k, first, next_, INC)
    return found.model_copy(update={"enabled_threads": enabled, "disabled_threads": disables})


def before_the_disable() -> list[LogArchived]:
    """Both threads archive logs 1-3 ([100, 400)); thread 2's instance then closes."""
    return [log(t, k, enabled=(1, 2)) for t in (1, 2) for k in (1, 2, 3)]


def after_the_disable(at: int = 400, last: int = 8) -> list[LogArchived]:
    """Thread 2 disabled at `at` after its sequence 3; thread 1 archives logs 4..`last`, each
    reported with thread 2 disabled up to its end (V$THREAD read after the log)."""
    return [
        log(1, k, enabled=(1,), disables=(disabled(at, 100 * (k + 1)),)) for k in range(4, last + 1)
    ]


def send_all(rig: CatalogRig, *events: object) -> None:
    for event in events:
        assert rig.send(ORA, event) is None  # type: ignore[arg-type]


def windows(rig: CatalogRig) -> list[tuple[int, int]]:
    reply = rig.index.windows(ORA.uid, now=NOW)
    return [(w.start.value, w.end.value) for w in reply.windows if w.lineage == INC.key]


def restorable(rig: CatalogRig, scn: int) -> bool:
    return rig.index.check(ORA.uid, TargetPosition(position=Scn(value=scn))).restorable


def test_a_thread_disabled_partway_no_longer_bounds_the_window_past_its_disable(
    rig: CatalogRig,
) -> None:
    send_all(rig, *before_the_disable(), backup("L0", 120, 130, INC, database=ORA))
    assert windows(rig) == [(130, 400)]
    send_all(rig, *after_the_disable())
    assert windows(rig) == [(130, 900)], "thread 1's chain alone bounds it past SCN 400"
    assert restorable(rig, 850)
    assert not restorable(rig, 901)
    plan = rig.index.restore_plan(ORA.uid, TargetPosition(position=Scn(value=850)))
    read = {(x.thread, x.sequence) for x in plan.objects}
    assert {(2, 1), (2, 2), (2, 3)} <= read, "from a base before the disable: thread 2's logs"
    assert {(1, k) for k in range(1, 9)} <= read


def test_a_disabled_thread_counts_absent_only_as_far_as_the_archiver_saw_it_disabled(
    rig: CatalogRig,
) -> None:
    reports = [
        log(1, k, enabled=(1,), disables=(disabled(400, 650),)) for k in range(4, 9)
    ]  # every report read V$THREAD at SCN 650: past it the thread may have redo again
    send_all(rig, *before_the_disable(), backup("L0", 120, 130, INC, database=ORA), *reports)
    assert windows(rig) == [(130, 650)]


def test_a_closed_thread_disabled_after_its_last_log_needs_no_log_in_between(
    rig: CatalogRig,
) -> None:
    send_all(rig, *before_the_disable(), backup("L0", 120, 130, INC, database=ORA))
    send_all(rig, *after_the_disable(at=450))  # closed at 400, disabled at 450
    assert windows(rig) == [(130, 900)]


def test_a_missing_last_log_before_the_disable_is_still_a_gap(rig: CatalogRig) -> None:
    facts = [x for x in before_the_disable() if (x.thread, x.sequence) != (2, 3)]
    send_all(rig, *facts, backup("L0", 120, 130, INC, database=ORA), *after_the_disable())
    assert windows(rig) == [(130, 300)], "thread 2's redo in [300, 400) is in no log"
    send_all(rig, log(2, 3, enabled=(1, 2)))  # the last log comes late
    assert windows(rig) == [(130, 900)]


def test_a_base_taken_after_the_disable_needs_only_the_threads_still_enabled(
    rig: CatalogRig,
) -> None:
    send_all(rig, *before_the_disable(), *after_the_disable())
    send_all(rig, backup("L1", 520, 530, INC, database=ORA))
    assert windows(rig) == [(530, 900)]


def test_a_thread_enabled_again_bounds_the_window_from_its_new_first_log(
    rig: CatalogRig,
) -> None:
    send_all(rig, *before_the_disable(), backup("L0", 120, 130, INC, database=ORA))
    send_all(rig, *after_the_disable(last=6))  # thread 1 to 700, thread 2 disabled to 700
    # ALTER DATABASE ENABLE THREAD 2 at 700: V$THREAD's ENABLE_CHANGE# ends the stretch there.
    again = (disabled(400, 700),)
    send_all(rig, *[log(1, k, enabled=(1, 2), disables=again) for k in (7, 8)])
    assert windows(rig) == [(130, 700)], "thread 2 may have redo from 700: none is archived"
    send_all(rig, log(2, 4, enabled=(1, 2), disables=again, span=(700, 850)))
    assert windows(rig) == [(130, 850)], "thread 2 bounds it again, from its new first log"
    assert not restorable(rig, 851)


def test_a_log_inside_a_reported_stretch_ends_it_there(rig: CatalogRig) -> None:
    send_all(rig, *before_the_disable(), backup("L0", 120, 130, INC, database=ORA))
    send_all(rig, *after_the_disable())  # thread 2 reported disabled up to 900
    send_all(rig, log(2, 4, enabled=(1, 2), span=(600, 650)))  # yet it has redo from 600
    assert windows(rig) == [(130, 650)]


def test_the_window_is_the_same_whatever_order_the_reports_came_in(tmp_path: Path) -> None:
    facts = [
        *before_the_disable(),
        backup("L0", 120, 130, INC, database=ORA),
        *after_the_disable(),
    ]
    answers = []
    for name, ordered in (("in-order", facts), ("reversed", facts[::-1])):
        rig = CatalogRig(tmp_path / name)
        try:
            send_all(rig, *ordered)
            answers.append(windows(rig))
        finally:
            rig.close()
    assert answers == [[(130, 900)], [(130, 900)]]


def test_a_disable_gives_the_same_windows_after_a_restart_and_a_rebuild(rig: CatalogRig) -> None:
    base = backup("L0", 120, 130, INC, database=ORA)
    again = (disabled(400, 700),)
    facts = [
        *before_the_disable(),
        *after_the_disable(last=6),
        *[log(1, k, enabled=(1, 2), disables=again) for k in (7, 8)],
        log(2, 4, enabled=(1, 2), disables=again, span=(700, 850)),
    ]
    for fact in (*facts, base):
        rig.keep_object(ORA, fact)
    send_all(rig, *facts, base)
    assert windows(rig) == [(130, 850)]
    rig.restart()
    assert windows(rig) == [(130, 850)]
    assert rig.index.database(ORA.uid).history.known_disables(INC.key) == {(2, 400): (3, 700)}
    rig.rebuild()
    assert windows(rig) == [(130, 850)]


def test_a_disable_reported_on_a_timeline_or_backwards_is_refused() -> None:
    with pytest.raises(ValidationError, match="until must not precede at"):
        disabled(400, 399)
    timeline = Timeline(id=1)
    segment = redo(1, 1, 100, 200, INC).model_dump()
    with pytest.raises(ValidationError, match="only an Oracle incarnation"):
        LogArchived.model_validate(
            {
                **segment,
                "lineage": timeline.model_dump(),
                "kind": "wal",
                "first": {"kind": "lsn", "value": 100},
                "next": {"kind": "lsn", "value": 200},
                "disabled_threads": [disabled(400, 500).model_dump()],
            }
        )
