"""docs/archiver.md says what the code does: its example configuration loads, and its settings
and metrics tables list exactly what exists."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import pytest

import services.archiver.metrics as metrics_module
from services.archiver.settings import ArchiverSettings
from services.settings import Settings

pytestmark = pytest.mark.unit

DOC = Path(__file__).parents[2] / "docs" / "archiver.md"


def table_names(text: str, header: str) -> set[str]:
    """First-column `names` of the markdown table whose header row starts with `header`."""
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(f"| {header} |"))
    names = set()
    for line in lines[start + 2 :]:
        if not line.startswith("|"):
            break
        names.add(line.split("|")[1].strip().strip("`"))
    return names


def test_the_example_configuration_loads() -> None:
    text = DOC.read_text(encoding="utf-8")
    block = re.search(r"```toml\n(.*?)```", text, flags=re.S)
    assert block is not None
    settings = Settings.model_validate(tomllib.loads(block.group(1)))
    (database,) = settings.archiver.databases
    assert (database.uid, settings.archiver.compression) == ("orders-db", "zstd")


def test_the_settings_table_lists_every_setting() -> None:
    documented = table_names(DOC.read_text(encoding="utf-8"), "setting")
    assert documented == set(ArchiverSettings.model_fields)


def test_the_metrics_table_lists_every_instrument() -> None:
    documented = table_names(DOC.read_text(encoding="utf-8"), "name")
    source = Path(metrics_module.__file__).read_text(encoding="utf-8")
    created = set(re.findall(r'create_\w+\(\s*"(tidemark\.archive\.[a-z.]+)"', source))
    assert created
    assert documented == created
