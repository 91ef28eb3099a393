"""Where the simulated Oracle and the engine's scripts must behave as a real Oracle does (the
fidelity audit): times written in the server's zone, sibling incarnations kept apart, the real
autobackup piece line, RUN-scoped settings, the codes Oracle answers with, the state a failed
script leaves the instance in. Each test failed before the fix it pins."""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import pytest

from schemas import Engine, Incarnation, Scn, uuid7
from schemas.messages import BackupSpec, RunRestore
from schemas.messages.backups import BackupKind
from schemas.messages.common import ProgressUnit
from schemas.messages.restores import RestoreMode, RestorePlan, TargetPosition, TargetTime
from services.blobstore import MemoryStore
from services.engines.oracle.backup import run_backup
from services.engines.oracle.engine import OracleEngine, home_of
from services.executor.settings import ExecutorSettings, HostedDatabase, OracleInstance
from tests.oracle_sim.db import SimulatedOracle
from tests.oracle_sim.tools import install
from tests.oracle_sim.views import SimulatedViews

pytestmark = [pytest.mark.oracle]


class _Ctx:
    def __init__(self) -> None:
        self.job_id = uuid.uuid4()
        self.messages: list[str] = []

    async def progress(
        self,
        phase: str,
        *,
        done: int | None = None,
        total: int | None = None,
        unit: ProgressUnit | None = None,
        message: str = "",
    ) -> None:
        self.messages.append(message)


class _Rig:
    def __init__(self, tmp_path: Path, time_zone: str = "UTC") -> None:
        self.tmp = tmp_path
        self.db = SimulatedOracle.create(tmp_path / "sim", time_zone=time_zone)
        install(tmp_path / "home", tmp_path / "sim")
        self.hosted = HostedDatabase(
            uid="ora1",
            engine=Engine.ORACLE,
            name="TMSIM",
            system_id=1234567890,
            oracle=OracleInstance(
                oracle_home=tmp_path / "home",
                oracle_sid="TMSIM",
                staging_dir=tmp_path / "stage",
                dsn="sim:1521/TMSIM",
                user="C##TIDEMARK",
                password_file=tmp_path / "never-read",
                time_zone=time_zone,
            ),
        )
        self.engine = OracleEngine(ExecutorSettings(), views=lambda _: SimulatedViews(self.db))
        self.store = MemoryStore()

    async def backup(self, backup_id: str = "b1") -> str:
        outcome = await self.engine.backup(
            self.hosted,
            backup_id=backup_id,
            spec=BackupSpec(kind=BackupKind.FULL),
            store=self.store,
            prefix="tm",
            ctx=_Ctx(),
        )
        return outcome.manifest_key

    async def store_logs(self) -> list[str]:
        keys = []
        for row in self.db.archived_logs():
            key = f"tm/ora1/{row['resetlogs_id']}/logs/{row['thread#']}/{row['sequence#']}"
            if await self.store.head(key) is None and Path(row["name"]).exists():
                await self.store.put_file(key, row["name"])
            keys.append(key)
        return keys

    def command(self, target: Any, manifest_key: str, log_keys: list[str]) -> RunRestore:
        rid = int(self.db.database()["resetlogs_id"])
        return RunRestore(
            job_id=uuid.uuid4(),
            restore_id=uuid.uuid4(),
            target=target,
            mode=RestoreMode.IN_PLACE,
            plan=RestorePlan(
                base_backup_id="b1",
                base_manifest_key=manifest_key,
                log_keys=log_keys,
                lineage=Incarnation(resetlogs_id=rid, resetlogs_scn=Scn(value=1)),
            ),
        )

    async def restore(self, command: RunRestore) -> Any:
        return await self.engine.restore(
            self.hosted, command, store=self.store, prefix="tm", ctx=_Ctx()
        )


async def test_a_time_target_lands_on_its_scn_on_a_server_that_is_not_at_utc(
    tmp_path: Path,
) -> None:
    rig = _Rig(tmp_path, time_zone="America/New_York")
    for i in range(4):
        rig.db.insert(f"a{i}", thread=1 + i % 2)
    rig.db.archive_log_current()
    key = await rig.backup()
    for i in range(6):
        rig.db.insert(f"b{i}", thread=1 + i % 2)
    logs = rig.db.archive_log_current()
    until = min(x.next_scn for x in logs) - 2
    expected = rig.db.expected_contents(until)
    at = rig.db.time_of(until)
    command = rig.command(TargetTime(at=at), key, await rig.store_logs())

    await rig.restore(command)

    script = rig.db.runs("rman")[-1]
    local = at.astimezone(__import__("zoneinfo").ZoneInfo("America/New_York"))
    assert local.strftime("%Y-%m-%d %H:%M:%S") in script  # the server's wall clock, not UTC
    assert rig.db.table_contents() == expected


