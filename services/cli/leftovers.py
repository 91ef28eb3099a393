"""Data directories an in-place restore set aside: `<data_dir>.tidemark-old-<restore>`.

An in-place restore never deletes the directory it replaced (see
`services/engines/postgres/restore.py`): it is the only copy of what the restore abandoned. They
cost a second copy of the database's volume, so `tidemark leftovers` lists them and removes one
when told, by name, with `--yes`. Only a directory beside a declared data directory and named
as a restore names it is ever removed: a typo cannot reach anything else.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

MARK = ".tidemark-old-"


@dataclass(frozen=True)
class Leftover:
    path: Path
    data_dir: Path
    restore: str
    """The restore's short id (the first 8 characters of its uuid)."""
    set_aside_at: datetime
    size_bytes: int

    def as_json(self) -> dict[str, object]:
        return {
            "path": str(self.path),
            "data_dir": str(self.data_dir),
            "restore": self.restore,
            "set_aside_at": self.set_aside_at.isoformat(),
            "size_bytes": self.size_bytes,
        }


class NotALeftover(ValueError):
    """The path named is not a set-aside data directory of a declared database."""


def _size(path: Path) -> int:
    total = 0
    for root, _dirs, files in os.walk(path):
        for name in files:
            try:
                total += os.lstat(os.path.join(root, name)).st_size
            except OSError:
                continue
    return total


def find_leftovers(data_dirs: Iterable[Path]) -> list[Leftover]:
    found = []
    for data_dir in data_dirs:
        parent = data_dir.parent
        if not parent.is_dir():
            continue
        for entry in sorted(parent.iterdir()):
            if not entry.name.startswith(data_dir.name + MARK) or not entry.is_dir():
                continue
            if entry.is_symlink():
                continue  # never follow a link out of the database's volume
            found.append(
                Leftover(
                    path=entry,
                    data_dir=data_dir,
                    restore=entry.name[len(data_dir.name + MARK) :],
                    set_aside_at=datetime.fromtimestamp(entry.stat().st_mtime, UTC),
                    size_bytes=_size(entry),
                )
            )
    return found


def remove_leftover(leftover: Leftover, data_dirs: Iterable[Path]) -> None:
    """Delete `leftover`, after checking again that it is one (the listing may be stale)."""
    current = {found.path for found in find_leftovers(data_dirs)}
    if leftover.path not in current:
        raise NotALeftover(f"{leftover.path} is not a set-aside data directory")
    shutil.rmtree(leftover.path)
