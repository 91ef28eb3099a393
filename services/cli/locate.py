"""Which stack a command talks to, from any directory.

The state directory, first found of:

1. `--state-dir DIR`;
2. `TIDEMARK_STATE_DIR`;
3. `state_dir` in the settings file named by `TIDEMARK_CONFIG` (or `--config` on `up`);
4. the per-user default, `$XDG_STATE_HOME/tidemark` (`~/.local/state/tidemark`).

A relative `state_dir` in a settings file is taken relative to that file, so a command run from
another directory finds the same stack.
"""

from __future__ import annotations

import os
import tomllib
from pathlib import Path
from typing import Annotated

import typer

StateDir = Annotated[
    Path | None,
    typer.Option(
        "--state-dir",
        help="the stack's state directory (default: $TIDEMARK_STATE_DIR, the settings file's "
        "state_dir, else ~/.local/state/tidemark)",
        show_default=False,
    ),
]


def user_default() -> Path:
    base = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(base) / "tidemark"


def _from_settings_file(config: Path | None) -> Path | None:
    named = config or (
        Path(os.environ["TIDEMARK_CONFIG"]) if os.environ.get("TIDEMARK_CONFIG") else None
    )
    if named is None or not named.is_file():
        return None
    try:
        value = tomllib.loads(named.read_text()).get("state_dir")
    except (OSError, tomllib.TOMLDecodeError):
        return None
    if not isinstance(value, str) or not value:
        return None
    path = Path(value).expanduser()
    return path if path.is_absolute() else (named.parent / path)


def find_state_dir(flag: Path | None, config: Path | None = None) -> Path:
    """The state directory this command means (see the module's docstring for the order)."""
    if flag is not None:
        return flag
    env = os.environ.get("TIDEMARK_STATE_DIR")
    if env:
        return Path(env)
    return _from_settings_file(config) or user_default()