async def test_an_invalid_date_is_ora_01843_not_a_traceback(tmp_path: Path) -> None:
    rig = _Rig(tmp_path)
    result = await _rman(
        rig,
        "RUN {\n  SET UNTIL TIME \"TO_DATE('2026-13-01 00:00:00','YYYY-MM-DD HH24:MI:SS')\";\n"
        "  RESTORE DATABASE PREVIEW;\n}\n",
    )
    assert result.exit_code == 1
    assert any(
        line.startswith("ORA-01843: not a valid month") for line in result.coded_lines + result.tail
    )
    assert not any("Traceback" in line for line in result.coded_lines + result.tail)


async def _rman(rig: _Rig, script: str) -> Any:
    from services.engines.oracle.runner import Tool, run_tool

    assert rig.hosted.oracle is not None
    return await run_tool(home_of(rig.hosted.oracle), Tool.RMAN, script)


async def test_the_autobackup_piece_has_no_tag_line_and_is_uploaded_and_restored_from(
    tmp_path: Path,
) -> None:
    rig = _Rig(tmp_path)
    for i in range(4):
        rig.db.insert(f"a{i}", thread=1 + i % 2)
    assert rig.hosted.oracle is not None
    manifest = await run_backup(
        home_of(rig.hosted.oracle),
        SimulatedViews(rig.db),
        uid="ora1",
        backup_id="b1",
        spec=BackupSpec(kind=BackupKind.FULL),
        level=0,
        channels=1,
        stage_root=tmp_path / "stage",
        store=rig.store,
        prefix="tm",
        ctx=_Ctx(),
        controlfile="autobackup",
    )
    controlfiles = [p for p in manifest.oracle.pieces if p.controlfile]
    assert [p.name[:2] for p in controlfiles] == ["c-"]
    assert controlfiles[0].tag is None

    for i in range(4):
        rig.db.insert(f"b{i}", thread=1 + i % 2)
    logs = rig.db.archive_log_current()
    until = min(x.next_scn for x in logs) - 1
    expected = rig.db.expected_contents(until)
    command = rig.command(
        TargetPosition(position=Scn(value=until)),
        manifest.backup.manifest_key,
        await rig.store_logs(),
    )
    await rig.restore(command)
    assert rig.db.table_contents() == expected


# -- sibling incarnations (issue 17 item 2) -------------------------------------------------------


async def _two_siblings(rig: _Rig) -> tuple[int, int, int, int]:
    """A backup on the first incarnation P, a restore to SCN X (incarnation A, where a backup
    `bA` is taken and logs are switched), then a second restore to the same X through the
    current control file (RESET DATABASE TO INCARNATION 1): sibling B. Returns (X, P, A, B)
    RESETLOGS_IDs after X."""
    for i in range(4):
        rig.db.insert(f"a{i}", thread=1 + i % 2)
    rig.db.archive_log_current()
    key = await rig.backup()
    for i in range(4):
        rig.db.insert(f"b{i}", thread=1 + i % 2)
    logs = rig.db.archive_log_current()
    branch = min(x.next_scn for x in logs) - 1
    parent = int(rig.db.database()["resetlogs_id"])
    await rig.restore(
        rig.command(TargetPosition(position=Scn(value=branch)), key, await rig.store_logs())
    )
    first = int(rig.db.database()["resetlogs_id"])
    rig.db.insert("on A", thread=1)
    rig.db.archive_log_current()
    await rig.backup("bA")
    rig.db.archive_log_current()
    script = await _recover_in_place(rig, until=f"SCN {branch}", reset_to=1)
    result = await _rman(rig, script)
    assert result.exit_code == 0, result.coded_lines
    second = int(rig.db.database()["resetlogs_id"])
    return branch, parent, first, second


