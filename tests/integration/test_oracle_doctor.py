"""`tidemark doctor oracle` against the simulated Oracle (tests/oracle_sim/sql.py answers its
V$/DBA_ statements; `rman` and `expdp` are the simulated tools). The default simulated database
holds every fact and contradicts nothing the doctor says the simulator assumes, which keeps
`doctor.SIMULATOR` and the simulator in step; each other test makes a database that contradicts
one assumption and reads the report saying so."""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest
import typer
from typer.testing import CliRunner

from services.engines.oracle.doctor import (
    DoctorOptions,
    Report,
    Verdict,
    Workflow,
    examine,
)
from services.engines.oracle.doctor_sql import PASSWORD_FILE_USERS_SQL
from services.engines.oracle.errors import Verdict as ErrorVerdict
from services.engines.oracle.errors import rule_for
from services.engines.oracle.runner import OracleHome
from services.engines.oracle.session import OracleSessionError
from services.engines.settings import OracleConnection
from tests.oracle_sim.db import SimulatedOracle
from tests.oracle_sim.sql import LogGroups, Profile, SimulatedSql
from tests.oracle_sim.tools import install

pytestmark = [pytest.mark.oracle]


def _db(tmp_path: Path, **create: Any) -> SimulatedOracle:
    db = SimulatedOracle.create(tmp_path / "sim", **create)
    db.insert("a")
    db.switch_logfile(1)
    return db


def _contradict(db: SimulatedOracle, **facts: Any) -> None:
    Profile(**facts).save(db)


async def _examine(db: SimulatedOracle, **options: Any) -> Report:
    return await examine(SimulatedSql(db), DoctorOptions(**options), dsn="sim:1521/TMSIM")


def _verdicts(report: Report) -> dict[str, Verdict]:
    return {c.name: c.verdict for c in report.checks}


def _check(report: Report, name: str) -> Any:
    return next(c for c in report.checks if c.name == name)


async def test_the_default_simulated_database_holds_everything_and_contradicts_nothing(
    tmp_path: Path,
) -> None:
    db = _db(tmp_path)
    report = await _examine(db)
    assert report.contradictions == ()
    assert report.exit_code == 0
    assert set(_verdicts(report).values()) == {Verdict.HOLDS}
    assert report.facts["dbid"] == "1234567890"
    assert report.facts["version"] == "19.0.0.0.0"


async def test_every_statement_is_a_query_of_a_v_or_dba_view(tmp_path: Path) -> None:
    db = _db(tmp_path)
    source = SimulatedSql(db)
    await examine(source, DoctorOptions())
    assert source.statements
    for sql in source.statements:
        assert sql.lstrip().upper().startswith("SELECT"), sql
        assert any(v in sql.lower() for v in ("v$", "dba_", "dual")), sql


async def test_noarchivelog_and_no_force_logging_do_not_hold_and_contradict_the_simulator(
    tmp_path: Path,
) -> None:
    db = _db(tmp_path)
    _contradict(db, log_mode="NOARCHIVELOG", force_logging="NO")
    report = await _examine(db)
    assert _verdicts(report)["archivelog"] is Verdict.FAILS
    assert _verdicts(report)["force_logging"] is Verdict.FAILS
    assert report.exit_code == 1
    assumed = [c.assumption for c in report.contradictions]
    assert any("ARCHIVELOG mode" in a for a in assumed)
    assert any("FORCE LOGGING" in a for a in assumed)
    assert {c.name for c in report.failed} == {"archivelog", "force_logging"}


async def test_a_server_zone_other_than_the_settings_does_not_hold(tmp_path: Path) -> None:
    db = _db(tmp_path, time_zone="Asia/Kolkata")  # +05:30 all year
    report = await _examine(db, time_zone="UTC")
    check = _check(report, "time_zone")
    assert check.verdict is Verdict.FAILS
    assert "UTC+05:30" in check.observed
    assert "set time_zone to the server's zone" in check.why
    right = await _examine(db, time_zone="Asia/Kolkata")
    assert _check(right, "time_zone").verdict is Verdict.HOLDS
    assert right.contradictions == ()  # a fixed offset is what the simulator models


async def test_a_zone_with_daylight_saving_is_reported_as_unproven(tmp_path: Path) -> None:
    db = _db(tmp_path, time_zone="America/New_York")
    report = await _examine(db, time_zone="America/New_York")
    assert _check(report, "time_zone").verdict is Verdict.HOLDS
    assert any("daylight saving" in c.assumption for c in report.contradictions)
    assert report.exit_code == 0  # a contradiction is news, not a failure


