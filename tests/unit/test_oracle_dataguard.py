"""The `dataguard` method's scripts and statements pinned byte for byte, the simulator accepting
exactly them and refusing others, the readers of V$DATAGUARD_STATS and of dgmgrl's VALIDATE
output, the simulated views' timing, and every Data Guard code classified once.

Regenerate the golden files after a deliberate change with `TIDEMARK_UPDATE_GOLDEN=1 pytest
tests/unit/test_oracle_dataguard.py`, then read the diff before committing it.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from pydantic import ValidationError

from schemas import DatabaseRef, Engine
from schemas.messages import LagBudget, MigrationMethod, RequestMigration, TargetInstance
from services.engines.oracle import dataguard_sql as q
from services.engines.oracle.errors import Verdict, benign_in, classify, rule_for
from services.engines.oracle.runner import Tool, _judge
from tests.oracle_sim.dataguard import DataGuardError, SimulatedDataGuard, dgmgrl_main, rman_main

pytestmark = [pytest.mark.unit, pytest.mark.oracle]

GOLDEN = Path(__file__).parent.parent / "golden" / "oracle"

STATEMENTS = "\n".join(
    [
        q.ROLE_SQL,
        q.STATS_SQL,
        q.CLOCK_SQL,
        q.MRP_SQL,
        q.START_APPLY_SQL,
        q.STOP_APPLY_SQL,
        q.OPEN_SQL,
        q.switchover_sql("STBY_1", verify=True),
        q.switchover_sql("STBY_1"),
        q.switchover_sql("STBY_1", force=True),
        "",
    ]
)
GOLDEN_FILES = {
    "dataguard_duplicate_active.rman": q.duplicate_script(channels=2),
    "dataguard_startup_mount.rman": q.startup_mount_script(),
    "dataguard_validate_database.dgm": q.validate_script("STBY_1"),
    "dataguard_statements.sql": STATEMENTS,
}


@pytest.mark.parametrize("name", sorted(GOLDEN_FILES))
def test_every_script_and_statement_matches_its_golden_file(name: str) -> None:
    path = GOLDEN / name
    if os.environ.get("TIDEMARK_UPDATE_GOLDEN"):
        path.write_text(GOLDEN_FILES[name])
    assert GOLDEN_FILES[name] == path.read_text()


def test_every_dataguard_golden_file_is_pinned() -> None:
    assert {p.name for p in GOLDEN.glob("dataguard_*")} == set(GOLDEN_FILES)


def test_a_name_that_is_not_a_db_unique_name_never_reaches_ddl() -> None:
    for bad in ("stby", "S; DROP", "S'1", "A" * 31, ""):
        with pytest.raises(ValueError, match="DB_UNIQUE_NAME"):
            q.switchover_sql(bad)
    with pytest.raises(ValueError, match="together"):
        q.switchover_sql("S", verify=True, force=True)


@pytest.fixture
def dg(tmp_path: Path) -> SimulatedDataGuard:
    config = SimulatedDataGuard.create(tmp_path / "dg", "PRIM", apply_tps=10.0)
    config.add_auxiliary("STBY")
    return config


def _rman(dg: SimulatedDataGuard, member: str, argv: list[str], script: str, tmp: Path) -> int:
    cmdfile = tmp / "script.rman"
    cmdfile.write_text(script)
    return rman_main(dg, member, [*argv, "nocatalog", f"cmdfile={cmdfile}"])


def test_the_simulated_rman_runs_the_duplicate_and_refuses_any_other_script(
    dg: SimulatedDataGuard, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["target", "/@PRIM", "auxiliary", "/@STBY"]
    changed = q.duplicate_script().replace("DORECOVER ", "")
    assert _rman(dg, "STBY", argv, changed, tmp_path) == 1
    assert "RMAN-00558" in capsys.readouterr().out
    assert _rman(dg, "STBY", ["target", "/"], q.duplicate_script(), tmp_path) == 1
    assert "RMAN-06171" in capsys.readouterr().out
    assert _rman(dg, "STBY", argv, q.duplicate_script(), tmp_path) == 0
    assert dg.member("STBY").role == "PHYSICAL STANDBY"
    # Again onto a mounted database: refused as RMAN refuses it, nothing changed.
    assert _rman(dg, "STBY", argv, q.duplicate_script(), tmp_path) == 1
    out = capsys.readouterr().out
    assert "RMAN-05500" in out
    assert classify(out.splitlines()).code == "RMAN-05500"


def test_startup_mount_starts_a_down_instance_and_refuses_a_running_one(
    dg: SimulatedDataGuard, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert _rman(dg, "PRIM", ["target", "/"], q.startup_mount_script(), tmp_path) == 1
    out = capsys.readouterr().out
    assert classify(out.splitlines()).code == "ORA-01081"


def test_dgmgrl_exits_0_whatever_it_answers_so_its_words_decide(
    dg: SimulatedDataGuard, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    script = tmp_path / "v.dgm"
    dg.duplicate("PRIM", "STBY")
    script.write_text(q.validate_script("STBY"))
    assert dgmgrl_main(dg, "PRIM", ["-silent", "/", f"@{script}"]) == 0
    found = q.parse_validate(capsys.readouterr().out.splitlines())
    assert (found.ready, found.role) == (False, "Physical standby database")
    assert any("Apply State" in line for line in dg.validate("PRIM", "STBY"))
    dg.execute("STBY", q.START_APPLY_SQL)
    assert dgmgrl_main(dg, "PRIM", ["-silent", "/", f"@{script}"]) == 0
    assert q.parse_validate(capsys.readouterr().out.splitlines()).ready
    script.write_text("SWITCHOVER TO STBY;\n")
    assert dgmgrl_main(dg, "PRIM", ["-silent", "/", f"@{script}"]) == 0
    with pytest.raises(ValueError, match="refused"):
        q.parse_validate(capsys.readouterr().out.splitlines())


def test_a_dgmgrl_error_code_fails_the_run_although_it_exits_0() -> None:
    judged = _judge(Tool.DGMGRL, 0, ["Error: ORA-16810: multiple errors or warnings detected"])
    assert judged is not None
    assert judged.verdict is Verdict.FATAL
    assert _judge(Tool.DGMGRL, 0, ["Warning: ORA-16853: apply lag has exceeded"]) is not None
    assert _judge(Tool.DGMGRL, 0, []) is None


def test_validate_output_without_its_answer_is_refused() -> None:
    with pytest.raises(ValueError, match="Ready for Switchover"):
        q.parse_validate(["Database Role: Physical standby database"])
    found = q.parse_validate(["Ready for Switchover: Yes", "Error: ORA-16541: not enabled"])
    assert not found.ready


# -- V$DATAGUARD_STATS --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        ("+00 00:00:00", 0.0),
        ("+00 00:00:07", 7.0),
        ("+01 17:17:09", 148_629.0),
        ("+00 00:00:00.000", 0.0),
        ("", None),
        (None, None),
        ("   ", None),
    ],
)
def test_an_interval_is_read_and_an_empty_one_is_unknown_not_zero(
    value: str | None, seconds: float | None
) -> None:
    assert q.parse_interval(value) == seconds


@pytest.mark.parametrize("value", ["00:00:07", "+0 00:00:07", "7 seconds", "+00 25:00:00"])
def test_an_interval_of_another_shape_is_refused(value: str) -> None:
    with pytest.raises(ValueError, match="V\\$DATAGUARD_STATS"):
        q.parse_interval(value)


def _row(name: str, value: str | None, datum: str | None) -> dict[str, object]:
    return {"name": name, "value": value, "unit": "", "time_computed": "", "datum_time": datum}


def test_the_gate_reads_the_worse_lag_only_from_fresh_numbers() -> None:
    fresh = [
        _row("transport lag", "+00 00:00:01", "06/03/2024 11:18:50"),
        _row("apply lag", "+00 00:00:04", "06/03/2024 11:18:50"),
    ]
    lag = q.judge_lag(fresh, "06/03/2024 11:18:52", stale_after_s=10)
    assert (lag.seconds, lag.datum_age_s) == (4.0, 2.0)
    old = q.judge_lag(fresh, "06/03/2024 11:19:52", stale_after_s=10)
    assert old.seconds is None
    assert "stale" in old.unknown
    empty = [fresh[0], _row("apply lag", None, "06/03/2024 11:18:50")]
    assert (
        "apply lag is empty" in q.judge_lag(empty, "06/03/2024 11:18:52", stale_after_s=10).unknown
    )
    assert "no rows" in q.judge_lag([], "06/03/2024 11:18:52", stale_after_s=10).unknown
    upper = [_row("TRANSPORT LAG", "+00 00:00:00", "06/03/2024 11:18:50"), fresh[1]]
    assert q.judge_lag(upper, "06/03/2024 11:18:52", stale_after_s=10).known


def test_the_simulated_stats_grow_under_load_shrink_with_apply_and_freeze_without_transport(
    dg: SimulatedDataGuard,
) -> None:
    assert dg.stats("PRIM") == []  # no rows on a primary
    dg.stop_transport()
    dg.duplicate("PRIM", "STBY")
    first = {r["name"]: r for r in dg.stats("STBY")}
    assert first["transport lag"]["value"] is None  # nothing received yet: unknown
    assert first["transport lag"]["datum_time"] is None
    assert first["apply lag"]["value"] is None
    dg.start_transport()
    dg.execute("STBY", q.START_APPLY_SQL)
    for n in range(60):  # 30 commits a second against 10 applied
        dg.commit(f"v{n}")
        dg.advance(1 / 30)
    rows = dg.stats("STBY")
    behind = q.judge_lag(rows, dg.clock_text("STBY"), stale_after_s=5)
    assert behind.apply_s is not None
    assert behind.apply_s >= 1
    assert rows[0]["unit"] == "day(2) to second(0) interval"
    dg.advance(6.0)
    caught = q.judge_lag(dg.stats("STBY"), dg.clock_text("STBY"), stale_after_s=5)
    assert caught.seconds == 0.0
    dg.stop_transport()
    frozen = dg.stats("STBY")
    dg.commit("unsent")
    dg.advance(20.0)
    later = dg.stats("STBY")
    assert later[0]["datum_time"] == frozen[0]["datum_time"]
    assert later[0]["time_computed"] != frozen[0]["time_computed"]
    assert later[0]["value"] == "+00 00:00:00"  # the last value: a zero that proves nothing
    stale = q.judge_lag(later, dg.clock_text("STBY"), stale_after_s=5)
    assert stale.seconds is None
    assert "stale" in stale.unknown


# -- the codes these flows meet ------------------------------------------------------------------


def _raised(dg: SimulatedDataGuard, member: str, sql: str) -> str:
    with pytest.raises(DataGuardError) as err:
        dg.execute(member, sql)
    return str(err.value)


def test_every_code_the_simulated_statements_raise_is_classified(dg: SimulatedDataGuard) -> None:
    seen = {
        _raised(dg, "PRIM", q.switchover_sql("STBY", verify=True)): Verdict.FATAL,  # 16465
        _raised(dg, "PRIM", q.START_APPLY_SQL): Verdict.FATAL,  # 01665
        _raised(dg, "PRIM", q.OPEN_SQL): Verdict.FATAL,  # 01531
    }
    dg.duplicate("PRIM", "STBY")
    seen[_raised(dg, "PRIM", q.switchover_sql("STBY", verify=True))] = Verdict.FATAL  # 16470
    seen[_raised(dg, "STBY", q.STOP_APPLY_SQL)] = Verdict.FATAL  # 16136
    seen[_raised(dg, "STBY", q.switchover_sql("STBY", force=True))] = Verdict.FATAL  # 16473
    seen[_raised(dg, "PRIM", q.switchover_sql("PRIM", force=True))] = Verdict.FATAL  # 16464
    dg.execute("STBY", q.START_APPLY_SQL)
    seen[_raised(dg, "STBY", q.START_APPLY_SQL)] = Verdict.FATAL  # 01153
    dg.stop_transport()
    seen[_raised(dg, "PRIM", q.switchover_sql("STBY", verify=True))] = Verdict.RETRYABLE  # 16467
    dg.start_transport()
    dg.advance(1.0)
    dg.set_dirty_logs("STBY")
    seen[_raised(dg, "PRIM", q.switchover_sql("STBY", verify=True))] = Verdict.WARNING  # 16475
    codes = {classify([text]).code: verdict for text, verdict in seen.items()}
    assert set(codes) == {
        "ORA-16465", "ORA-01665", "ORA-01531", "ORA-16470", "ORA-16136", "ORA-16473",
        "ORA-16464", "ORA-01153", "ORA-16467", "ORA-16475",
    }  # fmt: skip
    for text, verdict in seen.items():
        assert classify([text]).verdict is verdict, text


@pytest.mark.parametrize(
    ("code", "verdict"),
    [
        ("ORA-16471", Verdict.FATAL),
        ("ORA-16766", Verdict.FATAL),
        ("ORA-16789", Verdict.FATAL),
        ("ORA-16853", Verdict.WARNING),
        ("ORA-16855", Verdict.WARNING),
        ("ORA-16857", Verdict.RETRYABLE),
        ("ORA-16501", Verdict.WRAPPER),
        ("ORA-16502", Verdict.WARNING),
        ("ORA-16608", Verdict.WARNING),
        ("ORA-16809", Verdict.WARNING),
        ("ORA-16810", Verdict.FATAL),
        ("ORA-16661", Verdict.FATAL),
        ("ORA-16795", Verdict.FATAL),
        ("ORA-16541", Verdict.FATAL),
        ("ORA-16191", Verdict.FATAL),
        ("ORA-01081", Verdict.FATAL),
        ("ORA-01034", Verdict.RETRYABLE),
        ("ORA-01507", Verdict.FATAL),
        ("ORA-00600", Verdict.FATAL),
        ("RMAN-05500", Verdict.FATAL),
        ("RMAN-06171", Verdict.FATAL),
        ("RMAN-04006", Verdict.WRAPPER),
    ],
)
def test_each_data_guard_code_has_one_verdict(code: str, verdict: Verdict) -> None:
    assert rule_for(code).verdict is verdict


def test_a_running_apply_is_benign_only_when_starting_apply() -> None:
    line = "ORA-01153: an incompatible media recovery is active"
    assert benign_in("dataguard.start_apply", "ORA-01153", line) is not None
    assert benign_in("datapump.schema_import", "ORA-01153", line) is None
    assert rule_for("ORA-01153").verdict is Verdict.FATAL


# -- intake ----------------------------------------------------------------------------------------


def _request(**changes: object) -> RequestMigration:
    fields: dict[str, object] = {
        "migration_id": "0190f7a2-5b1c-7d2e-8f00-000000000001",
        "target_instance": TargetInstance(
            database=DatabaseRef(uid="ora-stby", engine=Engine.ORACLE, name="TMSIM"), node="n1"
        ),
        "method": MigrationMethod.DATAGUARD,
        "downtime_budget_s": 600.0,
        "lag": LagBudget(max_seconds=5.0, hold_s=0.0),
        **changes,
    }
    return RequestMigration.model_validate(fields)


def test_a_dataguard_request_with_its_options_is_accepted() -> None:
    options = {"standby_unique_name": "ORA_STBY", "channels": "4", "broker": "yes"}
    assert _request(options=options).options == options


@pytest.mark.parametrize(
    "changes",
    [
        {"lag": LagBudget(max_bytes=1 << 20, hold_s=0.0)},  # Data Guard measures seconds
        {"options": {"standby_unique_name": "stby; drop"}},  # not a name DDL can take
        {"options": {"channels": "64"}},
        {"options": {"lag_stale_s": "0"}},
        {"options": {"broker": "maybe"}},
        {"options": {"schemas": "APP"}},  # a Data Pump option
    ],
)
def test_a_dataguard_request_that_cannot_run_is_refused_at_intake(
    changes: dict[str, object],
) -> None:
    with pytest.raises(ValidationError):
        _request(**changes)
