"""docs/planner.md says what the code does: its settings table lists exactly the settings,
its example configuration loads, and its rejection codes exist."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import pytest

from services.planner import errors
from services.planner.settings import PlannerSettings
from services.settings import Settings

pytestmark = pytest.mark.unit

DOC = (Path(__file__).parents[2] / "docs" / "planner.md").read_text(encoding="utf-8")


def first_column(header: str) -> set[str]:
    lines = DOC.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(f"| {header} |"))
    names = set()
    for line in lines[start + 2 :]:
        if not line.startswith("|"):
            break
        names.update(n.strip().strip("`") for n in line.split("|")[1].split("/"))
    return names


def test_settings_table_lists_every_setting() -> None:
    assert first_column("setting") == set(PlannerSettings.model_fields)


def test_example_configuration_loads() -> None:
    block = re.search(r"```toml\n(.*?)```", DOC, re.S)
    assert block is not None
    Settings.model_validate({"node": "n", **tomllib.loads(block.group(1))})


def test_rejection_codes_exist() -> None:
    codes = {v for k, v in vars(errors).items() if k.isupper() and isinstance(v, str)}
    assert first_column("code") <= codes