async def _recover_in_place(rig: _Rig, *, until: str, reset_to: int | None) -> str:
    """A restore through the mounted (current) control file: the store's pieces staged again
    (the engine's stage is gone) and cataloged with the destination's logs."""
    pieces = rig.tmp / "pieces"
    pieces.mkdir(exist_ok=True)
    async for info in rig.store.list("tm/ora1/"):
        if "/backups/" in info.key and not info.key.endswith(".json"):
            (pieces / info.key.rsplit("/", 1)[1]).write_bytes(await rig.store.get_bytes(info.key))
    reset = "" if reset_to is None else f"RESET DATABASE TO INCARNATION {reset_to};\n"
    return (
        "STARTUP FORCE MOUNT;\n"
        f"CATALOG START WITH '{pieces}/' NOPROMPT;\n"
        f"CATALOG START WITH '{rig.db.arch_dir}/' NOPROMPT;\n"
        f"{reset}"
        "RUN {\n"
        "  ALLOCATE CHANNEL ch1 DEVICE TYPE DISK;\n"
        f"  SET UNTIL {until};\n"
        "  RESTORE DATABASE;\n"
        "  RECOVER DATABASE;\n"
        "}\n"
        "ALTER DATABASE OPEN RESETLOGS;\n"
    )


async def test_sibling_incarnations_share_a_resetlogs_scn_and_keep_their_own_ids(
    tmp_path: Path,
) -> None:
    rig = _Rig(tmp_path)
    branch, _, first, second = await _two_siblings(rig)
    rig.db.archive_log_current()
    incs = {i["resetlogs_id"]: i for i in rig.db.incarnations()}
    assert incs[first]["resetlogs_change#"] == incs[second]["resetlogs_change#"] == branch
    assert incs[first]["resetlogs_time"] != incs[second]["resetlogs_time"]
    assert (incs[first]["status"], incs[second]["status"]) == ("ORPHAN", "CURRENT")
    assert incs[first]["prior_incarnation#"] == incs[second]["prior_incarnation#"] == 1

    # The backup taken on A names A, though B began at the same SCN (by SCN alone: B's id).
    from services.engines.oracle.views import SessionViews
    from tests.oracle_sim.session import SimulatedSession

    session = SimulatedSession(rig.db)
    rows = await SessionViews(session).backup_datafiles("TM_bA")
    assert rows
    assert {r.resetlogs_id for r in rows} == {first}
    # V$LOG_HISTORY per incarnation: A's switches are not B's.
    history_a = await session.log_history(1, 1, resetlogs_id=first)
    history_b = await session.log_history(1, 1, resetlogs_id=second)
    assert history_a
    assert history_b
    assert {h.resetlogs_time for h in history_a} == {incs[first]["resetlogs_time"]}
    assert {h.resetlogs_time for h in history_b} == {incs[second]["resetlogs_time"]}
    assert [h.sequence for h in await session.log_history(1, 1)] == [h.sequence for h in history_b]


async def test_a_gap_on_a_sibling_incarnation_is_reported_on_that_sibling(
    tmp_path: Path,
) -> None:
    from services.archiver.oracle import LogMissing, OracleArchiveSource
    from services.archiver.settings import ArchivedDatabase
    from tests.oracle_sim.db import switch_logfile
    from tests.oracle_sim.session import SimulatedSession

    rig = _Rig(tmp_path)
    for i in range(4):
        rig.db.insert(f"a{i}", thread=1 + i % 2)
    rig.db.archive_log_current()
    key = await rig.backup()
    for i in range(4):
        rig.db.insert(f"b{i}", thread=1 + i % 2)
    logs = rig.db.archive_log_current()
    branch = min(x.next_scn for x in logs) - 1
    await rig.restore(
        rig.command(TargetPosition(position=Scn(value=branch)), key, await rig.store_logs())
    )
    first = int(rig.db.database()["resetlogs_id"])
    source = OracleArchiveSource(_archived(tmp_path, ArchivedDatabase), SimulatedSession(rig.db))
    for _ in range(3):
        rig.db.archive_log_current()
        await source.discover()

    result = await _rman(rig, await _recover_in_place(rig, until=f"SCN {branch}", reset_to=1))
    assert result.exit_code == 0, result.coded_lines
    second = int(rig.db.database()["resetlogs_id"])
    rig.db.archive_log_current()
    with rig.db.transaction() as st:  # sequence 2 of thread 1 on B is lost before anyone reads it
        lost = switch_logfile(st, rig.db.arch_dir, 1)
        Path(lost.name).unlink()
        next(x for x in st.controlfile.archived_logs if x.recid == lost.recid).status = "D"
        switch_logfile(st, rig.db.arch_dir, 1)
    missing = []
    for _ in range(2):  # the new thread's history is read on the look after it is first seen
        found = await source.discover()
        missing += [p.log for p in found.problems if isinstance(p.error, LogMissing)]
    assert [(m.thread, m.sequence) for m in missing if m is not None] == [(1, lost.sequence)]
    lineage = missing[0].lineage if missing[0] is not None else None
    assert isinstance(lineage, Incarnation)
    assert lineage.resetlogs_id == second != first


