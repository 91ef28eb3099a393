"""docs/architecture.md and docs/recovery.md name what exists: the modules they point a reader
to are there, the engines they list are the registry's, and the verdict codes and targets of
recovery.md are the contract's."""

from __future__ import annotations

import re
import typing
from pathlib import Path

import pytest

from schemas.catalog import VerdictCode
from schemas.messages.restores import RestoreTarget
from services.engines.registry import _DRIVERS

pytestmark = pytest.mark.unit

ROOT = Path(__file__).parents[2]
ARCHITECTURE = ROOT / "docs" / "architecture.md"
RECOVERY = ROOT / "docs" / "recovery.md"
PATH = re.compile(r"`((?:services|schemas|tests)/[A-Za-z0-9_./{},]+)`")


def described_as_today(text: str) -> str:
    """The page without its "Where a new ... goes" sections: those describe what a change
    would add (a worked example names modules that do not exist yet, by design)."""
    return re.sub(r"^## Where a new .*?(?=^## )", "", text, flags=re.S | re.M)


def named_paths(text: str) -> set[str]:
    found = set()
    for raw in PATH.findall(text):
        brace = re.fullmatch(r"(.*)\{(.*)\}(.*)", raw)
        if brace:
            found.update(f"{brace[1]}{part}{brace[3]}" for part in brace[2].split(","))
        else:
            found.add(raw)
    return found


@pytest.mark.parametrize("page", [ARCHITECTURE, RECOVERY], ids=lambda p: p.name)
def test_every_module_a_page_points_to_exists(page: Path) -> None:
    paths = named_paths(described_as_today(page.read_text(encoding="utf-8")))
    assert paths, "the page names no module at all"
    missing = sorted(p for p in paths if not (ROOT / p.rstrip("/")).exists())
    assert missing == []


def test_the_engines_of_the_floor_diagram_are_the_registry_drivers() -> None:
    text = ARCHITECTURE.read_text(encoding="utf-8")
    listed = re.search(r"services/engines/\{([a-z,]+)\}", text)
    assert listed is not None
    assert set(listed[1].split(",")) == {engine.value for engine in _DRIVERS}


def test_the_verdict_table_lists_every_verdict_but_ok() -> None:
    text = RECOVERY.read_text(encoding="utf-8")
    table = text.split("| code | why |", 1)[1].split("\n\n", 1)[0]
    codes = set(re.findall(r"^\| `([a-z_]+)` \|", table, flags=re.M))
    assert codes == set(typing.get_args(VerdictCode)) - {"ok"}


def test_the_targets_table_lists_every_target_kind() -> None:
    text = RECOVERY.read_text(encoding="utf-8")
    table = text.split("| target | means | engines |", 1)[1].split("\n\n", 1)[0]
    kinds = set(re.findall(r"^\| `([a-z_]+)` \|", table, flags=re.M))
    union = typing.get_args(typing.get_args(RestoreTarget)[0])
    assert kinds == {model.model_fields["kind"].default for model in union}