async def test_missing_or_small_standby_redo_logs_do_not_hold_for_data_guard_only(
    tmp_path: Path,
) -> None:
    db = _db(tmp_path)
    _contradict(
        db,
        standby_logs={1: LogGroups(groups=4, bytes=100 * 1024 * 1024), 2: LogGroups(groups=2)},
        parameters={"standby_file_management": "MANUAL", "remote_login_passwordfile": "NONE"},
    )
    report = await _examine(db)
    srl = _check(report, "standby_redo_logs")
    assert srl.verdict is Verdict.FAILS
    assert "thread 2 has 2 standby logs, needs 4" in srl.why
    assert "thread 1's smallest standby log is 104857600 bytes < 209715200" in srl.why
    assert _verdicts(report)["standby_file_management"] is Verdict.FAILS
    assert _verdicts(report)["password_file"] is Verdict.FAILS
    pitr = await _examine(db, workflows=frozenset({Workflow.PITR}))
    assert "standby_redo_logs" not in _verdicts(pitr)
    assert pitr.exit_code == 0


async def test_another_release_edition_platform_and_storage_are_contradictions(
    tmp_path: Path,
) -> None:
    db = _db(tmp_path)
    _contradict(
        db,
        version="18.0.0.0.0",
        banner="Oracle Database 18c Standard Edition 2 Release 18.0.0.0.0 - Production",
        platform_id=2,
        platform_name="Solaris[tm] OE (64-bit)",
        endian_format="Big",
        archive_destination="+RECO",
        cdb="YES",
    )
    report = await _examine(db)
    seen = " | ".join(f"{c.assumption} -> {c.observed}" for c in report.contradictions)
    assert "release 19c" in seen
    assert "18.0.0.0.0" in seen
    assert "Standard Edition 2" in seen
    assert "Solaris[tm] OE (64-bit) (Big)" in seen
    assert "ASM disk group +RECO" in seen
    assert "non-CDB" in seen
    assert _verdicts(report)["edition"] is Verdict.FAILS
    assert _verdicts(report)["archive_destination"] is Verdict.FAILS
    assert _verdicts(report)["release"] is Verdict.HOLDS


async def test_a_banner_the_parser_does_not_know_is_not_checked_and_named(
    tmp_path: Path,
) -> None:
    db = _db(tmp_path)
    _contradict(db, banner="Oracle Database 23ai Free Release 23.0.0.0.0 - Develop, Learn")
    report = await _examine(db)
    # "Free" is a known edition word; a wording with none is not
    assert _check(report, "edition").observed == "Free"
    _contradict(db, banner="Oracle9i Release 9.2.0.1.0 - Production")
    report = await _examine(db)
    assert _verdicts(report)["edition"] is Verdict.NOT_CHECKED
    assert any("banner" in c.assumption for c in report.contradictions)


async def test_encrypted_tablespaces_need_an_open_keystore(tmp_path: Path) -> None:
    db = _db(tmp_path)
    _contradict(db, encrypted_tablespaces=2, wallet_status="CLOSED")
    assert _verdicts(await _examine(db))["tde_keystore"] is Verdict.FAILS
    _contradict(db, encrypted_tablespaces=2, wallet_status="OPEN")
    assert _verdicts(await _examine(db))["tde_keystore"] is Verdict.HOLDS


class _NotGranted:
    """The simulated views, except one this user may not read."""

    def __init__(self, inner: SimulatedSql, refused: str) -> None:
        self.inner, self.refused = inner, refused

    async def rows(self, sql: str, binds: Mapping[str, object]) -> list[dict[str, Any]]:
        if sql == self.refused:
            raise OracleSessionError(
                "reading V$PWFILE_USERS: ORA-00942: table or view does not exist",
                code="ORA-00942",
            )
        return await self.inner.rows(sql, binds)

    async def execute(self, sql: str) -> None:
        await self.inner.execute(sql)


async def test_a_view_this_user_cannot_read_is_not_checked_never_a_pass(tmp_path: Path) -> None:
    db = _db(tmp_path)
    source = _NotGranted(SimulatedSql(db), PASSWORD_FILE_USERS_SQL)
    report = await examine(source, DoctorOptions())
    check = _check(report, "password_file")
    assert check.verdict is Verdict.NOT_CHECKED
    assert "ORA-00942" in check.why
    assert "SELECT_CATALOG_ROLE" in check.why
    assert report.exit_code == 0


async def test_switchover_verify_runs_only_when_asked_and_the_simulator_cannot_answer_it(
    tmp_path: Path,
) -> None:
    db = _db(tmp_path)
    source = SimulatedSql(db)
    await examine(source, DoctorOptions())
    assert not any("SWITCHOVER" in s for s in source.statements)
    report = await examine(source, DoctorOptions(switchover_target="TMSIM_STBY"))
    check = _check(report, "switchover_verify")
    assert check.verdict is Verdict.NOT_CHECKED
    assert "ORA-00900" in check.why
    assert "ALTER DATABASE SWITCHOVER TO TMSIM_STBY VERIFY" in source.statements


async def test_rman_probes_validate_the_datafiles_and_preview_needs_a_backup(
    tmp_path: Path,
) -> None:
    db = _db(tmp_path)
    install(tmp_path / "home", tmp_path / "sim")
    home = OracleHome(oracle_home=tmp_path / "home", sid="TMSIM")
    report = await _examine(
        db, home=home, rman_preview=True, rman_validate=True, workflows=frozenset({Workflow.PITR})
    )
    validate = _check(report, "rman_validate")
    assert validate.verdict is Verdict.HOLDS
    assert validate.observed == "4 datafiles OK, none marked corrupt"
    preview = _check(report, "rman_preview")
    assert preview.verdict is Verdict.NOT_CHECKED  # no backup in RMAN's repository yet
    assert "RMAN-06026" in preview.why
    assert sum("VALIDATE CHECK LOGICAL DATABASE" in r for r in db.runs("rman")) == 1


