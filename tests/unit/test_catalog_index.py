"""The catalog index over contract messages: windows, checks, plans and retention, for a
PostgreSQL timeline history and an Oracle RAC incarnation."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

import pytest

from schemas import DatabaseRef, Engine, Incarnation, Lsn, Scn, Timeline
from schemas.catalog import PlannedObject, RestorePlanReply
from schemas.messages import (
    BackupCompleted,
    BackupSpec,
    LogArchived,
    TargetName,
    TargetPosition,
    TargetSequence,
    TargetTime,
)
from services.catalog.index import CatalogIndex, NotRestorable

pytestmark = pytest.mark.unit
T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
SEG = 16 * 1024 * 1024
PG = DatabaseRef(uid="orders", engine=Engine.POSTGRES, name="orders", system_id=7)
ORA = DatabaseRef(uid="ledger", engine=Engine.ORACLE, name="LEDGER", system_id=99)


def wal(
    segno: int, tl: int = 1, parent: int | None = None, branch: int | None = None
) -> LogArchived:
    name = f"{tl:08X}{segno >> 8:08X}{segno & 0xFF:08X}"
    branch_lsn = Lsn(value=branch) if branch is not None else None
    return LogArchived(
        lineage=Timeline(id=tl, parent=parent, branch_lsn=branch_lsn),
        kind="wal",
        thread=1,
        sequence=segno,
        first=Lsn(value=segno * SEG),
        next=Lsn(value=(segno + 1) * SEG),
        size_bytes=SEG,
        crc32c="AAAAAA==",
        object_key=f"orders/tl-{tl:08X}/logs/1/{name}",
        file_name=name,
        node="n1",
        archived_at=T0 + timedelta(minutes=segno),
        stored_at=T0 + timedelta(minutes=segno, seconds=1),
    )


def base(backup_id: str, start: int, end: int, minute: int, lineage: object) -> BackupCompleted:
    pos = Scn if isinstance(lineage, Incarnation) else Lsn
    return BackupCompleted(
        backup_id=backup_id,
        job_id=uuid.uuid4(),
        spec=BackupSpec(),
        lineage=lineage,  # type: ignore[arg-type]
        start=pos(value=start),
        consistent_at=pos(value=end),
        started_at=T0 + timedelta(minutes=minute - 1),
        completed_at=T0 + timedelta(minutes=minute),
        size_bytes=1,
        piece_count=1,
        manifest_key=f"x/backups/{backup_id}/manifest.json",
    )


@pytest.fixture
def pg_index() -> CatalogIndex:
    index = CatalogIndex()
    for segno in [*range(2, 9), *range(10, 14)]:  # segment 9 missing
        assert index.apply_log(PG, wal(segno))
    assert not index.apply_log(PG, wal(4))  # redelivery
    index.apply_backup(PG, base("b1", 2 * SEG + 40, 3 * SEG + 100, 3, Timeline(id=1)))
    index.apply_backup(PG, base("b2", 10 * SEG + 40, 10 * SEG + 500, 10, Timeline(id=1)))
    return index


def test_postgres_windows_gaps_and_lag(pg_index: CatalogIndex) -> None:
    reply = pg_index.windows("orders", now=T0 + timedelta(minutes=20))
    spans = [(str(w.start), str(w.end)) for w in reply.windows]
    assert spans == [("0/3000064", "0/9000000"), ("0/A0001F4", "0/E000000")]
    assert [g.description for g in reply.gaps] == [
        "gap at thread 1 sequence 9 (from position 0/9000000)"
    ]
    assert reply.rpo_lag_s == pytest.approx(7 * 60)  # newest restorable: segment 13's archive


def test_postgres_check_by_lsn_and_time(pg_index: CatalogIndex) -> None:
    ok = pg_index.check("orders", TargetPosition(position=Lsn.parse("0/5000000")))
    assert ok.restorable
    assert ok.base == "b1"
    gap = pg_index.check("orders", TargetPosition(position=Lsn.parse("0/9800000")))
    assert gap.code == "gap"
    assert "sequence 9" in gap.reason
    assert "(from position 0/9000000)" in gap.reason  # as PostgreSQL writes it, not 150994944
    assert str(gap.nearest_before) == "0/9000000"
    assert str(gap.nearest_after) == "0/A0001F5"
    wrong = pg_index.check("orders", TargetPosition(position=Scn(value=5)))
    assert wrong.code == "unsupported_target"
    in_time = pg_index.check("orders", TargetTime(at=T0 + timedelta(minutes=6)))
    assert in_time.restorable
    too_late = pg_index.check("orders", TargetTime(at=T0 + timedelta(hours=2)))
    assert too_late.code == "beyond_last_log"
    too_early = pg_index.check("orders", TargetTime(at=T0))
    assert too_early.code == "before_first_backup"
    assert pg_index.check("nope", TargetTime(at=T0)).code == "unknown_database"


def test_postgres_restore_plan_lists_objects_and_its_typed_target(pg_index: CatalogIndex) -> None:
    plan = pg_index.restore_plan("orders", TargetPosition(position=Lsn.parse("0/5000010")))
    assert plan.base.backup_id == "b1"
    assert [o.sequence for o in plan.objects] == [2, 3, 4, 5]
    # Positions are shared between neighbouring objects; the plan reads back as it was.
    assert RestorePlanReply.model_validate_json(plan.model_dump_json()) == plan
    assert plan.objects[0] == PlannedObject(
        key="orders/tl-00000001/logs/1/000000010000000000000002",
        lineage="tl-00000001",
        thread=1,
        sequence=2,
        first=Lsn(value=2 * SEG),
        next=Lsn(value=3 * SEG),
        size_bytes=SEG,
        crc32c="AAAAAA==",
    )
    assert plan.lineage == "tl-00000001"
    assert plan.target == TargetPosition(position=Lsn.parse("0/5000010"))
    with pytest.raises(NotRestorable, match="sequence 9"):
        pg_index.restore_plan("orders", TargetPosition(position=Lsn.parse("0/9800000")))
    # A target the check refuses is refused by the plan too, for the same reason.
    named = TargetName(name="before_upgrade")
    assert pg_index.check("orders", named).code == "unsupported_target"
    with pytest.raises(NotRestorable) as refused:
        pg_index.restore_plan("orders", named)
    assert refused.value.reply == pg_index.check("orders", named)


def test_windows_json_is_the_windows_model_serialized(pg_index: CatalogIndex) -> None:
    # The query path keeps the backups' JSON between changes and serializes the rest afresh.
    now = T0 + timedelta(minutes=30)

    def same() -> bool:
        model = pg_index.windows("orders", now=now).model_dump_json().encode()
        return pg_index.windows_json("orders", now=now) == model

    assert same()
    assert same()  # from the kept backups
    pg_index.apply_backup(PG, base("b9", 7 * SEG, 7 * SEG + 10, 8, Timeline(id=1)))
    assert b'"backup_id":"b9"' in pg_index.windows_json("orders", now=now)
    assert same()
    pg_index.remove_backup("orders", "b9")
    assert b'"backup_id":"b9"' not in pg_index.windows_json("orders", now=now)
    assert same()


def test_restore_plan_json_is_the_plan_model_serialized(pg_index: CatalogIndex) -> None:
    # The query path serializes plain values; it must say exactly what the model would.
    for target in (
        TargetPosition(position=Lsn.parse("0/5000010")),
        TargetTime(at=T0 + timedelta(minutes=4, seconds=30)),
    ):
        plan = pg_index.restore_plan("orders", target)
        assert pg_index.restore_plan_json("orders", target) == plan.model_dump_json().encode()
    with pytest.raises(NotRestorable, match="sequence 9"):
        pg_index.restore_plan_json("orders", TargetPosition(position=Lsn.parse("0/9800000")))


def test_retention_keeps_the_base_of_the_oldest_wanted_window(pg_index: CatalogIndex) -> None:
    preview = pg_index.retention_preview("orders", 0, now=T0 + timedelta(minutes=11))
    assert preview.oldest_kept_base == "b2"
    assert preview.delete_backups == ["b1"]
    assert preview.delete_logs == 7  # segments 2..8, all before b2's start
    nothing = pg_index.retention_preview("orders", 1, now=T0 + timedelta(minutes=11))
    assert nothing.delete_backups == []
    assert nothing.delete_logs == 0


def test_timeline_branch_continues_windows() -> None:
    index = CatalogIndex()
    for segno in range(2, 8):
        index.apply_log(PG, wal(segno))
    index.apply_backup(PG, base("b1", 2 * SEG, 2 * SEG + 10, 3, Timeline(id=1)))
    branch = 5 * SEG + 100
    for segno in range(5, 9):
        index.apply_log(PG, wal(segno, tl=2, parent=1, branch=branch))
    assert index.snapshot("orders") == [
        ("tl-00000001", 2 * SEG + 10, 8 * SEG),
        ("tl-00000002", branch, 9 * SEG),
    ]
    plan = index.restore_plan(
        "orders", TargetPosition(position=Lsn(value=7 * SEG)), lineage="tl-00000002"
    )
    assert [(o.lineage, o.sequence) for o in plan.objects] == [
        ("tl-00000001", 2),
        ("tl-00000001", 3),
        ("tl-00000001", 4),
        ("tl-00000001", 5),
        ("tl-00000002", 5),
        ("tl-00000002", 6),
        ("tl-00000002", 7),
    ]
    assert plan.lineage == "tl-00000002"


def redo(thread: int, seq: int, first: int, nxt: int) -> LogArchived:
    return LogArchived(
        lineage=Incarnation(resetlogs_id=1111, resetlogs_scn=Scn(value=1)),
        kind="redo",
        thread=thread,
        sequence=seq,
        first=Scn(value=first),
        next=Scn(value=nxt),
        first_time=T0 + timedelta(seconds=first),
        next_time=T0 + timedelta(seconds=nxt),
        size_bytes=512,
        crc32c="AAAAAA==",
        object_key=f"ledger/inc-1111/logs/{thread}/{seq:010d}",
        node="n1",
        archived_at=T0 + timedelta(seconds=nxt),
        stored_at=T0 + timedelta(seconds=nxt + 1),
    )


def test_oracle_rac_until_scn_and_sequence() -> None:
    index = CatalogIndex()
    inc = Incarnation(resetlogs_id=1111, resetlogs_scn=Scn(value=1))
    for seq in range(1, 11):
        index.apply_log(ORA, redo(1, seq, seq * 100, (seq + 1) * 100))
        if seq != 6:
            index.apply_log(ORA, redo(2, seq, seq * 100 + 50, (seq + 1) * 100 + 50))
    index.apply_backup(ORA, base("L0", 160, 250, 4, inc))
    verdict = index.check("ledger", TargetPosition(position=Scn(value=700)))
    assert verdict.code == "gap"
    assert verdict.reason == "gap at thread 2 sequence 6 (from position 650)"
    plan = index.restore_plan("ledger", TargetPosition(position=Scn(value=400)))
    assert plan.target == TargetPosition(position=Scn(value=400))
    assert plan.lineage == inc.key
    assert index.restore_plan_json("ledger", TargetPosition(position=Scn(value=400))) == (
        plan.model_dump_json().encode()
    )
    by_seq = index.restore_plan("ledger", TargetSequence(thread=1, sequence=4))
    assert by_seq.target == TargetSequence(thread=1, sequence=4)
    assert index.check("ledger", TargetSequence(thread=1, sequence=4)).restorable


def test_a_partial_segment_does_not_extend_the_old_timeline() -> None:
    index = CatalogIndex()
    for segno in range(2, 6):
        index.apply_log(PG, wal(segno))
    index.apply_backup(PG, base("b1", 2 * SEG, 2 * SEG + 10, 3, Timeline(id=1)))
    partial = wal(6).model_copy(
        update={
            "file_name": wal(6).file_name + ".partial",
            "object_key": wal(6).object_key + ".partial",
        }
    )
    assert index.apply_log(PG, partial)
    assert not index.apply_log(PG, partial)
    branch = 6 * SEG + 0xA0
    for segno in (6, 7):
        index.apply_log(PG, wal(segno, tl=2, parent=1, branch=branch))
    assert index.snapshot("orders") == [
        ("tl-00000001", 2 * SEG + 10, 6 * SEG),  # not up to the switch inside segment 6
        ("tl-00000002", branch, 8 * SEG),
    ]
