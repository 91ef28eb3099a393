"""What the migration e2e modules share: a scratch root the database OS user can traverse, the
stack started with the migration clock fast, the targets' directories, and a cleanup that stops
every cluster the module left running under its root (sources, targets, fenced sources alike,
whatever their release)."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import tempfile
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

from services.engines.postgres.oscmd import chown_to, database_os_user
from tests.e2e.pitr_stack import PitrStack, Protected

KEEP = os.environ.get("TIDEMARK_E2E_KEEP") == "1"
NODE = "e2e-pitr"
FAST_CLOCK = {
    "TIDEMARK_PLANNER__MIGRATION_LAG_INTERVAL_S": "0.3",
    "TIDEMARK_PLANNER__MIGRATION_READY_INTERVAL_S": "1",
    "TIDEMARK_PLANNER__TICK_S": "0.2",
}
"""Lag sampled every 0.3 s, a ready migration looked at every second: tests wait seconds."""


def scratch_root(prefix: str) -> Iterator[Path]:
    """A module's root under /var/tmp (removed after, unless TIDEMARK_E2E_KEEP=1)."""
    path = Path(tempfile.mkdtemp(prefix=prefix, dir="/var/tmp"))
    os.chmod(path, 0o711)  # noqa: S103 (the database OS user traverses it)
    try:
        yield path
    finally:
        if KEEP:
            print(f"kept {path}")
        else:
            shutil.rmtree(path, ignore_errors=True)


async def migration_stack(
    root: Path,
    make: Callable[[], list[Protected]],
    *,
    extra_env: dict[str, str] | None = None,
) -> AsyncIterator[PitrStack]:
    """The stack over the sources `make` creates, with `FAST_CLOCK`; on the way out every
    other postmaster under `root` (the targets) is stopped (immediate), then the stack and its
    sources."""
    dbs: list[Protected] = []
    try:
        dbs = make()
        started = await PitrStack.start(root, dbs, extra_env={**FAST_CLOCK, **(extra_env or {})})
    except BaseException:
        for db in dbs:
            with contextlib.suppress(Exception):
                db.cluster.stop()
        raise
    try:
        yield started
    finally:
        stop_clusters(root, keep={db.cluster.data_dir for db in dbs})
        await started.close()


def stop_clusters(root: Path, *, keep: set[Path]) -> None:
    """SIGQUIT (PostgreSQL's immediate shutdown) to every postmaster under `root` but those of
    `keep` (data directories)."""
    for pid_file in sorted(root.rglob("postmaster.pid")):
        if pid_file.parent in keep:
            continue
        with contextlib.suppress(OSError, ValueError, IndexError):
            os.kill(int(pid_file.read_text(encoding="utf-8").split()[0]), signal.SIGQUIT)


def target_dir(root: Path, name: str) -> Path:
    """`root/name/data`: the parent made for the database OS user, the directory left to the
    migration (a target directory must be empty or absent)."""
    parent = root / name
    parent.mkdir(mode=0o700)
    chown_to(parent, database_os_user())
    return parent / "data"