async def test_rman_probes_without_a_home_say_what_they_need(tmp_path: Path) -> None:
    db = _db(tmp_path)
    report = await _examine(db, rman_validate=True)
    assert "--oracle-home" in _check(report, "rman_validate").why


async def test_datapump_estimate_goes_as_far_as_the_simulated_expdp(tmp_path: Path) -> None:
    db = _db(tmp_path)
    install(tmp_path / "home", tmp_path / "sim")
    home = OracleHome(oracle_home=tmp_path / "home", sid="TMSIM")
    report = await _examine(
        db, home=home, datapump_estimate="TM_SIM", workflows=frozenset({Workflow.DATAPUMP})
    )
    check = _check(report, "datapump_estimate")
    # The simulated expdp knows no ESTIMATE_ONLY: refused or no estimate line, never a pass.
    assert check.verdict is Verdict.NOT_CHECKED


def test_the_codes_the_doctor_meets_are_classified() -> None:
    for code in ("ORA-00942", "ORA-00904", "ORA-00900", "ORA-16465", "ORA-28365"):
        assert rule_for(code).verdict is ErrorVerdict.FATAL
        assert rule_for(code).meaning != "not a code Tidemark knows"


# -- the command -------------------------------------------------------------------------------


def _cli(db: SimulatedOracle) -> Any:
    from services.cli.doctorcmds import make_app

    seen: list[OracleConnection] = []

    async def open_source(settings: OracleConnection) -> SimulatedSql:
        seen.append(settings)
        return SimulatedSql(db)

    # As main.py registers it: a group of one command would otherwise take no command name.
    root = typer.Typer()
    root.add_typer(make_app(open_source), name="doctor")
    return root, seen


def _args(tmp_path: Path, *more: str) -> list[str]:
    # The password file is never read by the simulated source; it only has to be named.
    return [
        "doctor",
        "oracle",
        "--dsn",
        "sim:1521/TMSIM",
        "--user",
        "C##TIDEMARK",
        "--password-file",
        str(tmp_path / "pw"),
        *more,
    ]


def test_the_command_prints_each_check_and_the_contradictions_and_exits_1(
    tmp_path: Path,
) -> None:
    db = _db(tmp_path)
    _contradict(db, log_mode="NOARCHIVELOG", standby_logs={})
    app, seen = _cli(db)
    result = CliRunner().invoke(app, _args(tmp_path))
    assert result.exit_code == 1, result.output
    assert "does not hold" in result.output
    assert "ARCHIVELOG mode" in result.output
    assert "What the simulator assumes that this database contradicts:" in result.output
    assert "failing: archivelog, standby_redo_logs" in result.output
    assert seen[0].password_file == tmp_path / "pw"


def test_the_command_exits_0_when_everything_holds_and_prints_json(tmp_path: Path) -> None:
    db = _db(tmp_path)
    app, _ = _cli(db)
    result = CliRunner().invoke(app, [*_args(tmp_path), "--output", "json"])
    assert result.exit_code == 0, result.output
    document = json.loads(result.output)
    assert document["holds"] is True
    assert document["contradictions"] == []
    assert {c["verdict"] for c in document["checks"]} == {"holds"}
    assert document["facts"]["dbid"] == "1234567890"


@pytest.mark.parametrize(
    "args",
    [
        [
            "doctor",
            "oracle",
            "--dsn",
            "tm/secret@db:1521/X",
            "--user",
            "tm",
            "--password-file",
            "/p",
        ],
        ["doctor", "oracle", "--dsn", "db:1521/X", "--user", "tm"],
        ["doctor", "oracle", "--dsn", "db:1521/X", "--password-file", "/p"],
        ["doctor", "oracle", "--dsn", "db:1521/X", "--wallet-dir", "/w"],
        [
            "doctor",
            "oracle",
            "--dsn",
            "db:1521/X",
            "--user",
            "u",
            "--password-file",
            "/p",
            "--sid",
            "X",
        ],
        [
            "oracle",
            "--dsn",
            "db:1521/X",
            "--user",
            "u",
            "--password-file",
            "/p",
            "--switchover-verify",
            "x; DROP",
        ],
        [
            "doctor",
            "oracle",
            "--dsn",
            "db:1521/X",
            "--user",
            "u",
            "--password-file",
            "/p",
            "--password",
        ],
        ["doctor", "oracle", "--user", "u", "--password-file", "/p"],
    ],
)
def test_bad_usage_exits_2_before_connecting(tmp_path: Path, args: list[str]) -> None:
    db = _db(tmp_path)
    app, seen = _cli(db)
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 2, result.output
    assert seen == []
    assert "secret" not in result.output
