"""The Oracle session over python-oracledb, without an Oracle: no database runs here.

What these tests can reach: the SQL constants (as text), the fetch loop and row mapping through
labelled fake cursors and connections shaped like python-oracledb's (`FakeAsyncConnection` and
`FakeConnection` below: not the driver), the error mapping, the time zone check, and the
settings that say how to connect. What they cannot: that Oracle accepts the SQL and that the
columns exist as named; those facts come from Oracle's reference (V$ARCHIVED_LOG, V$LOG_HISTORY,
V$BACKUP_PIECE, V$RMAN_STATUS, V$SESSION_LONGOPS), and the statements run on a real database
only outside this suite.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import oracledb
import pytest
from pydantic import ValidationError

from services.archiver.settings import ArchivedDatabase, ArchiverSettings, OracleConnection
from services.engines.oracle import datapump as dp
from services.engines.oracle.datapump import DataPumpSql
from services.engines.oracle.migration_steps import LOCK_SQL
from services.engines.oracle.session import (
    ARCHIVED_LOGS_SQL,
    BACKUP_DATAFILES_SQL,
    BACKUP_PIECES_SQL,
    DATABASE_SQL,
    INCARNATIONS_SQL,
    LOG_HISTORY_SQL,
    LONGOPS_SQL,
    RMAN_STATUS_SQL,
    THREADS_SQL,
    AsyncLink,
    BackupDatafileRow,
    ConnectSettings,
    LongOpRow,
    OracleDbSession,
    OracleSessionError,
    RmanProgress,
    ThreadLink,
    open_link,
    read_password,
)

pytestmark = [pytest.mark.unit, pytest.mark.oracle]

ALL_SQL = [
    DATABASE_SQL,
    INCARNATIONS_SQL,
    ARCHIVED_LOGS_SQL,
    LOG_HISTORY_SQL,
    THREADS_SQL,
    BACKUP_PIECES_SQL,
    BACKUP_DATAFILES_SQL,
    RMAN_STATUS_SQL,
    LONGOPS_SQL,
]


def settings(tmp_path: Path, **overrides: Any) -> OracleConnection:
    password = tmp_path / "password"
    password.write_text("s3cret-value\n")
    fields: dict[str, Any] = {
        "dsn": "erp-db:1521/ERPPROD",
        "user": "C##TIDEMARK",
        "password_file": password,
        "arraysize": 2,
    }
    return OracleConnection(**{**fields, **overrides})


# -- fakes shaped like python-oracledb (not the driver) -----------------------------------------

ARCHIVED_COLUMNS = [
    "RECID", "DEST_ID", "NAME", "THREAD#", "SEQUENCE#", "RESETLOGS_ID", "RESETLOGS_CHANGE#",
    "FIRST_CHANGE#", "NEXT_CHANGE#", "FIRST_TIME", "NEXT_TIME", "BLOCKS", "BLOCK_SIZE",
    "COMPLETION_TIME", "ARCHIVED", "STATUS", "STANDBY_DEST", "DELETED",
]  # fmt: skip


def archived_row(sequence: int) -> tuple[Any, ...]:
    """A V$ARCHIVED_LOG row as python-oracledb returns it: DATEs naive, in the server's zone."""
    t = datetime(2026, 7, 1, 14, sequence)
    return (
        sequence, 1, f"/arch/1_{sequence}_1100000001.arc", 1, sequence, 1_100_000_001, 1,
        1000 * sequence, 1000 * (sequence + 1), t, t, 64, 512, t, "YES", "A", "NO", "NO",
    )  # fmt: skip


@dataclass
class Script:
    """What the fake database answers: rows per statement, an error to raise once."""

    answers: dict[str, tuple[list[str], list[tuple[Any, ...]]]] = field(default_factory=dict)
    tz_offset: str = "+00:00"
    fail_with: BaseException | None = None
    executed: list[tuple[str, dict[str, object]]] = field(default_factory=list)
    fetch_sizes: list[int] = field(default_factory=list)
    closed_cursors: int = 0

    def answer(self, sql: str, binds: dict[str, object]) -> tuple[list[str], list[tuple[Any, ...]]]:
        self.executed.append((sql, binds))
        if self.fail_with is not None:
            error, self.fail_with = self.fail_with, None
            raise error
        if "SYSTIMESTAMP" in sql:
            return ["TZ_OFFSET"], [(self.tz_offset,)]
        return self.answers.get(sql, ([], []))


