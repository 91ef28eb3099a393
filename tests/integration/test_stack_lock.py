"""One stack per state directory: a second `tidemark up` is refused with the owner's pid, and
nothing it does deletes the running stack's files."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from services.stack.embedded import STACK_FILE, EmbeddedStack
from services.stack.lock import StateDirLock, StateDirLocked, owner_of
from services.stack.natsserver import free_port

pytestmark = pytest.mark.integration
TIDEMARK = [sys.executable, "-m", "services.cli.main"]


def test_a_second_up_on_a_running_stack_is_refused_and_deletes_nothing(tmp_path: Path) -> None:
    first = EmbeddedStack(state_dir=tmp_path, services=(), nats_port=free_port())
    first.start_nats()
    try:
        stack_file = (tmp_path / STACK_FILE).read_text()
        passwords = {path: path.read_text() for path in first.passwords.values()}
        assert passwords
        assert owner_of(tmp_path) == os.getpid()

        second = EmbeddedStack(state_dir=tmp_path, services=(), nats_port=free_port())
        with pytest.raises(StateDirLocked, match=f"pid {os.getpid()}"):
            second.start_nats()
        second.stop()  # what `up` does on its way out: must not touch the owner's files

        result = subprocess.run(
            [*TIDEMARK, "up", "--until-healthy", "--state-dir", str(tmp_path)],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert result.returncode == 1, result.stdout + result.stderr
        assert f"pid {os.getpid()}" in result.stdout
        assert "stopped cleanly" not in result.stdout

        assert (tmp_path / STACK_FILE).read_text() == stack_file
        assert {path: path.read_text() for path in passwords} == passwords
        assert first.nats is not None
        assert first.nats.process is not None
        assert first.nats.process.poll() is None, "the first stack's nats-server was stopped"
    finally:
        first.stop()
    assert not (tmp_path / STACK_FILE).exists()
    assert owner_of(tmp_path) is None


def test_a_lock_left_by_a_dead_stack_does_not_refuse(tmp_path: Path) -> None:
    # A stack killed with SIGKILL leaves its lock file with its pid; the kernel dropped the lock.
    (tmp_path / "stack.lock").write_text("999999\n")
    lock = StateDirLock(tmp_path)
    lock.acquire()
    try:
        assert owner_of(tmp_path) == os.getpid()
    finally:
        lock.release()
