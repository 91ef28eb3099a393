"""The recoverability rule gives the same answers after a restart and a rebuild: enabled threads
remembered per lineage, level 1s only with their whole chain, log tombstones, one validation of
the target for checks and plans, strict wire models, and the subject naming the database.

Each test drives the real ingest over a real SQLite store (`tests.doubles.catalog_rig`)."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from schemas import ContractError, DatabaseRef, Incarnation, Scn, Timeline, decode, envelope
from schemas.messages import (
    BackupCompleted,
    BackupDeleted,
    BackupKind,
    BackupSpec,
    LogArchived,
    LogDeleted,
    TargetPosition,
    TargetXid,
)
from services.catalog.index import NotRestorable
from services.catalog.queries import _Refused, handlers
from tests.doubles.catalog_events import ORA, PG, SEG, backup, redo, wal
from tests.doubles.catalog_rig import CatalogRig

pytestmark = pytest.mark.unit

INC = Incarnation(resetlogs_id=1_000, resetlogs_scn=Scn(value=1), number=1)
CHILD = Incarnation(
    resetlogs_id=2_000, resetlogs_scn=Scn(value=500), number=2, prior_resetlogs_id=1_000
)
DELETED_AT = datetime(2026, 3, 2, tzinfo=UTC)
NOW = datetime(2026, 3, 20, tzinfo=UTC)


@pytest.fixture
def rig(tmp_path: Path) -> Iterator[CatalogRig]:
    opened = CatalogRig(tmp_path)
    yield opened
    opened.close()


def log(
    thread: int,
    k: int,
    lineage: Incarnation = INC,
    threads: tuple[int, ...] | None = None,
) -> LogArchived:
    """Thread `thread`'s log k covering [100k, 100k + 100)."""
    found = redo(thread, k, 100 * k, 100 * (k + 1), lineage)
    return found.model_copy(update={"enabled_threads": threads})


def deleted(found: LogArchived) -> LogDeleted:
    return LogDeleted(
        lineage=found.lineage,
        kind=found.kind,
        thread=found.thread,
        sequence=found.sequence,
        object_key=found.object_key,
        reason="retention",
    )


def windows(rig: CatalogRig, lineage: str = "inc-1000") -> list[tuple[int, int]]:
    reply = rig.index.windows(ORA.uid, now=NOW)
    return [(w.start.value, w.end.value) for w in reply.windows if w.lineage == lineage]


def level1(backup_id: str, parent: str, start: int, consistent: int) -> BackupCompleted:
    full = backup(backup_id, start, consistent, INC, minute=30, database=ORA)
    return full.model_copy(
        update={
            "spec": BackupSpec(kind=BackupKind.INCREMENTAL, tag="DAILY"),
            "parent_backup_id": parent,
        }
    )


def send_all(rig: CatalogRig, database: DatabaseRef, *events: object) -> None:
    for event in events:
        assert rig.send(database, event) is None  # type: ignore[arg-type]


# -- point 1: a thread whose every log was deleted is still a thread -----------------------------


@pytest.mark.parametrize("reported", [None, (1, 2)], ids=["threads-seen", "threads-reported"])
def test_a_thread_with_every_log_deleted_keeps_the_window_closed_after_a_restart(
    rig: CatalogRig, reported: tuple[int, ...] | None
) -> None:
    logs = [log(t, k, threads=reported) for t in (1, 2) for k in range(1, 6)]
    send_all(rig, ORA, *logs, backup("L0", 120, 130, INC, database=ORA))
    assert windows(rig) == [(130, 600)]
    send_all(rig, ORA, *[deleted(x) for x in logs if x.thread == 2])
    assert windows(rig) == []
    rig.restart()
    assert windows(rig) == []
    assert not rig.index.check(ORA.uid, TargetPosition(position=Scn(value=300))).restorable


def test_a_rebuild_reads_the_enabled_threads_from_the_objects(rig: CatalogRig) -> None:
    logs = [log(t, k, threads=(1, 2)) for t in (1, 2) for k in range(1, 6)]
    base = backup("L0", 120, 130, INC, database=ORA)
    for fact in (*logs, base):
        rig.keep_object(ORA, fact)
    send_all(rig, ORA, *logs, base)
    for gone in [x for x in logs if x.thread == 2]:
        rig.drop_object(gone.object_key)
        send_all(rig, ORA, deleted(gone))
    rig.rebuild()
    assert windows(rig) == []