def _archived(tmp_path: Path, settings: Any) -> Any:
    password = tmp_path / "oracle-password"
    password.write_text("never read: the session is simulated\n")
    return settings(
        uid="ora1",
        engine="oracle",
        name="TMSIM",
        system_id=1234567890,
        archive_dest_id=1,
        oracle={"dsn": "sim:1521/TMSIM", "user": "C##TIDEMARK", "password_file": password},
        gap_grace_s=0,
        full_read_s=1e-6,  # every look reads the view and the history whole
    )


# -- RAC threads (issue 17 item 3) ----------------------------------------------------------------


async def test_the_archiver_reports_every_enabled_thread_even_one_with_no_log_yet(
    tmp_path: Path,
) -> None:
    from services.archiver.keys import enabled_threads
    from services.archiver.oracle import OracleArchiveSource
    from services.archiver.settings import ArchivedDatabase
    from tests.oracle_sim.session import SimulatedSession

    db = SimulatedOracle.create(tmp_path / "sim", threads=2)
    source = OracleArchiveSource(_archived(tmp_path, ArchivedDatabase), SimulatedSession(db))
    db.insert("one", thread=1)
    db.switch_logfile(1)  # thread 2 has switched nothing yet: recovery still needs its redo
    found = await source.discover()
    assert [(log.thread, enabled_threads(log)) for log in found.logs] == [(1, (1, 2))]

    db.close_thread(2)  # CLOSED is still enabled, and a surviving instance archives its log
    logs = db.archive_log_current()
    assert sorted(x.thread for x in logs) == [1, 2]
    found = await source.discover()
    assert {(log.thread, log.sequence): log.enabled_threads for log in found.logs} == {
        (1, 1): (1, 2),
        (1, 2): (1, 2),
        (2, 1): (1, 2),
    }
    with pytest.raises(Exception, match="ORA-01089"):
        db.insert("on a closed instance", thread=2)

    db.disable_thread(2)
    db.switch_logfile(1)
    found = await source.discover()
    reported = {(log.thread, log.sequence): log.enabled_threads for log in found.logs}
    assert reported[(1, 3)] == (1,), "a disabled thread is not reported"
    assert reported[(2, 2)] is None, "a log of a thread since disabled: V$THREAD cannot say"


async def test_the_archiver_reports_a_disable_and_the_catalog_window_runs_past_it(
    tmp_path: Path,
) -> None:
    from datetime import UTC, datetime

    from services.archiver.events import log_archived
    from services.archiver.oracle import OracleArchiveSource
    from services.archiver.settings import ArchivedDatabase
    from services.catalog.index import CatalogIndex
    from tests.doubles.catalog_events import backup
    from tests.oracle_sim.session import SimulatedSession

    db = SimulatedOracle.create(tmp_path / "sim", threads=2)
    archived = _archived(tmp_path, ArchivedDatabase)
    source = OracleArchiveSource(archived, SimulatedSession(db))
    db.insert("one", thread=1)
    db.insert("two", thread=2)
    db.archive_log_current()  # thread 1 and 2 sequence 1
    db.close_thread(2)
    db.disable_thread(2)  # archives thread 2 sequence 2 first
    disabled_at = int(db.threads()[1]["disable_change#"])
    for i in range(3):
        db.insert(f"after {i}", thread=1)
        db.switch_logfile(1)  # thread 1 sequences 2, 3, 4
    found = await source.discover()
    logs = {(x.thread, x.sequence): x for x in found.logs}
    newest = logs[(1, 4)]
    assert newest.disabled_threads is not None
    (stretch,) = newest.disabled_threads
    assert (stretch.thread, stretch.last_sequence, stretch.at.value) == (2, 2, disabled_at)
    assert newest.next is not None
    assert stretch.until.value >= newest.next.value, (
        "V$THREAD is read after the logs: the stretch reaches past the newest"
    )

    index = CatalogIndex()
    at = datetime.now(UTC)
    for x in found.logs:
        event = log_archived(
            x,
            key=f"ora1/{x.thread}/{x.sequence}",
            crc32c="AAAAAA==",
            size=x.size,
            compression="none",
            node="n1",
            stored_at=at,
            source="archiver",
            message_id=uuid7(),
        )
        index.apply_log(archived.ref, event.data)
    first = logs[(1, 1)]
    assert first.first is not None
    assert isinstance(first.lineage, Incarnation)
    start = first.first.value
    index.apply_backup(
        archived.ref, backup("L0", start, start + 1, first.lineage, database=archived.ref)
    )
    (window,) = index.windows(archived.ref.uid).windows
    assert window.end.value == newest.next.value > disabled_at


