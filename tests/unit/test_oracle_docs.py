"""docs/oracle.md says what the code does: its example configuration loads, and its table
lists exactly the fields of an `oracle` section."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import pytest

from schemas import Engine
from services.executor.settings import ExecutorSettings, OracleInstance, OracleSnapshots

pytestmark = pytest.mark.unit

DOC = Path(__file__).parents[2] / "docs" / "oracle.md"


def test_the_example_configuration_loads() -> None:
    block = re.search(r"```toml\n(.*?)```", DOC.read_text(encoding="utf-8"), flags=re.S)
    assert block is not None
    settings = ExecutorSettings.model_validate(tomllib.loads(block.group(1))["executor"])
    (database,) = settings.databases
    assert database.engine is Engine.ORACLE
    assert database.oracle is not None
    assert database.oracle.oracle_sid == "ERPPROD"


def test_the_field_table_lists_every_field() -> None:
    lines = DOC.read_text(encoding="utf-8").splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("| field "))
    names = set()
    for line in lines[start + 2 :]:
        if not line.startswith("|"):
            break
        names.add(line.split("|")[1].strip().strip("`"))
    assert names == set(OracleInstance.model_fields)


def test_an_oracle_database_needs_its_section_and_only_it() -> None:
    with pytest.raises(ValueError, match="needs \\[oracle\\]"):
        ExecutorSettings.model_validate(
            {"databases": [{"uid": "erp", "engine": "oracle", "name": "ERP"}]}
        )
    with pytest.raises(ValueError, match="is for Oracle databases"):
        ExecutorSettings.model_validate(
            {
                "databases": [
                    {
                        "uid": "orders",
                        "engine": "postgres",
                        "name": "orders",
                        "postgres": {"data_dir": "/pg"},
                        "oracle": {
                            "oracle_home": "/h",
                            "oracle_sid": "X",
                            "staging_dir": "/s",
                            "dsn": "x",
                            "user": "u",
                            "password_file": "/p",
                        },
                    }
                ]
            }
        )


def _section(title: str) -> str:
    text = DOC.read_text(encoding="utf-8")
    return text.split(f"## {title}\n", 1)[1].split("\n## ", 1)[0]


def test_the_snapshot_example_loads_and_its_table_lists_every_field() -> None:
    section = _section("Storage snapshots")
    block = re.search(r"```toml\n(.*?)```", section, flags=re.S)
    assert block is not None
    (database,) = ExecutorSettings.model_validate(
        tomllib.loads(block.group(1))["executor"]
    ).databases
    assert database.oracle is not None
    assert database.oracle.snapshots is not None
    assert database.oracle.snapshots.pod_selector == "app=erp,tier=db"
    lines = section.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("| field "))
    names = set()
    for line in lines[start + 2 :]:
        if not line.startswith("|"):
            break
        names.add(line.split("|")[1].strip().strip("`"))
    assert names == set(OracleSnapshots.model_fields)