# -- point 2: a level 1 is a base only with its whole chain ------------------------------------


def test_a_level_1_whose_level_0_is_deleted_opens_no_window(rig: CatalogRig) -> None:
    send_all(rig, ORA, *[log(1, k, threads=(1,)) for k in range(1, 6)])
    send_all(rig, ORA, backup("L0", 120, 130, INC, database=ORA), level1("L1", "L0", 320, 330))
    assert windows(rig) == [(130, 600)]
    send_all(rig, ORA, BackupDeleted(backup_id="L0", reason="retention"))
    assert windows(rig) == []
    rig.restart()
    assert windows(rig) == []


def test_a_level_1_without_its_parent_never_counts(rig: CatalogRig) -> None:
    send_all(rig, ORA, *[log(1, k, threads=(1,)) for k in range(1, 6)])
    send_all(rig, ORA, level1("L1", "L0", 320, 330))
    assert windows(rig) == []
    send_all(rig, ORA, backup("L0", 120, 130, INC, database=ORA))  # the parent comes late
    assert windows(rig) == [(130, 600)]


def test_retention_never_deletes_the_level_0_a_kept_level_1_needs(rig: CatalogRig) -> None:
    send_all(rig, ORA, *[log(1, k, threads=(1,)) for k in range(1, 6)])
    send_all(rig, ORA, backup("L0", 120, 130, INC, database=ORA), level1("L1", "L0", 320, 330))
    preview = rig.index.retention_preview(ORA.uid, 1, now=NOW)
    assert preview.oldest_kept_base == "L1"
    assert preview.delete_backups == []
    assert preview.keep_backups == ["L0", "L1"]


# -- point 3: log tombstones ---------------------------------------------------------------------


def test_a_log_archived_replayed_after_its_deletion_stays_deleted(rig: CatalogRig) -> None:
    logs = [log(1, k, threads=(1,)) for k in range(1, 6)]
    send_all(rig, ORA, *logs, backup("L0", 120, 130, INC, database=ORA))
    assert rig.send(ORA, deleted(logs[2]), at=DELETED_AT) is None
    assert windows(rig) == [(130, 300)]
    rig.publisher.sent.clear()
    assert rig.send(ORA, logs[2]) is None  # a redelivery of the deleted log
    assert windows(rig) == [(130, 300)]
    assert not [m for m in rig.publisher.sent if m.type == "logs.indexed"]
    rig.restart()
    assert windows(rig) == [(130, 300)]


def test_a_deletion_that_arrives_before_its_log_buries_it(rig: CatalogRig) -> None:
    logs = [log(1, k, threads=(1,)) for k in range(1, 6)]
    assert rig.send(ORA, deleted(logs[2]), at=DELETED_AT) is None
    send_all(rig, ORA, *logs, backup("L0", 120, 130, INC, database=ORA))
    assert windows(rig) == [(130, 300)]
    rig.restart()
    assert windows(rig) == [(130, 300)]


def test_a_distinct_new_object_under_a_deleted_name_is_indexed(rig: CatalogRig) -> None:
    logs = [log(1, k, threads=(1,)) for k in range(1, 6)]
    send_all(rig, ORA, *logs, backup("L0", 120, 130, INC, database=ORA))
    assert rig.send(ORA, deleted(logs[2]), at=DELETED_AT) is None
    again = logs[2].model_copy(update={"stored_at": DELETED_AT + timedelta(minutes=5)})
    assert rig.send(ORA, again) is None
    assert windows(rig) == [(130, 600)]
    assert rig.send(ORA, logs[2]) is None  # the old object's event, late: still the new one
    rig.restart()
    assert windows(rig) == [(130, 600)]


# -- point 4: plans and checks share one validation -----------------------------------------------


