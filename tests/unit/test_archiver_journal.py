"""The archiver's journal (its state machine and its survival across restarts), the object key
layout and metadata, deterministic event ids, and the settings section."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from pydantic import ValidationError

from schemas import DatabaseRef, Engine, Incarnation, Lsn, Scn, Timeline
from services.archiver.events import log_message_id
from services.archiver.journal import TRANSITIONS, IllegalTransition, Journal, LogState
from services.archiver.keys import log_key, object_metadata, owner_key
from services.archiver.settings import ArchiverSettings
from services.archiver.sources import LoggedFile
from services.blobstore import Digest
from services.settings import Settings

pytestmark = pytest.mark.unit

T0 = datetime(2026, 1, 31, 12, 0, 3, 250_000, tzinfo=UTC)
PG = DatabaseRef(uid="orders-db", engine=Engine.POSTGRES, name="orders", system_id=7312001)
ORA = DatabaseRef(uid="erp-prod", engine=Engine.ORACLE, name="ERPPROD", system_id=1234567890)


def wal(number: int = 0x16B3, name: str | None = None, timeline: int = 1) -> LoggedFile:
    size = 16 << 20
    return LoggedFile(
        database=PG,
        lineage=Timeline(id=timeline),
        kind="wal",
        thread=1,
        sequence=number,
        name=name or f"{timeline:08X}{number >> 8:08X}{number & 0xFF:08X}",
        path=Path("/spool/ready") / (name or "x"),
        size=size,
        archived_at=T0,
        first=Lsn(value=number * size),
        next=Lsn(value=(number + 1) * size),
        fingerprint=(1, 2, size, 3, 4),
    )


def redo(sequence: int = 1841, thread: int = 2) -> LoggedFile:
    return LoggedFile(
        database=ORA,
        lineage=Incarnation(resetlogs_id=1100000001, resetlogs_scn=Scn(value=1)),
        kind="redo",
        thread=thread,
        sequence=sequence,
        name=f"{thread}_{sequence}_1100000001.arc",
        path=Path("/arch") / f"{thread}_{sequence}_1100000001.arc",
        size=512 * 65,
        archived_at=T0,
        first=Scn(value=9_000_000),
        next=Scn(value=9_001_000),
        first_time=T0 - timedelta(minutes=5),
        next_time=T0,
        fingerprint=(1, 2, 3, 4, 5),
    )


# -- journal ---------------------------------------------------------------------------------


@pytest.fixture
def journal(tmp_path: Path) -> Journal:
    return Journal(tmp_path / "archiver" / "journal.sqlite")


def test_a_log_walks_discovered_stored_published_released(journal: Journal) -> None:
    log = wal()
    key = log_key("", log)
    (entry,) = journal.discovered([(key, log, str(log_message_id(log)))])
    assert entry.state is LogState.DISCOVERED
    assert entry.log == log
    assert journal.failed_attempt(key, "RetryableBlobError: 503") == 1
    entry = journal.stored(key, crc32c="q83vEg==", size=log.size, compression="none",
                           stored_crc32c="q83vEg==")  # fmt: skip
    assert (entry.state, entry.crc32c, entry.attempts, entry.last_error) == (
        LogState.STORED,
        "q83vEg==",
        1,
        None,
    )
    assert entry.stored_at is not None
    assert journal.published(key).state is LogState.PUBLISHED
    assert journal.released(key).state is LogState.RELEASED
    # The same file pushed again (PostgreSQL re-ran archive_command) starts a new round.
    (again,) = journal.discovered([(key, log, str(log_message_id(log)))])
    assert (again.state, again.crc32c, again.attempts) == (LogState.DISCOVERED, None, 0)


@pytest.mark.parametrize(
    ("steps", "illegal"),
    [
        ([], "stored"),
        ([], "published"),
        (["discovered"], "published"),
        (["discovered"], "released"),
        (["discovered", "stored"], "discovered"),
        (["discovered", "stored", "published"], "stored"),
        (["discovered", "conflict"], "stored"),
    ],
)
def test_moves_outside_the_table_are_refused(
    journal: Journal, steps: list[str], illegal: str
) -> None:
    log = wal()
    key = log_key("", log)
    mid = str(log_message_id(log))
    do = {
        "discovered": lambda: journal.discovered([(key, log, mid)]),
        "stored": lambda: journal.stored(
            key, crc32c="q83vEg==", size=1, compression="none", stored_crc32c="q83vEg=="
        ),
        "published": lambda: journal.published(key),
        "released": lambda: journal.released(key),
        "conflict": lambda: journal.rejected(key, log, LogState.CONFLICT, "x", message_id=mid),
    }
    for step in steps:
        do[step]()
    current = journal.get(key)
    assert LogState(illegal) not in TRANSITIONS[current.state if current else None]
    with pytest.raises(IllegalTransition):
        do[illegal]()
    after = journal.get(key)
    assert (after.state if after else None) == (current.state if current else None)


def test_every_state_is_in_the_table_and_documented() -> None:
    assert set(TRANSITIONS) == {None, *LogState}
    for state in LogState:
        assert state.__doc__, state


def test_the_journal_survives_a_restart(tmp_path: Path) -> None:
    path = tmp_path / "journal.sqlite"
    first = Journal(path)
    a, b = wal(1), wal(2)
    first.discovered([(log_key("", a), a, "m1"), (log_key("", b), b, "m2")])
    first.stored(log_key("", a), crc32c="q83vEg==", size=1, compression="zstd",
                 stored_crc32c="AAAAAA==")  # fmt: skip
    first.failed_attempt(log_key("", b), "503")
    # No close(): as after a SIGKILL, only committed transactions count.
    second = Journal(path)
    states = {e.key: (e.state, e.attempts, e.compression) for e in second.entries()}
    assert states == {
        log_key("", a): (LogState.STORED, 0, "zstd"),
        log_key("", b): (LogState.DISCOVERED, 1, None),
    }
    assert [e.key for e in second.entries("orders-db", LogState.DISCOVERED)] == [log_key("", b)]
    assert second.entries("erp-prod") == []
    mode = second._db.execute("PRAGMA journal_mode").fetchone()[0]
    sync = second._db.execute("PRAGMA synchronous").fetchone()[0]
    assert (mode, sync) == ("wal", 2)  # 2 = FULL
    first.close()
    second.close()


def test_released_logs_are_pruned_after_the_retention(journal: Journal) -> None:
    done, busy = wal(1), wal(2)
    for log in (done, busy):
        journal.discovered([(log_key("", log), log, "m")])
        journal.stored(log_key("", log), crc32c="q83vEg==", size=1, compression="none",
                       stored_crc32c="q83vEg==")  # fmt: skip
        journal.published(log_key("", log))
    journal.released(log_key("", done))
    assert journal.prune_released(datetime.now(UTC) - timedelta(days=1)) == []
    assert journal.prune_released(datetime.now(UTC) + timedelta(seconds=1)) == [log_key("", done)]
    assert [e.key for e in journal.entries()] == [log_key("", busy)]


def test_problem_files_are_reported_once_per_version(journal: Journal) -> None:
    path = Path("/spool/ready/notes.txt")
    assert journal.problem_is_new(path, "orders-db", (1, 2, 3, 4, 5), "invalid", "not WAL")
    assert not journal.problem_is_new(path, "orders-db", (1, 2, 3, 4, 5), "invalid", "not WAL")
    assert journal.problem_is_new(path, "orders-db", (1, 2, 9, 4, 5), "invalid", "not WAL")
    assert journal.problem_count("orders-db") == 1
    journal.forget_problems("orders-db", keep=set())
    assert journal.problem_count("orders-db") == 0


# -- keys and metadata -----------------------------------------------------------------------


def test_key_layout() -> None:
    segment = wal(0x16B3, "0000000100000016000000B3")
    assert log_key("", segment) == "orders-db/tl-00000001/logs/1/0000000100000016000000B3"
    assert log_key("prod/eu", segment) == (
        "prod/eu/orders-db/tl-00000001/logs/1/0000000100000016000000B3"
    )
    partial = segment.model_copy(update={"name": "0000000100000016000000B3.partial"})
    assert log_key("", partial).endswith("/logs/1/0000000100000016000000B3.partial")
    history = segment.model_copy(
        update={"kind": "history", "name": "0000000A.history", "lineage": Timeline(id=10)}
    )
    assert log_key("", history) == "orders-db/tl-0000000A/history/0000000A.history"
    backup = segment.model_copy(
        update={"kind": "backup_history", "name": "0000000100000016000000B3.00000028.backup"}
    )
    assert log_key("", backup) == (
        "orders-db/tl-00000001/history/0000000100000016000000B3.00000028.backup"
    )
    assert log_key("", redo(1841, 2)) == "erp-prod/inc-1100000001/logs/2/0000001841"
    assert owner_key("", "orders-db") == "orders-db/owner.json"
    assert owner_key("prod", "orders-db") == "prod/orders-db/owner.json"


def test_object_metadata_describes_the_log_in_strings() -> None:
    meta = object_metadata(redo(), Digest(crc32c="q83vEg==", size=512 * 65), "zstd")
    assert all(isinstance(v, str) for v in meta.values())
    assert meta == {
        "engine": "oracle",
        "database": "erp-prod",
        "system_id": "1234567890",
        "lineage": "inc-1100000001",
        "kind": "redo",
        "thread": "2",
        "sequence": "1841",
        "file_name": "",
        "first": "9000000",
        "next": "9001000",
        "first_time": "2026-01-31T11:55:03.250000+00:00",
        "next_time": "2026-01-31T12:00:03.250000+00:00",
        "archived_at": "2026-01-31T12:00:03.250000+00:00",
        "size": str(512 * 65),
        "crc32c": "q83vEg==",
        "compression": "zstd",
        "enabled-threads": "",  # until the Oracle source reads V$THREAD
        "disabled-threads": "",
    }
    assert object_metadata(wal(0x16B3), Digest("q83vEg==", 1), "none")["first"] == "16/B3000000"
    assert object_metadata(wal(0x16B3), Digest("q83vEg==", 1), "none")["enabled-threads"] == "1"


# -- deterministic ids -----------------------------------------------------------------------


def test_event_ids_are_deterministic_uuid7_from_the_logs_identity() -> None:
    one = log_message_id(wal(5))
    assert one == log_message_id(wal(5)), "the same log always gets the same id"
    assert one.version == 7
    assert one.variant == uuid.RFC_4122
    assert one.int >> 80 == int(T0.timestamp() * 1000), "ms of archived_at, so ids sort by time"
    others = {
        log_message_id(wal(6)),
        log_message_id(wal(5, timeline=2)),
        log_message_id(wal(5).model_copy(update={"name": wal(5).name + ".partial"})),
        log_message_id(wal(5).model_copy(update={"database": PG.model_copy(update={"uid": "b"})})),
        log_message_id(redo(5, 1)),
        log_message_id(redo(5, 2)),
    }
    assert one not in others
    assert len(others) == 6


# -- settings --------------------------------------------------------------------------------


def test_archiver_settings_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(
        "TIDEMARK_DATABASES",
        '[{"uid": "orders-db", "engine": "postgres", "name": "orders", "system_id": 7312001,'
        ' "postgres": {"data_dir": "/srv/pg/orders-db", "spool_dir": "/srv/spool/orders-db"}}]',
    )
    monkeypatch.setenv("TIDEMARK_ARCHIVER__COMPRESSION", "zstd")
    settings = Settings()
    archiver = settings.archiver
    assert (archiver.parallelism, archiver.compression, archiver.rescan_s) == (4, "zstd", 1.0)
    (database,) = archiver.databases
    assert database.ref == PG
    assert archiver.store_url_for(Path("/var/lib/tm")) == "file:///var/lib/tm/store"
    assert archiver.journal_for(Path("/var/lib/tm")) == Path("/var/lib/tm/archiver/journal.sqlite")


@pytest.mark.parametrize(
    "databases",
    [
        [{"uid": "a", "engine": "postgres", "name": "a", "system_id": 1}],  # no spool_dir
        [{"uid": "a", "engine": "oracle", "name": "a"}],  # no system_id
        [
            {"uid": "a", "engine": "oracle", "name": "a", "system_id": 1},
            {"uid": "a", "engine": "oracle", "name": "b", "system_id": 2},
        ],
    ],
)
def test_archiver_settings_refuse_what_cannot_work(databases: list[dict[str, object]]) -> None:
    with pytest.raises(ValidationError):
        ArchiverSettings.model_validate({"databases": databases})
