"""Which PostgreSQL releases this node has, and where their binaries are.

A migration into a newer major release (`logical-upgrade`, `dump`) runs the target's tools from
the release the request names (`target_instance.release`). The executor never takes a path from a
message: it looks among the bin directories of its own configuration (`postgres_bin_dirs`) and
the distribution's (`/usr/lib/postgresql/*/bin`), asks each `postgres --version`, and keeps the
first of each major release that holds every tool a migration runs.
"""

from __future__ import annotations

import functools
import glob
import os
import re
import subprocess
from collections.abc import Iterable
from pathlib import Path

MIGRATION_TOOLS = ("initdb", "pg_ctl", "postgres", "psql", "pg_dump", "pg_dumpall", "pg_restore")
VERSION = re.compile(r"\(PostgreSQL\) (\d+)(?:\.(\d+))?")


class ReleaseNotFound(LookupError):
    """No bin directory of that major release is on this node; the message names what was found."""


@functools.cache
def _major_of(bindir: Path) -> int | None:
    """The major release of `bindir/postgres`, or None if it is no PostgreSQL server here."""
    postgres = bindir / "postgres"
    if not all(os.access(bindir / tool, os.X_OK) for tool in MIGRATION_TOOLS):
        return None
    try:
        out = subprocess.run(
            [postgres, "--version"], capture_output=True, text=True, timeout=30, check=False
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    match = VERSION.search(out)
    return int(match.group(1)) if match else None


def releases(extra: Iterable[Path] = ()) -> dict[int, Path]:
    """Every major release found, with its bin directory (configured ones first)."""
    found: dict[int, Path] = {}
    candidates = [*extra, *(Path(p) for p in sorted(glob.glob("/usr/lib/postgresql/*/bin")))]
    for bindir in candidates:
        major = _major_of(Path(bindir))
        if major is not None:
            found.setdefault(major, Path(bindir))
    return found


def release_bindir(major: int, extra: Iterable[Path] = ()) -> Path:
    """The bin directory of PostgreSQL `major` on this node, or `ReleaseNotFound` saying which
    releases there are."""
    found = releases(extra)
    if major in found:
        return found[major]
    have = ", ".join(f"{m} ({p})" for m, p in sorted(found.items())) or "none"
    raise ReleaseNotFound(
        f"PostgreSQL {major} is not on this node (releases found: {have}); install it or list "
        "its bin directory in the executor's postgres_bin_dirs"
    )
