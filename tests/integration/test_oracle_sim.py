"""The Oracle engine's scripts and runner against the simulated Oracle toolchain.

Each test builds a simulated database, takes backups with `BackupScript`, stages pieces and
archived logs the way a restore from the store does, runs `RestoreScript` through the runner,
and compares the simulated table with what the ledger says it held at the target: exactly.
What this proves and what only a real Oracle can confirm: `tests/oracle_sim/README.md`.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

import pytest

from services.engines.oracle.errors import Verdict
from services.engines.oracle.runner import OracleHome, Tool, ToolResult, run_tool
from services.engines.oracle.scripts import (
    BackupScript,
    Channels,
    RestoreScript,
    UntilScn,
    UntilSequence,
    UntilTime,
    preview_script,
)
from tests.oracle_sim.db import SimulatedOracle, decode_piece
from tests.oracle_sim.rman import error_stack
from tests.oracle_sim.tools import install

pytestmark = [pytest.mark.oracle]


@dataclass
class Rig:
    root: Path
    db: SimulatedOracle
    home: OracleHome
    runs: int = 0

    async def rman(self, script: str) -> tuple[ToolResult, list[str]]:
        lines: list[str] = []

        async def on_line(line: str) -> None:
            lines.append(line)

        return await run_tool(self.home, Tool.RMAN, script, on_line=on_line, timeout=60), lines

    async def backup(self, tag: str, level: int | None = 0, *, cumulative: bool = False) -> Path:
        stage = self.root / "backups" / tag
        stage.mkdir(parents=True)
        spec = BackupScript(
            command_id=f"job-{tag}",
            tag=tag,
            level=level,
            cumulative=cumulative,
            channels=Channels(count=2, stage_dir=str(stage)),
            section_size_mb=100,
        )
        result, lines = await self.rman(spec.render())
        assert result.ok, lines
        handles = [x.split()[1].removeprefix("handle=") for x in lines if "piece handle=" in x]
        assert sorted(handles) == sorted(str(p) for p in stage.iterdir())
        return stage

    def work(self, n: int, prefix: str) -> None:
        for i in range(n):
            self.db.insert(f"{prefix}-{i}", thread=1 + i % 2)
        self.db.archive_log_current()

    async def restore(
        self,
        until: UntilScn | UntilTime | UntilSequence,
        *stages: Path,
        incarnation: int | None = None,
    ) -> tuple[ToolResult, list[str]]:
        self.runs += 1
        staged = self.root / f"restore{self.runs}"
        staged.mkdir()
        for source in (*stages, self.db.arch_dir):
            for f in source.iterdir():
                shutil.copy(f, staged / f.name)
        cf_handle = next(
            p
            for p in sorted(stages[-1].iterdir())
            if decode_piece(p.read_bytes()).get("kind") == "controlfile"
        )
        script = RestoreScript(
            command_id=f"restore-{self.runs}",
            dbid=self.db.read().controlfile.dbid,
            controlfile_piece=str(staged / Path(cf_handle).name),
            stage_dir=str(staged),
            until=until,
            incarnation=incarnation,
        )
        return await self.rman(script.render())


@pytest.fixture
def rig(tmp_path: Path) -> Rig:
    db = SimulatedOracle.create(tmp_path / "sim", threads=2)
    install(tmp_path / "home", tmp_path / "sim")
    return Rig(tmp_path, db, OracleHome(oracle_home=tmp_path / "home", sid="TMSIM"))


def _rid(db: SimulatedOracle) -> int:
    return int(db.database()["resetlogs_id"])


def _chain_end(db: SimulatedOracle) -> int:
    """E_B on the current incarnation: the lowest of the threads' last archived NEXT_CHANGE#."""
    logs = [x for x in db.archived_logs() if x["resetlogs_id"] == _rid(db)]
    return min(max(x["next_change#"] for x in logs if x["thread#"] == t) for t in (1, 2))