class FakeCursor:
    """A python-oracledb cursor's shape (execute, fetchmany, description). Not the driver."""

    def __init__(self, script: Script) -> None:
        self.script = script
        self.arraysize = 100
        self.description: list[tuple[str, ...]] | None = None
        self._rows: list[tuple[Any, ...]] = []

    def _execute(self, sql: str, binds: dict[str, object]) -> None:
        names, self._rows = self.script.answer(sql, binds)
        self.description = [(n,) for n in names]

    def _fetchmany(self, size: int) -> list[tuple[Any, ...]]:
        self.script.fetch_sizes.append(size)
        batch, self._rows = self._rows[:size], self._rows[size:]
        return batch

    def close(self) -> None:
        self.script.closed_cursors += 1


class FakeSyncCursor(FakeCursor):
    def execute(self, sql: str, binds: dict[str, object]) -> None:
        self._execute(sql, binds)

    def fetchmany(self, size: int) -> list[tuple[Any, ...]]:
        return self._fetchmany(size)


class FakeAsyncCursor(FakeCursor):
    async def execute(self, sql: str, binds: dict[str, object]) -> None:
        self._execute(sql, binds)

    async def fetchmany(self, size: int) -> list[tuple[Any, ...]]:
        return self._fetchmany(size)


class FakeAsyncConnection:
    """`oracledb.AsyncConnection`'s shape. Not the driver."""

    def __init__(self, script: Script) -> None:
        self.script = script
        self.closed = False

    def cursor(self) -> FakeAsyncCursor:
        return FakeAsyncCursor(self.script)

    async def close(self) -> None:
        self.closed = True


class FakeConnection:
    """`oracledb.Connection`'s shape (thick mode, blocking). Not the driver."""

    def __init__(self, script: Script) -> None:
        self.script = script
        self.closed = False

    def cursor(self) -> FakeSyncCursor:
        return FakeSyncCursor(self.script)

    def close(self) -> None:
        self.closed = True


@dataclass
class FakeDriverError:
    """What python-oracledb puts in `error.args[0]`: message, full_code, isrecoverable."""

    message: str
    full_code: str
    isrecoverable: bool = False


class Opener:
    """The session's `opener` seam: hands out fake connections and counts them."""

    def __init__(self, script: Script) -> None:
        self.script = script
        self.links: list[AsyncLink] = []
        self.connections: list[FakeAsyncConnection] = []

    async def __call__(self, settings: ConnectSettings) -> AsyncLink:
        connection = FakeAsyncConnection(self.script)
        self.connections.append(connection)
        link = AsyncLink(connection, settings.arraysize)
        self.links.append(link)
        return link


# -- the SQL -----------------------------------------------------------------------------------


@pytest.mark.parametrize("sql", ALL_SQL)
def test_statements_take_values_only_as_bind_variables(sql: str) -> None:
    assert sql.lstrip().upper().startswith("SELECT")
    assert "{" not in sql, "nothing is formatted into a statement"
    assert "%s" not in sql
    assert ";" not in sql, "python-oracledb refuses a trailing semicolon"


def test_archived_log_query_takes_new_available_copies_of_one_destination() -> None:
    sql = " ".join(ARCHIVED_LOGS_SQL.split())
    for clause in (
        "FROM v$archived_log",
        "dest_id = :dest_id",
        "recid > :after_recid",
        "archived = 'YES'",
        "status = 'A'",
        "standby_dest = 'NO'",
    ):
        assert clause in sql


def test_history_is_read_per_thread_and_incarnation() -> None:
    sql = " ".join(LOG_HISTORY_SQL.split())
    assert set(re.findall(r":(\w+)", sql)) == {"thread", "from_sequence", "resetlogs_id"}
    assert "h.resetlogs_id" not in sql, "V$LOG_HISTORY has no RESETLOGS_ID column"
    # Siblings share RESETLOGS_CHANGE#: the incarnation is matched on its time as well.
    assert (
        "ON i.resetlogs_change# = h.resetlogs_change# AND i.resetlogs_time = h.resetlogs_time"
        in sql
    )


def test_backup_queries_find_a_job_by_its_command_id() -> None:
    for sql in (BACKUP_PIECES_SQL, BACKUP_DATAFILES_SQL, RMAN_STATUS_SQL):
        assert set(re.findall(r":(\w+)", sql)) == {"command_id"}
    assert "absolute_fuzzy_change#" in BACKUP_DATAFILES_SQL
    assert "opname LIKE 'RMAN%'" in LONGOPS_SQL


# -- fetching ----------------------------------------------------------------------------------


async def test_rows_are_fetched_in_batches_of_arraysize_and_named_by_column() -> None:
    script = Script(answers={"Q": (["RECID", "THREAD#"], [(1, 1), (2, 1), (3, 2)])})
    link = AsyncLink(FakeAsyncConnection(script), arraysize=2)
    rows = await link.rows("Q", {"x": 1})
    assert rows == [
        {"recid": 1, "thread#": 1},
        {"recid": 2, "thread#": 1},
        {"recid": 3, "thread#": 2},
    ]
    assert script.fetch_sizes == [2, 2, 2], "two full batches, then the empty one that ends it"
    assert script.executed == [("Q", {"x": 1})]
    assert script.closed_cursors == 1