async def test_an_open_thread_cannot_be_disabled_and_recovery_past_a_disable_needs_none_of_it(
    tmp_path: Path,
) -> None:
    rig = _Rig(tmp_path)
    for i in range(4):
        rig.db.insert(f"a{i}", thread=1 + i % 2)
    rig.db.archive_log_current()
    key = await rig.backup()
    rig.db.insert("last on thread 2", thread=2)
    with pytest.raises(Exception, match="ORA-01615"):
        rig.db.disable_thread(2)
    rig.db.close_thread(2)
    rig.db.disable_thread(2)
    for i in range(4):
        rig.db.insert(f"b{i}", thread=1)
    (log,) = rig.db.archive_log_current()
    assert log.thread == 1, "a disabled thread is not archived"
    until = log.next_scn - 1
    expected = rig.db.expected_contents(until)
    assert "last on thread 2" in expected.values()

    # The base's control file still lists thread 2 enabled; the redo says it was disabled.
    await rig.restore(
        rig.command(TargetPosition(position=Scn(value=until)), key, await rig.store_logs())
    )
    assert rig.db.table_contents() == expected


# -- RUN-scoped settings (issue 17 item 5) --------------------------------------------------------


async def test_set_until_lasts_only_to_the_end_of_its_run_block(tmp_path: Path) -> None:
    rig = _Rig(tmp_path)
    rig.db.insert("a", thread=1)
    rig.db.archive_log_current()
    await rig.backup()
    until = int(rig.db.database()["current_scn"])
    script = (
        f"RUN {{\n  SET UNTIL SCN {until};\n  RESTORE DATABASE PREVIEW;\n}}\n"
        "RUN {\n  RESTORE DATABASE PREVIEW;\n}\n"
    )
    result = await _rman(rig, script)
    assert result.exit_code == 1, "the second block has no target of its own"
    assert result.classification is not None
    assert result.classification.codes.count("RMAN-06557") == 1
    assert sum("Recovery must be done beyond SCN" in line for line in result.tail) == 1, (
        "the first block, with its own target, ran"
    )


async def test_a_channel_allocated_in_one_run_block_is_gone_in_the_next(tmp_path: Path) -> None:
    rig = _Rig(tmp_path)
    out = tmp_path / "out"
    script = (
        f"RUN {{\n  ALLOCATE CHANNEL ch1 DEVICE TYPE DISK FORMAT '{out}/%U';\n"
        "  BACKUP CURRENT CONTROLFILE TAG 'FIRST';\n}\n"
        "RUN {\n  BACKUP CURRENT CONTROLFILE TAG 'SECOND';\n}\n"
    )
    result = await _rman(rig, script)
    assert result.exit_code == 1
    assert result.classification is not None
    assert "RMAN-06034" in result.classification.codes
    tags = {p.tag for s in rig.db.backup_sets() for p in s.pieces}
    assert tags == {"FIRST"}


# -- RECOVER before the current RESETLOGS (issue 17 item 6) ---------------------------------------


async def test_a_target_before_the_current_resetlogs_without_reset_database_is_rman_20208(
    tmp_path: Path,
) -> None:
    from services.engines.oracle.errors import Verdict, classify, rule_for

    rig = _Rig(tmp_path)
    for i in range(4):
        rig.db.insert(f"a{i}", thread=1 + i % 2)
    rig.db.archive_log_current()
    key = await rig.backup()
    for i in range(4):
        rig.db.insert(f"b{i}", thread=1 + i % 2)
    logs = rig.db.archive_log_current()
    branch = min(x.next_scn for x in logs) - 1
    await rig.restore(
        rig.command(TargetPosition(position=Scn(value=branch)), key, await rig.store_logs())
    )
    incarnations_before = rig.db.incarnations()

    script = await _recover_in_place(rig, until=f"SCN {branch - 1}", reset_to=None)
    result = await _rman(rig, script)
    assert result.exit_code == 1
    assert classify(result.coded_lines).code == "RMAN-20208"
    assert rule_for("RMAN-20208").verdict is Verdict.FATAL
    assert rig.db.incarnations() == incarnations_before, "no incarnation was made"

    # The same target with RESET DATABASE TO INCARNATION 1 is accepted: a sibling of A.
    script = await _recover_in_place(rig, until=f"SCN {branch - 1}", reset_to=1)
    result = await _rman(rig, script)
    assert result.exit_code == 0, result.coded_lines
    new = next(i for i in rig.db.incarnations() if i["status"] == "CURRENT")
    assert (new["resetlogs_change#"], new["prior_incarnation#"]) == (branch - 1, 1)
