"""Data Pump parfiles pinned byte for byte, the simulator accepting exactly them and refusing
what the real clients refuse, and a run judged by its log (never by its exit code alone).

Regenerate the golden files after a deliberate change with `TIDEMARK_UPDATE_GOLDEN=1 pytest
tests/unit/test_oracle_datapump.py`, then read the diff before committing it.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from services.engines.base import EngineError
from services.engines.oracle import datapump as dp
from services.engines.oracle.errors import Verdict, benign_in, classify, rule_for
from tests.oracle_sim import datapump as sim
from tests.oracle_sim.db import ENV_DIR, SimulatedOracle
from tests.oracle_sim.dictionary import SimulatedDictionary

pytestmark = [pytest.mark.unit, pytest.mark.oracle]

GOLDEN = Path(__file__).parent.parent / "golden" / "oracle"
SCHEMA = dp.DataPumpPlan(migration_id="0190f7a2-5b1c-7d2e", schemas=("APP", "HR"), parallel=4)
FULL = dp.DataPumpPlan(migration_id="0190f7a2-5b1c-7d2e", parallel=2)
LINK = dp.DataPumpPlan(migration_id="0190f7a2-5b1c-7d2e", schemas=("APP",), link="SRC.EXAMPLE")

PARFILES: dict[str, tuple[str, str]] = {
    "datapump_estimate_schema": ("expdp", dp.estimate_parfile(SCHEMA)),
    "datapump_export_schema": ("expdp", dp.export_parfile(SCHEMA, "TM_MIG", 1_000_123)),
    "datapump_export_full": ("expdp", dp.export_parfile(FULL, "TM_MIG", 1_000_123)),
    "datapump_import_schema": ("impdp", dp.import_parfile(SCHEMA, "TM_MIG")),
    "datapump_import_full": ("impdp", dp.import_parfile(FULL, "TM_MIG")),
    "datapump_import_network": ("impdp", dp.network_import_parfile(LINK, "TM_MIG", 1_000_123)),
    "datapump_attach_import": ("impdp", dp.attach_parfile(SCHEMA.job_name("IMP"))),
    "datapump_attach_commands": ("", dp.ATTACH_COMMANDS),
}


@pytest.mark.parametrize("name", sorted(PARFILES))
def test_parfile_matches_golden(name: str) -> None:
    path = GOLDEN / f"{name}.par"
    if os.environ.get("TIDEMARK_UPDATE_GOLDEN"):
        path.write_text(PARFILES[name][1])
    assert PARFILES[name][1] == path.read_text()


def test_every_datapump_golden_file_is_pinned() -> None:
    assert {p.stem for p in GOLDEN.glob("datapump_*.par")} == set(PARFILES)


@pytest.mark.parametrize("name", sorted(n for n, (tool, _) in PARFILES.items() if tool))
def test_the_simulator_accepts_every_parfile_the_engine_writes(name: str, tmp_path: Path) -> None:
    tool, text = PARFILES[name]
    parfile = tmp_path / "x.par"
    parfile.write_text('USERID="/"\n' + text)
    params, recorded = sim.parse(tool, [f"parfile={parfile}"])
    assert "USERID" not in recorded, "the logon is never recorded"
    assert params["USERID"] == "/"


def test_job_and_file_names_are_functions_of_the_migration() -> None:
    assert SCHEMA.job_name("IMP") == dp.DataPumpPlan(migration_id=SCHEMA.migration_id).job_name(
        "IMP"
    )
    assert len(SCHEMA.job_name("EXP")) <= 30  # 11.2's identifier limit
    assert SCHEMA.owned(f"tm_{SCHEMA.digest}_01.dmp")
    assert not SCHEMA.owned("someone_elses_01.dmp")


@pytest.mark.parametrize("bad", ["APP,HR", "app; DROP", "1APP", 'A"B', ""])
def test_schema_names_are_validated_never_pasted(bad: str) -> None:
    with pytest.raises(ValueError, match="schema"):
        dp.DataPumpPlan(migration_id="m", schemas=(bad,))


@pytest.mark.parametrize(
    ("tool", "lines", "first"),
    [
        ("impdp", ["TABLE_EXITS_ACTION=SKIP"], "LRM-00101: unknown parameter name 'table_exits_action'"),  # noqa: E501
        ("expdp", ["FULL=MAYBE"], "LRM-00121: 'MAYBE' is not an allowable value for 'full'"),
        ("expdp", ["PARALLEL=two"], "UDE-00014: invalid value for parameter, 'parallel'."),
        ("impdp", ["TABLE_EXISTS_ACTION=MERGE"], "UDI-00014: invalid value for parameter, 'table_exists_action'."),  # noqa: E501
        ("expdp", ["FULL=Y", "SCHEMAS=APP"], "UDE-00010: multiple job modes requested, schema and full."),  # noqa: E501
        ("impdp", ["ATTACH=J1", "DUMPFILE=x.dmp"], "UDI-00011: parameter dumpfile is incompatible with parameter attach"),  # noqa: E501
        ("expdp", ["TABLE_EXISTS_ACTION=SKIP"], "LRM-00101: unknown parameter name 'table_exists_action'"),  # noqa: E501
        ("expdp", ["QUERY=x"], "simulated expdp: parameter QUERY is not modelled (Tidemark test toolchain)"),  # noqa: E501
    ],
)  # fmt: skip
def test_the_simulator_refuses_what_the_clients_refuse(
    tool: str, lines: list[str], first: str, tmp_path: Path
) -> None:
    parfile = tmp_path / "x.par"
    parfile.write_text("\n".join(lines) + "\n")
    with pytest.raises(sim.Refused) as refused:
        sim.parse(tool, [f"parfile={parfile}"])
    assert refused.value.lines[0] == first
    if first.startswith("LRM-"):
        assert refused.value.lines[1] == f"LRM-00113: error when processing file '{parfile}'"


def _run(tool: str, root: Path, parfile: str, tmp_path: Path) -> tuple[int, list[str]]:
    path = tmp_path / "run.par"
    path.write_text(parfile)
    code = f"import sys; from tests.oracle_sim.datapump import main; sys.exit(main({tool!r}, sys.argv[1:]))"  # noqa: E501
    done = subprocess.run(
        [sys.executable, "-c", code, f"parfile={path}"],
        env={**os.environ, ENV_DIR: str(root)},
        capture_output=True,
        text=True,
        check=False,
        stdin=subprocess.DEVNULL,
    )
    return done.returncode, done.stdout.splitlines()


def test_simulated_job_failures_print_the_real_stacks(tmp_path: Path) -> None:
    db = SimulatedOracle.create(tmp_path / "db", threads=1)
    dictionary = SimulatedDictionary(db)
    dictionary.seed_schema("APP")
    code, out = _run("impdp", db.root, "NETWORK_LINK=NOPE\nSCHEMAS=APP\n", tmp_path)
    assert code == 1
    assert out[-2:] == [
        'ORA-39200: Link name "NOPE" is invalid.',
        "ORA-02019: connection description for remote database not found",
    ]
    code, out = _run("impdp", db.root, "DIRECTORY=NOPE\nDUMPFILE=x.dmp\n", tmp_path)
    assert (code, out[-1]) == (1, "ORA-39087: directory name NOPE is invalid")
    code, out = _run("impdp", db.root, "DUMPFILE=missing_%U.dmp\n", tmp_path)
    assert code == 1
    assert any(line.startswith("ORA-31640: unable to open dump file") for line in out)
    code, out = _run("expdp", db.root, "SCHEMAS=NOBODY\nDUMPFILE=n.dmp\n", tmp_path)
    assert code == 5
    assert "ORA-39165: Schema NOBODY was not found." in out
    assert out[-1].startswith('Job "SYS"."SYS_EXPORT_SCHEMA_01" completed with 2 error(s) at ')
    code, out = _run("expdp", db.root, "SCHEMAS=APP\nDUMPFILE=n.dmp\n", tmp_path)
    assert code == 1
    assert "ORA-27038: created file already exists" in out
    code, out = _run("impdp", db.root, "ATTACH=NO_SUCH_JOB\n", tmp_path)
    assert (code, out[-1]) == (1, "ORA-31626: job does not exist")
    code, out = _run("expdp", db.root, "SCHEMAS=APP\nESTIMATE_ONLY=YES\nDUMPFILE=e.dmp\n", tmp_path)
    assert (code, out[-1]) == (1, "ORA-39201: Dump files are not supported for estimate only jobs.")
    code, out = _run("impdp", db.root, "FLASHBACK_SCN=5\nDUMPFILE=n.dmp\n", tmp_path)
    assert (code, out[-1]) == (1, "ORA-39208: Parameter FLASHBACK_SCN is invalid for IMPORT jobs.")
    with db.transaction() as st:
        st.open_mode = "MOUNTED"
    code, out = _run("expdp", db.root, "SCHEMAS=APP\nESTIMATE_ONLY=YES\n", tmp_path)
    assert (code, out[-2]) == (1, "ORA-01034: ORACLE not available")


def test_a_stopped_job_reads_as_its_state_and_a_dead_one_as_not_running(tmp_path: Path) -> None:
    db = SimulatedOracle.create(tmp_path / "db", threads=1)
    dictionary = SimulatedDictionary(db)
    dictionary.seed_schema("APP")
    code, _ = _run(
        "expdp", db.root, "SCHEMAS=APP\nDUMPFILE=k.dmp\nKEEP_MASTER=YES\nJOB_NAME=K1\n", tmp_path
    )
    assert code == 0
    assert dictionary.jobs()[0]["state"] == "NOT RUNNING"  # KEEP_MASTER: the control table stays
    dictionary.set_job_state("SYS", "K1", "STOP PENDING")
    # A state that needs a process, with none: the view says NOT RUNNING, as after a crash.
    assert dictionary.jobs()[0]["state"] == "NOT RUNNING"


# -- judging ----------------------------------------------------------------------------------


OK = 'Job "SYS"."TM_IMP_X" successfully completed at Sat Jan 31 12:00:00 2026 elapsed 0 00:00:01'
WITH_2 = (
    'Job "SYS"."TM_IMP_X" completed with 2 error(s) at Sat Jan 31 12:00:00 2026 elapsed 0 00:00:01'
)
COMPILE = 'ORA-39082: Object type PROCEDURE:"APP"."P" created with compilation warnings'
SKIPPED = 'ORA-39151: Table "APP"."T" exists. All dependent metadata and data will be skipped due to table_exists_action of skip'  # noqa: E501
ROWS = '. . imported "APP"."T"                              6.3 KB     120 rows'


def test_exit_0_is_not_trusted_without_the_terminal_line() -> None:
    with pytest.raises(EngineError) as err:
        dp.judge("datapump.schema_import", 0, [ROWS], "impdp")
    assert err.value.failure.code == "TM-ORA-050"
    assert dp.judge("datapump.schema_import", 0, [ROWS, OK], "impdp").rows == {"APP.T": 120}


def test_exit_5_is_a_success_only_when_every_code_is_benign_in_the_workflow() -> None:
    judged = dp.judge("datapump.schema_import", 5, [COMPILE, COMPILE, WITH_2], "impdp")
    assert judged.warnings == (COMPILE, COMPILE)
    with pytest.raises(EngineError) as err:
        dp.judge("datapump.export", 5, [COMPILE, COMPILE, WITH_2], "expdp")
    assert err.value.failure.code == "ORA-39082"
    with pytest.raises(EngineError) as err:
        dp.judge("datapump.schema_import", 5, [SKIPPED, COMPILE, WITH_2], "impdp")
    assert (err.value.failure.code, err.value.failure.retryable) == ("ORA-39151", False)


def test_an_exit_code_that_disagrees_with_the_terminal_line_fails() -> None:
    with pytest.raises(EngineError) as err:
        dp.judge("datapump.schema_import", 0, [COMPILE, WITH_2], "impdp")
    assert err.value.failure.code == "TM-ORA-051"
    with pytest.raises(EngineError) as err:
        dp.judge("datapump.schema_import", 5, [WITH_2], "impdp")
    assert err.value.failure.code == "TM-ORA-051"  # "N error(s)" and not one error line


def test_a_job_that_never_started_is_decided_by_its_stack() -> None:
    lines = ["UDI-03113: operation generated ORACLE error 3113", "ORA-03113: end-of-file on communication channel"]  # fmt: skip  # noqa: E501
    with pytest.raises(EngineError) as err:
        dp.judge("datapump.schema_import", 1, lines, "impdp")
    assert (err.value.failure.code, err.value.failure.retryable) == ("ORA-03113", True)


# -- every code these flows meet, classified once -----------------------------------------------


@pytest.mark.parametrize(
    ("code", "verdict"),
    [
        ("ORA-39151", Verdict.FATAL), ("ORA-39152", Verdict.FATAL), ("ORA-39153", Verdict.FATAL),
        ("ORA-31684", Verdict.FATAL), ("ORA-31685", Verdict.FATAL), ("ORA-39082", Verdict.FATAL),
        ("ORA-39083", Verdict.FATAL), ("ORA-31693", Verdict.FATAL), ("ORA-31679", Verdict.FATAL),
        ("ORA-39165", Verdict.FATAL), ("ORA-31655", Verdict.FATAL), ("ORA-31640", Verdict.FATAL),
        ("ORA-31641", Verdict.FATAL), ("ORA-31619", Verdict.FATAL), ("ORA-39087", Verdict.FATAL),
        ("ORA-02019", Verdict.FATAL), ("ORA-39208", Verdict.FATAL), ("ORA-39201", Verdict.FATAL),
        ("ORA-31626", Verdict.FATAL), ("ORA-31634", Verdict.FATAL), ("ORA-39004", Verdict.FATAL),
        ("ORA-39126", Verdict.FATAL), ("ORA-39246", Verdict.FATAL), ("ORA-39142", Verdict.FATAL),
        ("ORA-39169", Verdict.FATAL), ("KUP-11007", Verdict.FATAL),
        ("ORA-39014", Verdict.RETRYABLE), ("ORA-39029", Verdict.RETRYABLE),
        ("ORA-39171", Verdict.RETRYABLE), ("ORA-01653", Verdict.RETRYABLE),
        ("ORA-03113", Verdict.RETRYABLE), ("ORA-01034", Verdict.RETRYABLE),
        ("ORA-39001", Verdict.WRAPPER), ("ORA-39000", Verdict.WRAPPER),
        ("ORA-39002", Verdict.WRAPPER), ("ORA-39005", Verdict.WRAPPER),
        ("ORA-39070", Verdict.WRAPPER), ("ORA-39200", Verdict.WRAPPER),
        ("ORA-27038", Verdict.CONTEXT), ("LRM-00113", Verdict.WRAPPER),
        ("UDI-31626", Verdict.WRAPPER), ("UDI-03113", Verdict.WRAPPER),
        ("LRM-00101", Verdict.FATAL), ("LRM-00108", Verdict.FATAL), ("LRM-00109", Verdict.FATAL),
        ("LRM-00121", Verdict.FATAL), ("UDE-00010", Verdict.FATAL), ("UDI-00011", Verdict.FATAL),
        ("UDE-00014", Verdict.FATAL), ("UDI-00014", Verdict.FATAL), ("UDI-00053", Verdict.FATAL),
    ],
)  # fmt: skip
def test_every_data_pump_code_is_classified(code: str, verdict: Verdict) -> None:
    assert rule_for(code).verdict is verdict
    assert rule_for(code).meaning != "not a code Tidemark knows"


@pytest.mark.parametrize(
    ("workflow", "line", "benign"),
    [
        ("datapump.schema_import", COMPILE, True),
        ("datapump.export", COMPILE, False),
        ("datapump.schema_import", SKIPPED, False),
        ("datapump.full_import", SKIPPED, False),
        ("datapump.full_import", 'ORA-31684: Object type TABLESPACE:"UNDOTBS1" already exists', True),  # noqa: E501
        ("datapump.full_import", 'ORA-31684: Object type USER:"OUTLN" already exists', True),
        ("datapump.full_import", 'ORA-31684: Object type USER:"APP" already exists', False),
        ("datapump.schema_import", 'ORA-31684: Object type USER:"OUTLN" already exists', False),
        ("datapump.full_import", 'ORA-31685: Object type USER:"SYS" failed due to insufficient privileges. Failing sql is:', True),  # noqa: E501
    ],
)  # fmt: skip
def test_benign_only_in_the_workflow_that_allows_it(workflow: str, line: str, benign: bool) -> None:
    code = classify([line]).code
    assert code is not None
    assert (benign_in(workflow, code, line) is not None) is benign