async def test_thick_mode_connections_are_used_from_a_thread_the_same_way() -> None:
    script = Script(answers={"Q": (["A"], [(1,), (2,), (3,)])})
    connection = FakeConnection(script)
    link = ThreadLink(connection, arraysize=2)
    assert await link.rows("Q", {}) == [{"a": 1}, {"a": 2}, {"a": 3}]
    assert script.closed_cursors == 1
    await link.close()
    assert connection.closed


async def test_archived_logs_are_mapped_with_times_in_utc(tmp_path: Path) -> None:
    zone = ZoneInfo("Europe/Paris")
    offset = datetime.now(zone).strftime("%z")
    script = Script(
        answers={ARCHIVED_LOGS_SQL: (ARCHIVED_COLUMNS, [archived_row(7), archived_row(8)])},
        tz_offset=f"{offset[:3]}:{offset[3:]}",
    )
    session = OracleDbSession(settings(tmp_path, time_zone="Europe/Paris"), opener=Opener(script))
    rows = await session.archived_logs(1, after_recid=6)
    assert [(r.thread, r.sequence, r.first_change, r.next_change) for r in rows] == [
        (1, 7, 7000, 8000),
        (1, 8, 8000, 9000),
    ]
    assert rows[0].available
    # 14:07 in Paris in July (CEST, UTC+2) is 12:07 UTC.
    assert rows[0].first_time == datetime(2026, 7, 1, 12, 7, tzinfo=UTC)
    assert (ARCHIVED_LOGS_SQL, {"dest_id": 1, "after_recid": 6}) in script.executed
    await session.close()


async def test_a_server_in_another_time_zone_than_configured_is_refused(tmp_path: Path) -> None:
    script = Script(tz_offset="+05:30")
    opener = Opener(script)
    session = OracleDbSession(settings(tmp_path), opener=opener)
    with pytest.raises(OracleSessionError, match=r"UTC\+05:30.*time_zone 'UTC'"):
        await session.database()
    assert opener.connections[0].closed, "the connection is not kept"


async def test_the_session_is_the_sql_of_data_pump_with_binds_only(tmp_path: Path) -> None:
    script = Script(answers={"SELECT username FROM dba_users WHERE username = :name": (
        ["USERNAME"], [("APP",)]
    )})  # fmt: skip
    session = OracleDbSession(settings(tmp_path), opener=Opener(script))
    sql: DataPumpSql = session
    assert await sql.rows("reading", dp.USER_SQL, name="APP") == [{"username": "APP"}]
    await sql.call("locking APP", LOCK_SQL, name="APP")
    assert script.executed[-1] == (LOCK_SQL, {"name": "APP"})
    script.fail_with = oracledb.DatabaseError(
        FakeDriverError("ORA-01918: user 'APP' does not exist", "ORA-01918")
    )
    with pytest.raises(OracleSessionError) as caught:
        await sql.call("locking APP", LOCK_SQL, name="APP")
    assert (caught.value.code, caught.value.retryable) == ("ORA-01918", False)


# -- errors ------------------------------------------------------------------------------------


async def test_a_lost_connection_is_retryable_and_the_next_call_reconnects(tmp_path: Path) -> None:
    script = Script(answers={THREADS_SQL: (["THREAD#", "STATUS", "ENABLED", "SEQUENCE#"], [])})
    opener = Opener(script)
    session = OracleDbSession(settings(tmp_path), opener=opener)
    assert await session.threads() == []
    lost = FakeDriverError("ORA-03113: end-of-file on communication channel", "ORA-03113", True)
    script.fail_with = oracledb.DatabaseError(lost)
    with pytest.raises(OracleSessionError) as caught:
        await session.threads()
    assert caught.value.retryable
    assert caught.value.code == "ORA-03113"
    assert opener.connections[0].closed
    assert await session.threads() == []
    assert len(opener.connections) == 2


async def test_a_refused_login_is_not_retryable_and_says_no_password(tmp_path: Path) -> None:
    script = Script()
    session = OracleDbSession(settings(tmp_path), opener=Opener(script))
    denied = FakeDriverError("ORA-01017: invalid username/password; logon denied", "ORA-01017")
    script.fail_with = oracledb.DatabaseError(denied)
    with pytest.raises(OracleSessionError) as caught:
        await session.database()
    assert not caught.value.retryable
    assert caught.value.code == "ORA-01017"
    assert "s3cret" not in str(caught.value)


def test_the_password_file_is_read_without_its_newline(tmp_path: Path) -> None:
    path = tmp_path / "pw"
    path.write_text("pa ss\n")
    assert read_password(path) == "pa ss"
    path.write_text("\n")
    with pytest.raises(OracleSessionError, match="is empty"):
        read_password(path)
    with pytest.raises(OracleSessionError, match="cannot read the password file"):
        read_password(tmp_path / "absent")


