"""The databases `tidemark protect` declared for one stack: `<state>/protected.json`.

Each protected database is declared once, here, as the facts the user gave (`Protected`); the
archiver's and the executor's sections are derived from it at each service start, joined to any
the settings file declares. A service restarted after `protect` (or `unprotect`) sees the change;
nothing else rewrites the user's own settings file.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel

if TYPE_CHECKING:
    from services.settings.databases import DeclaredDatabase

PROTECTED_FILE = "protected.json"


@dataclass(frozen=True)
class Protected:
    """One PostgreSQL database protected by this stack."""

    uid: str
    name: str
    system_id: int
    data_dir: str
    port: int
    socket_dir: str
    os_user: str
    spool_dir: str

    def declared(self) -> dict[str, Any]:
        """This database as one `[[databases]]` entry."""
        return {
            "uid": self.uid,
            "engine": "postgres",
            "name": self.name,
            "system_id": self.system_id,
            "postgres": {
                "data_dir": self.data_dir,
                "port": self.port,
                "socket_dir": self.socket_dir,
                "os_user": self.os_user,
                "spool_dir": self.spool_dir,
                "pg_wal_dir": str(Path(self.data_dir) / "pg_wal"),
            },
        }

    def declaration(self) -> DeclaredDatabase:
        """The declaration as the settings read it; `hosted()`/`archived()` are its views."""
        from services.settings.databases import DeclaredDatabase

        return DeclaredDatabase.model_validate(self.declared())


def read_protected(state_dir: Path) -> list[Protected]:
    try:
        raw = json.loads((state_dir / PROTECTED_FILE).read_text())
    except FileNotFoundError:
        return []
    return [Protected(**entry) for entry in raw.get("databases", [])]


def write_protected(state_dir: Path, entries: list[Protected]) -> None:
    path = state_dir / PROTECTED_FILE
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps({"databases": [asdict(e) for e in entries]}, indent=2))
    os.replace(tmp, path)  # a reader sees the old list or the new one, never half of one


def services_env(state_dir: Path) -> dict[str, str]:
    """The environment that declares the protected databases to the archiver and executor,
    joined to those of the settings file (an environment variable would hide them): one
    `TIDEMARK_DATABASES` declaration. A settings file still in the old per-section form keeps
    that form here too, since a mix of both is refused."""
    entries = read_protected(state_dir)
    if not entries:
        return {}
    from services.settings import load_settings

    settings = load_settings()
    mine = {e.uid for e in entries}
    if settings.databases or not (settings.archiver.databases or settings.executor.databases):
        declared = [_json(d) for d in settings.databases if d.uid not in mine]
        return {"TIDEMARK_DATABASES": json.dumps(declared + [e.declared() for e in entries])}
    archived = [_json(d) for d in settings.archiver.databases if d.uid not in mine]
    hosted = [_json(d) for d in settings.executor.databases if d.uid not in mine]
    views = [e.declaration() for e in entries]
    return {
        "TIDEMARK_ARCHIVER__DATABASES": json.dumps(archived + [_json(v.archived()) for v in views]),
        "TIDEMARK_EXECUTOR__DATABASES": json.dumps(hosted + [_json(v.hosted()) for v in views]),
    }


def _json(model: BaseModel) -> dict[str, Any]:
    return model.model_dump(mode="json", exclude_none=True)
