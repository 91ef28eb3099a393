"""The Oracle source, driven by a test double of V$ARCHIVED_LOG (`tests/doubles`), not Oracle."""

from __future__ import annotations

from pathlib import Path

import pytest

from schemas import Incarnation
from schemas.messages import AlarmReason
from services.archiver.journal import LogState
from services.archiver.oracle import ARCHIVED_LOGS_SQL, OracleArchiveSource
from services.archiver.settings import ArchivedDatabase
from services.blobstore import crc32c_of_bytes
from tests.doubles.oracle_archived_log import BLOCK_SIZE, ArchivedLogViewDouble
from tests.unit.archiver_rig import Rig

pytestmark = pytest.mark.unit

DBID = 1_234_567_890


def oracle(
    dest: Path, dbid: int = DBID, **knobs: float
) -> tuple[OracleArchiveSource, ArchivedLogViewDouble]:
    dest.mkdir(exist_ok=True)
    view = ArchivedLogViewDouble(dest=dest, dbid=dbid)
    database = ArchivedDatabase(
        uid="erp-prod",
        engine="oracle",
        name="ERPPROD",
        system_id=DBID,
        archive_dest_id=1,
        oracle={"dsn": "erp-db:1521/ERPPROD", "user": "C##TIDEMARK", "password_file": "pw"},
        **knobs,
    )
    return OracleArchiveSource(database, view), view


def test_the_query_takes_only_available_archived_logs_of_one_destination() -> None:
    sql = " ".join(ARCHIVED_LOGS_SQL.split())
    for clause in (
        "FROM v$archived_log",
        "dest_id = :dest_id",
        "archived = 'YES'",
        "status = 'A'",
        "standby_dest = 'NO'",
    ):
        assert clause in sql


async def test_complete_logs_are_archived_and_an_incomplete_one_waits(tmp_path: Path) -> None:
    source, view = oracle(tmp_path / "arch")
    first = view.archive(1, 101)
    view.archive(2, 57, blocks=64, written_blocks=64)  # exactly BLOCKS * BLOCK_SIZE: complete
    growing = view.archive(1, 102, written_blocks=10)  # ARCn still writing
    rig = Rig(tmp_path, sources=[source])
    streamer = await rig.start()
    await rig.until(lambda: len(rig.sink.archived) == 2)
    await rig.until(lambda: streamer.backlogs()["erp-prod"].not_ready == 1)
    key = "erp-prod/inc-1100000001/logs/1/0000000102"
    assert await rig.store.head(key) is None, "an incomplete file is not uploaded"

    view.finish_writing(growing)
    await rig.until(lambda: len(rig.sink.archived) == 3)

    events = {e.object_key: e for e in rig.sink.archived}
    assert set(events) == {
        "erp-prod/inc-1100000001/logs/1/0000000101",
        "erp-prod/inc-1100000001/logs/2/0000000057",
        key,
    }
    one = events["erp-prod/inc-1100000001/logs/1/0000000101"]
    assert isinstance(one.lineage, Incarnation)
    assert (one.kind, one.thread, one.sequence, one.file_name) == ("redo", 1, 101, None)
    assert (one.first.value, one.next.value) == (9_101_000, 9_102_000)  # type: ignore[union-attr]
    assert one.first_time is not None
    assert one.next_time is not None
    assert one.crc32c == crc32c_of_bytes(first.read_bytes())
    assert one.size_bytes == 65 * BLOCK_SIZE
    info = await rig.store.head(key)
    assert info is not None
    assert (info.metadata["engine"], info.metadata["first"]) == ("oracle", "9102000")
    # Releasing an Oracle log leaves the file to RMAN's deletion policy.
    await rig.until(lambda: getattr(streamer.entry(key), "state", None) is LogState.PUBLISHED)
    assert await streamer.release(key, events[key].crc32c) is LogState.RELEASED
    assert growing.exists()
    await rig.stop()