async def test_connecting_without_credentials_is_refused_before_the_network() -> None:
    @dataclass
    class Bare:
        dsn: str = "erp-db/ERPPROD"
        user: str | None = "C##TIDEMARK"
        password_file: Path | None = None
        wallet_dir: Path | None = None
        thick_mode: bool = False
        client_lib_dir: Path | None = None
        time_zone: str = "UTC"
        arraysize: int = 100

    with pytest.raises(OracleSessionError, match="password_file"):
        await open_link(Bare())


# -- settings ----------------------------------------------------------------------------------


def test_a_dsn_carrying_a_password_is_refused_without_echoing_it(tmp_path: Path) -> None:
    with pytest.raises(ValidationError) as caught:
        settings(tmp_path, dsn="system/hunter2@erp-db:1521/ERPPROD")
    assert "password" in str(caught.value)
    assert "hunter2" not in str(caught.value)
    # An easy connect string has slashes too, and is fine.
    assert settings(tmp_path, dsn="erp-db:1521/ERPPROD").dsn == "erp-db:1521/ERPPROD"


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"wallet_dir": "/wallet"}, "not both"),
        ({"password_file": None}, "not both or neither"),
        ({"user": None}, "password_file needs user"),
        ({"password_file": None, "wallet_dir": "/wallet"}, "needs thick_mode"),
        ({"client_lib_dir": "/opt/instantclient"}, "client_lib_dir is for thick_mode"),
        ({"time_zone": "Mars/Olympus"}, "not an IANA time zone"),
    ],
)
def test_connection_settings_are_validated(
    tmp_path: Path, overrides: Mapping[str, object], message: str
) -> None:
    with pytest.raises(ValidationError, match=message):
        settings(tmp_path, **overrides)


def test_a_wallet_in_thick_mode_is_a_way_in(tmp_path: Path) -> None:
    wallet = settings(
        tmp_path, password_file=None, user=None, wallet_dir="/wallet", thick_mode=True
    )
    assert wallet.wallet_dir == Path("/wallet")


def test_an_oracle_database_needs_its_session_and_one_driver_mode(tmp_path: Path) -> None:
    base: dict[str, Any] = {"engine": "oracle", "name": "ERP", "system_id": 1}
    with pytest.raises(ValidationError, match="needs its oracle section"):
        ArchivedDatabase(uid="erp", **base)
    thin = settings(tmp_path)
    thick = settings(tmp_path, thick_mode=True)
    with pytest.raises(ValidationError, match="mixes thick_mode and thin"):
        ArchiverSettings(
            databases=[
                ArchivedDatabase(uid="a", oracle=thin, **base),
                ArchivedDatabase(uid="b", oracle=thick, **base),
            ]
        )


# -- results -----------------------------------------------------------------------------------


def test_rman_progress_prefers_the_aggregate_rows() -> None:
    def op(name: str, sofar: int, total: int, remaining: int | None) -> LongOpRow:
        return LongOpRow(1, 2, name, sofar, total, "Blocks", remaining, 10)

    progress = RmanProgress(
        longops=(
            op("RMAN: aggregate input", 50, 200, 30),
            op("RMAN: full datafile backup", 10, 100, 5),
        )
    )
    assert progress.done_total() == (50, 200)
    assert progress.eta_s == 30
    assert RmanProgress().done_total() is None


def test_a_datafile_is_consistent_only_past_its_absolute_fuzzy_scn() -> None:
    t = datetime(2026, 1, 1, tzinfo=UTC)
    fuzzy = BackupDatafileRow(1, 1, 4, 0, 0, 5000, t, 5300, 1, t)
    clean = BackupDatafileRow(1, 1, 5, 0, 0, 5000, t, None, 1, t)
    assert (fuzzy.recoverable_after, clean.recoverable_after) == (5300, 5000)


def _shape_matches(value: ConnectSettings) -> Sequence[object]:
    return (value.dsn, value.arraysize)


def test_the_settings_section_has_the_shape_the_session_connects_with(tmp_path: Path) -> None:
    assert _shape_matches(settings(tmp_path)) == ("erp-db:1521/ERPPROD", 2)


def test_a_refused_dsn_is_not_echoed_from_the_archiver_section_either() -> None:
    with pytest.raises(ValidationError) as caught:
        ArchiverSettings.model_validate(
            {
                "databases": [
                    {
                        "uid": "erp",
                        "engine": "oracle",
                        "name": "ERP",
                        "system_id": 1,
                        "oracle": {"dsn": "system/hunter2@erp-db/ERP", "user": "u"},
                    }
                ]
            }
        )
    assert "hunter2" not in str(caught.value)
