"""Every `tidemark` command line shown in README.md and docs/cli.md names a command that exists
and options it takes (a documented `up --config` that did not exist is what this catches)."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest
from typer.testing import CliRunner

from services.cli.main import app

ROOT = Path(__file__).parents[2]
DOCS = (
    ROOT / "README.md",
    ROOT / "docs" / "cli.md",
    ROOT / "docs" / "planner.md",
    ROOT / "docs" / "bus.md",
)
runner = CliRunner()


def _command_lines() -> list[str]:
    lines = []
    for doc in DOCS:
        text = doc.read_text()
        lines += re.findall(r"`(?:\.venv/bin/)?(tidemark [^`]+)`", text)
        lines += [
            line.split("  #")[0].strip()
            for line in re.findall(r"^(tidemark [^\n]+)$", text, flags=re.MULTILINE)
        ]
    return sorted(set(lines))


def _split(line: str) -> tuple[list[str], list[str]]:
    words = shlex.split(line.replace("...", "").replace("[", "").replace("]", ""))[1:]
    path = []
    for word in words:
        if word.startswith("-") or word.isupper() or not word.islower():
            break
        path.append(word)
    options = [w.split("=")[0] for w in words if w.startswith("--")]
    return path, options


def test_the_docs_show_commands() -> None:
    assert len(_command_lines()) >= 15


@pytest.mark.parametrize("line", _command_lines())
def test_each_documented_command_and_option_exists(line: str) -> None:
    path, options = _split(line)
    shown = runner.invoke(app, [*path, "--help"], env={"COLUMNS": "300"})
    assert shown.exit_code == 0, (line, shown.output)
    for option in options:
        if option in ("--help", "--version", "--install-completion"):
            continue
        assert option in shown.output, f"{line}: {path} has no {option}"
