"""The embedded stack's NATS users: one random password per role, each in a 0600 file.

    <state>/secrets/            0700
        nats-planner.pass       0600   a fresh random password each time the stack starts
        nats-executor.pass …
        nats-tool.pass                 the CLI's and platform tools' user
        nats-admin.pass                an operator's (`nats --user tidemark-admin …`)

Only file paths travel: a service gets `TIDEMARK_NATS__USER` and `TIDEMARK_NATS__PASSWORD_FILE`,
`stack.json` names the tool user's file, and the password itself is read at connect time. It
is never in an argument, an environment value, a log line or stack.json.
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path

from services.bus.permissions import Role, user_name
from services.settings import NatsSettings

SECRETS_DIR = "secrets"


def password_file(state_dir: Path, role: Role) -> Path:
    return state_dir / SECRETS_DIR / f"nats-{role.value}.pass"


def write_passwords(state_dir: Path, roles: tuple[Role, ...] = tuple(Role)) -> dict[Role, Path]:
    """A new random password per role (256 bits), each written 0600 from the first byte."""
    folder = state_dir / SECRETS_DIR
    folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    folder.chmod(0o700)
    files = {}
    for role in roles:
        path = password_file(state_dir, role).resolve()
        tmp = path.with_suffix(".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        os.fchmod(fd, 0o600)
        with os.fdopen(fd, "w") as out:
            out.write(secrets.token_urlsafe(32) + "\n")
        tmp.replace(path)
        files[role] = path
    return files


def client_settings(url: str, role: Role, files: dict[Role, Path]) -> NatsSettings:
    """Settings that connect to `url` as `role` (no user when the server has none)."""
    if role not in files:
        return NatsSettings(url=url)
    return NatsSettings(url=url, user=user_name(role), password_file=files[role])


def client_env(role: Role, files: dict[Role, Path]) -> dict[str, str]:
    """The environment that makes a service connect as `role`: the user and a file path."""
    if role not in files:
        return {}
    return {
        "TIDEMARK_NATS__USER": user_name(role),
        "TIDEMARK_NATS__PASSWORD_FILE": str(files[role]),
    }
