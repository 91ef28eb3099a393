"""The CLI finds its stack from anywhere (--state-dir, TIDEMARK_STATE_DIR, the settings file's
state_dir, a per-user default), and says "no stack found at X" apart from a refused identity."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from services.stack.embedded import EmbeddedStack
from services.stack.natsserver import free_port

pytestmark = pytest.mark.integration
TIDEMARK = [sys.executable, "-m", "services.cli.main"]
_OURS = ("TIDEMARK_STATE_DIR", "TIDEMARK_CONFIG", "TIDEMARK_NATS__URL", "XDG_STATE_HOME")


def _run(*args: str, cwd: Path, **env: str) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if k not in _OURS and "NATS__" not in k}
    return subprocess.run(
        [*TIDEMARK, *args],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=cwd,
        env={**clean, "COLUMNS": "200", **env},
    )


@pytest.fixture
def stack(tmp_path: Path) -> Iterator[EmbeddedStack]:
    running = EmbeddedStack(state_dir=tmp_path / "state", services=(), nats_port=free_port())
    running.start_nats()
    yield running
    running.stop()


def test_each_way_of_naming_the_stack_finds_it(stack: EmbeddedStack, tmp_path: Path) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    settings = tmp_path / "conf" / "tidemark.toml"
    settings.parent.mkdir()
    settings.write_text('state_dir = "../state"\n')  # relative to the file, not to the cwd
    ways = {
        "--state-dir": _run(
            "status", "-o", "json", "--state-dir", str(stack.state_dir), cwd=elsewhere
        ),
        "TIDEMARK_STATE_DIR": _run(
            "status", "-o", "json", cwd=elsewhere, TIDEMARK_STATE_DIR=str(stack.state_dir)
        ),
        "settings file": _run("status", "-o", "json", cwd=elsewhere, TIDEMARK_CONFIG=str(settings)),
    }
    assert stack.nats is not None
    for way, result in ways.items():
        assert result.returncode == 0, (way, result.stdout, result.stderr)
        assert json.loads(result.stdout)["url"] == stack.nats.url, way


def test_the_per_user_default_is_where_an_unnamed_stack_is_looked_for(tmp_path: Path) -> None:
    result = _run("status", cwd=tmp_path, XDG_STATE_HOME=str(tmp_path / "xdg"))
    assert result.returncode == 1
    assert f"no stack found at {tmp_path / 'xdg' / 'tidemark'}" in " ".join(result.stdout.split())


def test_a_refused_identity_is_not_reported_as_a_missing_stack(
    stack: EmbeddedStack, tmp_path: Path
) -> None:
    wrong = tmp_path / "wrong-password"
    wrong.write_text("not-the-password\n")
    wrong.chmod(0o600)
    result = _run(
        "status",
        "--state-dir",
        str(stack.state_dir),
        cwd=tmp_path,
        TIDEMARK_NATS__USER="tidemark-tool",
        TIDEMARK_NATS__PASSWORD_FILE=str(wrong),
    )
    assert result.returncode == 1
    said = " ".join(result.stdout.split())
    assert "authentication failed" in said, said
    assert "tidemark-tool" in said
    assert "no stack found" not in said


def test_a_stack_that_is_not_running_is_named_as_such(tmp_path: Path) -> None:
    state = tmp_path / "state"
    stopped = EmbeddedStack(state_dir=state, services=(), nats_port=free_port())
    stopped.start_nats()
    stack_file = (state / "stack.json").read_text()
    stopped.stop()
    (state / "stack.json").write_text(stack_file)  # as a SIGKILLed stack leaves it
    result = _run("status", "--state-dir", str(state), cwd=tmp_path)
    assert result.returncode == 1
    assert "is not running" in " ".join(result.stdout.split())


def test_up_takes_a_settings_file_and_keeps_its_timeline_port(tmp_path: Path) -> None:
    port = free_port()
    settings = tmp_path / "conf" / "tidemark.toml"
    settings.parent.mkdir()
    settings.write_text(f'state_dir = "state"\n[catalog]\nhttp_port = {port}\n')
    result = _run(
        "up",
        "--until-healthy",
        "--config",
        str(settings),
        "--nats-port",
        str(free_port()),
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"timeline page: http://127.0.0.1:{port}/" in result.stdout
    assert (tmp_path / "conf" / "state" / "logs" / "catalog.log").is_file()