async def test_a_file_larger_than_the_control_file_says_is_refused(tmp_path: Path) -> None:
    source, view = oracle(tmp_path / "arch")
    view.archive(1, 7, blocks=64, written_blocks=70)
    rig = Rig(tmp_path, sources=[source])
    await rig.start()
    await rig.until(lambda: len(rig.sink.alarms) == 1)
    await rig.stop()
    alarm = rig.sink.alarms[0]
    assert alarm.reason is AlarmReason.INVALID
    assert alarm.object_key == "erp-prod/inc-1100000001/logs/1/0000000007"
    assert rig.sink.archived == []


async def test_a_listed_log_missing_from_disk_is_reported_unreadable(tmp_path: Path) -> None:
    source, view = oracle(tmp_path / "arch")
    view.archive(1, 8).unlink()
    rig = Rig(tmp_path, sources=[source])
    await rig.start()
    await rig.until(lambda: len(rig.sink.alarms) == 1)
    await rig.stop()
    assert rig.sink.alarms[0].reason is AlarmReason.UNREADABLE
    assert "cannot be read" in rig.sink.alarms[0].detail


async def test_a_session_to_another_database_is_refused(tmp_path: Path) -> None:
    source, view = oracle(tmp_path / "arch", dbid=DBID + 1)
    view.archive(1, 9)
    rig = Rig(tmp_path, sources=[source])
    streamer = await rig.start()
    await rig.until(lambda: len(rig.sink.alarms) == 1)
    await rig.stop()
    assert rig.sink.alarms[0].reason is AlarmReason.FOREIGN_ARCHIVE
    assert "DBID" in (streamer.backlogs()["erp-prod"].blocked or "")
    assert rig.sink.archived == []


async def test_after_the_first_look_only_rows_past_the_last_recid_are_read(tmp_path: Path) -> None:
    source, view = oracle(tmp_path / "arch", full_read_s=3600)
    view.archive(1, 1)
    view.archive(1, 2)
    rig = Rig(tmp_path, sources=[source])
    await rig.start()
    await rig.until(lambda: len(rig.sink.archived) == 2)
    view.archive(1, 3)
    await rig.until(lambda: len(rig.sink.archived) == 3)
    await rig.stop()
    assert view.asked_after[0] == 0, "the first look reads the whole view"
    assert 2 in view.asked_after[1:]
    assert set(view.asked_after[1:]) <= {2, 3}, "later looks read only new rows"


async def test_a_switched_log_missing_from_the_destination_is_a_gap(tmp_path: Path) -> None:
    source, view = oracle(tmp_path / "arch", gap_grace_s=0, full_read_s=0.05)
    view.archive(1, 10)
    view.switch_only(1, 11)  # lost before the archiver saw it
    view.archive(1, 12)
    view.archive(2, 5)
    view.switch_only(2, 6)  # switched out, never archived here, nothing after it yet
    rig = Rig(tmp_path, sources=[source])
    await rig.start()
    await rig.until(lambda: len(rig.sink.alarms) == 2 and len(rig.sink.archived) == 3)
    alarms = {a.object_key: a for a in rig.sink.alarms}
    gap = alarms["erp-prod/inc-1100000001/logs/1/0000000011"]
    assert gap.reason is AlarmReason.UNREADABLE
    assert "gap: thread 1 sequence 11" in gap.detail
    assert "SCN 9011000 to 9012000" in gap.detail, "V$LOG_HISTORY says which redo is missing"
    assert "gap: thread 2 sequence 6" in alarms["erp-prod/inc-1100000001/logs/2/0000000006"].detail

    # The log turns up after all (restored from elsewhere): it is archived as usual.
    view.archive(1, 11)
    await rig.until(lambda: len(rig.sink.archived) == 4)
    await rig.stop()
    assert len(rig.sink.alarms) == 2, "a gap is reported once"


async def test_a_log_missing_for_less_than_the_grace_is_not_a_gap_yet(tmp_path: Path) -> None:
    # ARCn processes may finish logs out of order: 21 before 20.
    source, view = oracle(tmp_path / "arch", gap_grace_s=3600, full_read_s=0.01)
    view.archive(1, 19)
    view.switch_only(1, 20)
    view.archive(1, 21)
    rig = Rig(tmp_path, sources=[source])
    await rig.start()
    await rig.until(lambda: len(rig.sink.archived) == 2 and view.queries >= 5)
    await rig.stop()
    assert rig.sink.alarms == []
