"""RMAN scripts pinned byte for byte: a change to a builder shows up as a golden-file diff.

Regenerate after a deliberate change with `TIDEMARK_UPDATE_GOLDEN=1 pytest
tests/unit/test_oracle_scripts.py`, then read the diff before committing it.
"""

from __future__ import annotations

import os
from datetime import datetime
from pathlib import Path

import pytest
from pydantic import ValidationError

from services.engines.oracle.scripts import (
    BackupScript,
    Channels,
    RestoreScript,
    SnapshotRecoverScript,
    UntilScn,
    UntilSequence,
    UntilTime,
    preview_script,
    validate_database_script,
    validate_restore_script,
)

pytestmark = [pytest.mark.unit, pytest.mark.oracle]

GOLDEN = Path(__file__).parent.parent / "golden" / "oracle"
JOB = "0190f7a2-5b1c-7d2e-8f00-1234567890ab"
STAGE = "/var/lib/tidemark/stage/db1"
CHANNELS = Channels(count=2, stage_dir=STAGE)

SCRIPTS: dict[str, str] = {
    "backup_level0": BackupScript(
        command_id=JOB, tag="L0_20260131T1200", level=0, channels=CHANNELS, section_size_mb=32768
    ).render(),
    "backup_level1_differential": BackupScript(
        command_id=JOB, tag="L1_20260131T1800", level=1, channels=CHANNELS
    ).render(),
    "backup_level1_cumulative_compressed_encrypted": BackupScript(
        command_id=JOB,
        tag="L1C_20260131T1800",
        level=1,
        cumulative=True,
        channels=Channels(count=4, stage_dir=STAGE),
        section_size_mb=1024,
        compression="MEDIUM",
        encryption=True,
    ).render(),
    "backup_full_autobackup": BackupScript(
        command_id=JOB,
        tag="FULL_1",
        level=None,
        channels=Channels(count=1, stage_dir=STAGE),
        plus_archivelog=False,
        controlfile="autobackup",
    ).render(),
    "restore_until_scn": RestoreScript(
        command_id=JOB,
        dbid=1234567890,
        controlfile_piece=STAGE + "/restore/TMSIM_20260131_0abc_1_1",
        stage_dir=STAGE + "/restore",
        until=UntilScn(scn=1_000_123),
        channels=2,
    ).render(),
    "restore_until_time_incarnation": RestoreScript(
        command_id=JOB,
        dbid=1234567890,
        controlfile_piece=STAGE + "/restore/c-1234567890-20260131-00",
        stage_dir=STAGE + "/restore/",
        until=UntilTime(at=datetime(2026, 1, 31, 12, 34, 56)),
        incarnation=2,
    ).render(),
    "restore_until_sequence": RestoreScript(
        command_id=JOB,
        dbid=1234567890,
        controlfile_piece=STAGE + "/restore/cf",
        stage_dir=STAGE + "/restore",
        until=UntilSequence(sequence=1841, thread=2),
    ).render(),
    "snapshot_recover_until_scn": SnapshotRecoverScript(
        command_id=JOB, stage_dir=STAGE + "/snaprestore", until=UntilScn(scn=1_000_456)
    ).render(),
    "preview": preview_script(JOB, UntilScn(scn=42)),
    "validate_restore": validate_restore_script(JOB, UntilScn(scn=42), STAGE + "/verify"),
    "validate_database": validate_database_script(JOB),
}


@pytest.mark.parametrize("name", sorted(SCRIPTS))
def test_script_matches_golden(name: str) -> None:
    path = GOLDEN / f"{name}.rman"
    if os.environ.get("TIDEMARK_UPDATE_GOLDEN"):
        path.write_text(SCRIPTS[name])
    assert SCRIPTS[name] == path.read_text()


def test_every_golden_file_is_pinned() -> None:
    # the Data Guard scripts are pinned by tests/unit/test_oracle_dataguard.py
    pinned = {p.stem for p in GOLDEN.glob("*.rman")} - {
        p.stem for p in GOLDEN.glob("dataguard_*.rman")
    }
    assert pinned == set(SCRIPTS)


@pytest.mark.parametrize(
    "bad_tag", ["L0'; DELETE NOPROMPT BACKUP; --", "0starts_with_digit", "a" * 31, "has space", ""]
)
def test_tags_are_validated_never_pasted(bad_tag: str) -> None:
    with pytest.raises(ValidationError):
        BackupScript(command_id=JOB, tag=bad_tag, channels=CHANNELS)


@pytest.mark.parametrize(
    "bad_path", ["relative/dir", "/tmp/it's", "/tmp/a b", "/tmp/%U", "/tmp/x\n"]
)
def test_paths_are_validated(bad_path: str) -> None:
    with pytest.raises(ValidationError):
        Channels(stage_dir=bad_path)
    with pytest.raises(ValidationError):
        RestoreScript(
            command_id=JOB,
            dbid=1,
            controlfile_piece=bad_path,
            stage_dir="/s",
            until=UntilScn(scn=5),
        )


def test_command_id_is_validated() -> None:
    with pytest.raises(ValidationError):
        preview_script("x'; SHUTDOWN ABORT; --", UntilScn(scn=5))


def test_cumulative_needs_level_1() -> None:
    with pytest.raises(ValueError, match="CUMULATIVE"):
        BackupScript(command_id=JOB, tag="T", level=0, cumulative=True, channels=CHANNELS).render()