async def test_level0_level1_restore_to_several_scns_and_times(rig: Rig) -> None:
    db = rig.db
    rig.work(6, "before")
    l0 = await rig.backup("L0_A", 0)
    rig.work(5, "between")
    l1 = await rig.backup("L1_A", 1)
    rig.work(7, "after")
    rid = _rid(db)
    logs = db.archived_logs()
    assert {x["thread#"] for x in logs} == {1, 2}
    state = db.read()
    m_b = max(
        d.absolute_fuzzy_scn or d.checkpoint_scn
        for s in state.controlfile.backup_sets
        for d in s.datafiles
        if s.pieces and Path(s.pieces[0].handle).parent == l1
    )
    end = _chain_end(db)
    targets = [m_b + 1, (m_b + end) // 2, end]
    for target in targets:
        expected = db.expected_contents(target, rid)
        result, lines = await rig.restore(UntilScn(scn=target), l0, l1)
        assert result.ok, lines
        assert db.table_contents() == expected, f"UNTIL SCN {target}"
        assert db.database()["resetlogs_change#"] == target
    # by time, on the first incarnation's clock
    first = state.controlfile.incarnations[0]
    at = db.time_of(end - 3, first.resetlogs_id).replace(tzinfo=None)
    result, lines = await rig.restore(UntilTime(at=at), l0, l1, incarnation=1)
    assert result.ok, lines
    assert db.table_contents() == db.expected_contents(end - 3, first.resetlogs_id)


async def test_target_before_the_backup_is_consistent_fails_with_ora_01194(rig: Rig) -> None:
    rig.work(3, "w")
    l0 = await rig.backup("L0_F", 0)
    rig.work(3, "x")
    users = next(d for s in rig.db.backup_sets() for d in s.datafiles if d.file == 4)
    assert users.absolute_fuzzy_scn is not None
    assert users.absolute_fuzzy_scn > users.checkpoint_scn
    result, lines = await rig.restore(UntilScn(scn=users.absolute_fuzzy_scn), l0)
    assert not result.ok
    assert result.classification is not None
    assert result.classification.verdict is Verdict.FATAL
    assert any("ORA-01194: file 4 needs more recovery" in x for x in lines)
    assert any(x.startswith("ORA-01547") for x in lines)


async def test_missing_log_fails_with_rman_06054(rig: Rig) -> None:
    rig.work(3, "w")
    l0 = await rig.backup("L0_M", 0)
    rig.work(4, "x")
    lost = max(x["sequence#"] for x in rig.db.archived_logs() if x["thread#"] == 2) - 1
    rig.db.remove_archived_log(2, lost)
    rig.work(4, "y")
    result, lines = await rig.restore(UntilScn(scn=_chain_end(rig.db)), l0)
    assert result.classification is not None
    assert result.classification.code == "RMAN-06054"
    assert any(f"thread 2 with sequence {lost}" in x for x in lines)


async def test_until_sequence_is_exclusive(rig: Rig) -> None:
    rig.work(3, "w")
    l0 = await rig.backup("L0_S", 0)
    rig.work(4, "x")
    rig.work(4, "y")
    seq = max(x["sequence#"] for x in rig.db.archived_logs() if x["thread#"] == 1)
    log = next(x for x in rig.db.archived_logs() if x["thread#"] == 1 and x["sequence#"] == seq)
    expected = rig.db.expected_contents(log["first_change#"], _rid(rig.db))
    result, lines = await rig.restore(UntilSequence(sequence=seq, thread=1), l0)
    assert result.ok, lines
    assert rig.db.table_contents() == expected


async def test_restore_after_open_resetlogs_follows_the_new_incarnation(rig: Rig) -> None:
    db = rig.db
    rig.work(4, "w")
    l0 = await rig.backup("L0_I", 0)
    rig.work(4, "x")
    target = db.read().ledger[-2].scn  # the last two "x" rows fall on the abandoned branch
    result, _ = await rig.restore(UntilScn(scn=target), l0)
    assert result.ok
    incs = db.incarnations()
    assert [i["status"] for i in incs] == ["PARENT", "CURRENT"]
    new_rid = _rid(db)
    assert incs[1]["prior_incarnation#"] == 1
    assert incs[1]["resetlogs_change#"] == target
    # The new incarnation's logs restart at sequence 1 and are told apart by RESETLOGS_ID.
    rig.work(4, "child")
    assert min(x["sequence#"] for x in db.archived_logs() if x["resetlogs_id"] == new_rid) == 1
    l0b = await rig.backup("L0_J", 0)
    rig.work(4, "child2")
    end = _chain_end(db)
    result, lines = await rig.restore(UntilScn(scn=end), l0b)
    assert result.ok, lines
    assert db.table_contents() == db.expected_contents(end, new_rid)
    assert any(v.startswith("child2") for v in db.table_contents().values())
    # rows of the abandoned branch (made at or after the RESETLOGS SCN) are gone
    lost = {c.id for c in db.read().ledger if c.resetlogs_id != new_rid and c.scn >= target}
    assert lost
    assert not lost & set(db.table_contents())


async def test_preview_reports_the_fuzziness_point(rig: Rig) -> None:
    rig.work(3, "w")
    await rig.backup("L0_P", 0)
    users = next(d for s in rig.db.backup_sets() for d in s.datafiles if d.file == 4)
    result, lines = await rig.rman(preview_script("p1", UntilScn(scn=rig.db.read().current_scn)))
    assert result.ok, lines
    assert (
        f"Recovery must be done beyond SCN {users.absolute_fuzzy_scn} to clear datafile fuzziness"
        in lines
    )


@pytest.mark.parametrize(
    ("code", "verdict"), [("ORA-19511", Verdict.RETRYABLE), ("ORA-01017", Verdict.FATAL)]
)
async def test_injected_failures_are_classified_through_the_runner(
    rig: Rig, code: str, verdict: Verdict
) -> None:
    rig.db.inject_failure(
        "rman",
        error_stack("RMAN-03009: failure of backup command on ch1 channel", f"{code}: simulated"),
    )
    stage = rig.root / "inj"
    stage.mkdir()
    spec = BackupScript(command_id="inj", tag="INJ", channels=Channels(stage_dir=str(stage)))
    result, _ = await rig.rman(spec.render())
    assert result.classification is not None
    assert (result.classification.verdict, result.classification.code) == (verdict, code)
    # once: the next run succeeds
    result, lines = await rig.rman(spec.render())
    assert result.ok, lines


async def test_unknown_script_forms_are_refused_loudly(rig: Rig) -> None:
    result, lines = await rig.rman("BACKUP DATABASE;\n")
    assert result.exit_code == 1
    assert any("RMAN-00558" in x for x in lines)
