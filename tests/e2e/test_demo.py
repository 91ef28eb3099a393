"""`make demo` as a test: the whole tour, unattended, in its own process.

The tour starts its own nats-server and services, creates its own PostgreSQL cluster, and must
end with `PITR verified:` after checking the clone against the writer's ledger row for row.
Nothing may be left behind: no server of the demo's still running, no state directory.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

pytestmark = pytest.mark.e2e


def _processes_under(path: Path) -> list[str]:
    found = []
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        if str(path) in cmdline:
            found.append(f"{pid}: {cmdline[:200]}")
    return found


def test_the_demo_restores_a_clone_that_equals_the_ledger() -> None:
    base = Path(tempfile.mkdtemp(prefix="tm-demo-test-", dir="/var/tmp"))
    os.chmod(base, 0o711)  # noqa: S103 (the database OS user traverses it)
    try:
        done = subprocess.run(
            [sys.executable, "-m", "services.cli.main", "demo", "--seed", "11"],
            capture_output=True,
            text=True,
            timeout=300,
            env={**os.environ, "TIDEMARK_DEMO_DIR": str(base), "COLUMNS": "200"},
            check=False,
        )
        output = done.stdout + done.stderr
        assert done.returncode == 0, output[-4000:]
        lines = [line for line in done.stdout.splitlines() if line.strip()]
        assert lines[-1].startswith("PITR verified: target "), output[-2000:]
        assert "the clone equals the ledger at that moment" in done.stdout
        assert "restorable window on tl-00000001" in done.stdout
        assert "stopped cleanly" in done.stdout
        assert list(base.iterdir()) == [], "the demo removes its state directory"
        assert _processes_under(base) == []
    finally:
        for line in _processes_under(base):
            os.kill(int(line.split(":")[0]), 9)
        shutil.rmtree(base, ignore_errors=True)