def test_a_plan_is_refused_where_the_check_refuses_the_target(rig: CatalogRig) -> None:
    send_all(rig, ORA, *[log(1, k, threads=(1,)) for k in range(1, 6)])
    send_all(rig, ORA, backup("L0", 120, 130, INC, database=ORA))
    target = TargetXid(xid=4242)
    check = rig.index.check(ORA.uid, target)
    assert check.code == "unsupported_target"
    with pytest.raises(NotRestorable) as refused:
        rig.index.restore_plan(ORA.uid, target)
    assert refused.value.reply == check


# -- point 5: strict on the bus as over HTTP ---------------------------------------------------


@pytest.mark.parametrize("value", ['"300"', "true"])
def test_a_position_that_is_not_an_integer_is_refused_over_nats(
    rig: CatalogRig, value: str
) -> None:
    send_all(rig, ORA, *[log(1, k, threads=(1,)) for k in range(1, 6)])
    query = handlers(rig.index)["check"]
    body = (
        '{"database": "ledger", "target": {"kind": "position", '
        f'"position": {{"kind": "scn", "value": {value}}}}}}}'
    ).encode()
    with pytest.raises(_Refused) as refused:
        asyncio.run(query(body))
    assert refused.value.status == 400
    good = body.replace(value.encode(), b"300")
    assert asyncio.run(query(good)).model_dump()["restorable"] is False  # parsed, no backup


@pytest.mark.parametrize("value", ['"300"', "true"])
def test_an_event_with_a_position_that_is_not_an_integer_is_refused(value: str) -> None:
    good = envelope(ORA_LOG, source="archiver", database=ORA).model_dump_json()
    subject = "tm.evt.log.archived.ledger"
    assert decode(good.encode(), subject=subject).data == ORA_LOG
    message = good.replace('"value":300', f'"value":{value}', 1)
    assert message != good
    with pytest.raises(ContractError, match="value"):
        decode(message.encode(), subject=subject)


# -- point 6: subject and envelope agree -------------------------------------------------------


def test_an_event_on_another_databases_subject_is_refused_and_not_indexed(rig: CatalogRig) -> None:
    refused = rig.send(ORA, log(1, 1), subject_uid="payroll")
    assert refused is not None
    assert "payroll" in str(refused)
    assert "ledger" in str(refused)
    assert rig.index.databases() == []


# -- point 7: enabled threads on a new incarnation -----------------------------------------------


@pytest.mark.parametrize("reported", [None, (1, 2)], ids=["inherited", "reported"])
def test_a_child_incarnation_needs_every_enabled_thread(
    rig: CatalogRig, reported: tuple[int, ...] | None
) -> None:
    parent = [log(t, k, threads=(1, 2)) for t in (1, 2) for k in range(1, 5)]
    child = [log(1, k, CHILD, threads=reported) for k in range(5, 8)]
    send_all(rig, ORA, *parent, *child, backup("L0", 120, 130, INC, database=ORA))
    assert windows(rig, "inc-1000") == [(130, 500)]
    assert windows(rig, "inc-2000") == []
    rig.restart()
    assert windows(rig, "inc-2000") == []


def test_a_child_incarnation_reported_with_one_thread_gets_its_window(rig: CatalogRig) -> None:
    parent = [log(t, k, threads=(1, 2)) for t in (1, 2) for k in range(1, 5)]
    child = [log(1, k, CHILD, threads=(1,)) for k in range(5, 8)]
    send_all(rig, ORA, *parent, *child, backup("L0", 120, 130, INC, database=ORA))
    assert windows(rig, "inc-2000") == [(500, 800)]


# -- point 8 (the part done): a window's time span ----------------------------------------------


def test_just_after_the_first_backup_the_window_does_not_end_before_it_starts(
    rig: CatalogRig,
) -> None:
    segments = [wal(n) for n in (1, 2)]  # archived at T0 + 1 and 2 minutes
    base = backup("b1", SEG + 0x28, SEG + 0x100, Timeline(id=1), minute=5)  # completes later
    send_all(rig, PG, *segments, base)
    [window] = rig.index.windows(PG.uid, now=NOW).windows
    assert window.start_time is not None
    assert window.end_time is not None
    assert window.start_time <= window.end_time


ORA_LOG = log(1, 3, threads=(1,))
