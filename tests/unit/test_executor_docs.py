"""docs/executor.md says what the code does: its example configuration loads, and its tables
list exactly the settings, job states and failure codes that exist."""

from __future__ import annotations

import json
import re
import tomllib
from pathlib import Path

import pytest

from schemas import NodeHeartbeat
from services.executor import errors
from services.executor.journal import JobState
from services.executor.settings import ExecutorSettings
from services.settings import Settings

pytestmark = pytest.mark.unit

DOC = Path(__file__).parents[2] / "docs" / "executor.md"


def table_names(text: str, header: str) -> set[str]:
    """First-column `names` of the markdown table whose header row starts with `header`."""
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(f"| {header} "))
    names = set()
    for line in lines[start + 2 :]:
        if not line.startswith("|"):
            break
        names.add(line.split("|")[1].strip().strip("`"))
    return names


def test_the_example_configuration_loads() -> None:
    block = re.search(r"```toml\n(.*?)```", DOC.read_text(encoding="utf-8"), flags=re.S)
    assert block is not None
    settings = Settings.model_validate(tomllib.loads(block.group(1)))
    (database,) = settings.executor.databases
    assert database.uid == "orders-db"


def test_the_heartbeat_example_is_a_node_heartbeat() -> None:
    block = re.search(r"```json\n(.*?)```", DOC.read_text(encoding="utf-8"), flags=re.S)
    assert block is not None
    NodeHeartbeat.model_validate(json.loads(block.group(1)))


def test_the_settings_table_lists_every_setting() -> None:
    assert table_names(DOC.read_text(encoding="utf-8"), "setting") == set(
        ExecutorSettings.model_fields
    )


def test_the_states_table_lists_every_job_state() -> None:
    assert table_names(DOC.read_text(encoding="utf-8"), "state") == {s.value for s in JobState}


def test_every_failure_code_is_documented() -> None:
    text = DOC.read_text(encoding="utf-8")
    codes = {v for k, v in vars(errors).items() if k.isupper() and isinstance(v, str)}
    assert codes
    assert all(f"`{code}`" in text for code in codes)
