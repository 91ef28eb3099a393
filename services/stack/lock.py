"""The state directory's owner: one running stack per directory.

Two stacks on one directory would run two nats-servers on one JetStream store (each corrupting
the other's files), and the second to stop would delete `stack.json` and the passwords of the one
still running. So `tidemark up` takes an exclusive `flock` on `<state>/stack.lock` before it
touches anything there, writes its pid into it, and keeps the lock until it has stopped. The
kernel drops the lock when the owner dies, however it dies: a stale lock file is never a reason
to refuse.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

LOCK_FILE = "stack.lock"


class StateDirLocked(RuntimeError):
    """Another live process owns the state directory; nothing in it was changed."""

    def __init__(self, state_dir: Path, owner: int | None) -> None:
        self.state_dir = state_dir
        self.owner = owner
        who = f"pid {owner}" if owner else "another process"
        super().__init__(
            f"{state_dir} is in use by a running stack ({who}); stop it first, or give "
            "another --state-dir"
        )


def owner_of(state_dir: Path) -> int | None:
    """The pid written by the stack that holds `state_dir`, or None when no one holds it."""
    path = state_dir / LOCK_FILE
    try:
        handle = path.open("r")
    except OSError:
        return None
    with handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            text = handle.read().strip()
            return int(text) if text.isdigit() else 0
        fcntl.flock(handle, fcntl.LOCK_UN)
        return None


@dataclass
class StateDirLock:
    """An exclusive hold on one state directory, for as long as the stack runs."""

    state_dir: Path
    _handle: IO[str] | None = field(default=None, repr=False)

    @property
    def held(self) -> bool:
        return self._handle is not None

    def acquire(self) -> None:
        """Take the directory or raise `StateDirLocked` naming the owner's pid."""
        if self._handle is not None:
            return
        self.state_dir.mkdir(parents=True, exist_ok=True)
        # "a+" and not "w": truncating before holding the lock would erase the owner's pid.
        handle = (self.state_dir / LOCK_FILE).open("a+")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            text = handle.read().strip()
            handle.close()
            raise StateDirLocked(self.state_dir, int(text) if text.isdigit() else None) from None
        handle.seek(0)
        handle.truncate()
        handle.write(f"{os.getpid()}\n")
        handle.flush()
        self._handle = handle

    def release(self) -> None:
        if self._handle is None:
            return
        with contextlib.suppress(OSError):
            self._handle.truncate(0)
        self._handle.close()  # closing drops the flock
        self._handle = None
