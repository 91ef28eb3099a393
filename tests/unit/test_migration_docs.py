"""docs/migration.md says what the code does: its advisor table is `rules_table()`, its codes
table lists every code the saga and `check_request` refuse with, its settings exist, and every
`tidemark` command it shows names a command and options that exist."""

from __future__ import annotations

import inspect
import re
import shlex
import tomllib
from pathlib import Path

import pytest
from typer.testing import CliRunner

from schemas.messages import migrations as contract
from services.cli.main import app
from services.planner import migrations as saga
from services.planner.advisor import rules_table
from services.planner.settings import PlannerSettings
from services.settings import Settings

pytestmark = pytest.mark.unit

DOC = (Path(__file__).parents[2] / "docs" / "migration.md").read_text(encoding="utf-8")


def table_after(header: str) -> list[list[str]]:
    """The rows of the table whose header line starts with `header`, cells stripped."""
    lines = DOC.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(header))
    rows = []
    for line in lines[start + 2 :]:
        if not line.startswith("|"):
            break
        rows.append([cell.strip() for cell in line.strip().strip("|").split(" | ")])
    return rows


def first_cells(header: str) -> set[str]:
    return {row[0].strip("`") for row in table_after(header)}


def test_every_advisor_rule_is_a_row_of_the_docs_table() -> None:
    shown = {tuple(row) for row in table_after("| method | engine | requires")}
    for method, engine, requires, estimate in rules_table():
        assert (f"`{method}`", engine, requires, estimate) in shown, (
            f"{method}: regenerate the advisor table in docs/migration.md from rules_table()"
        )


def test_every_code_the_saga_refuses_with_is_listed() -> None:
    codes = {v for k, v in vars(saga).items() if k.startswith("CODE_") and isinstance(v, str)}
    codes |= set(re.findall(r'"(TM-MIG-[A-Z-]+)"', inspect.getsource(contract.check_request)))
    assert len(codes) >= 10
    assert codes - first_cells("| code | when |") == set()


def test_the_settings_shown_are_the_planners() -> None:
    shown = first_cells("| setting | default | meaning |")
    fields = set(PlannerSettings.model_fields)
    assert shown <= fields
    assert {f for f in fields if f.startswith("migration_")} <= shown
    for name in shown:
        row = next(r for r in table_after("| setting |") if r[0] == f"`{name}`")
        assert float(row[1]) == PlannerSettings.model_fields[name].default, name


def test_the_example_configuration_loads() -> None:
    block = re.search(r"```toml\n(.*?)```", DOC, re.S)
    assert block is not None
    Settings.model_validate({"node": "n", **tomllib.loads(block.group(1))})


def _command_lines() -> list[str]:
    lines = re.findall(r"`(tidemark [^`]+)`", DOC)
    lines += re.findall(r"^(tidemark [^\n]+)$", DOC, flags=re.MULTILINE)
    return sorted(set(lines))


def test_the_page_shows_the_walk_through() -> None:
    shown = {" ".join(line.split()[1:3]) for line in _command_lines()}
    assert {
        "migrate advise",
        "migrate plan",
        "migrate start",
        "migrate status",
        "migrate cutover",
        "migrate rollback",
    } <= shown


@pytest.mark.parametrize("line", _command_lines())
def test_each_command_shown_exists_with_its_options(line: str) -> None:
    words = shlex.split(line)[1:]
    path = []
    for word in words:
        if word.startswith("-") or not word.islower() or "-" in word:
            break
        path.append(word)
    shown = CliRunner().invoke(app, [*path, "--help"], env={"COLUMNS": "300"})
    assert shown.exit_code == 0, (line, shown.output)
    for option in (w.split("=")[0] for w in words if w.startswith("--")):
        assert option in shown.output, f"{line}: {path} has no {option}"
