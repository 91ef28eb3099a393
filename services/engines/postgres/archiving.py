"""Pointing a cluster's ``archive_command`` at its Tidemark spool.

Setting archiving up is four steps, in this order, so that nothing changes on the server unless
everything before it held:

1. **Whose prefix is it?** ``<prefix>/<uid>/owner.json`` is read (and claimed when free) with the
   archiver's own rule (:func:`services.blobstore.owner.claim_prefix`), using the system
   identifier the running server reports. A prefix that names another system id or engine is
   refused with ``TM-PG-FOREIGN``: two clusters mixing WAL under one prefix make both
   unrestorable, and the server's configuration is left as it was.
2. **The spool** (``docs/archiving-postgres.md``): created for the database OS user when it does
   not exist yet, and never taken over when it belongs to another database uid.
3. **walpush**, installed where the database OS user can execute it with a system interpreter
   (:func:`.spool.install_walpush`), and the command line built by
   :meth:`.spool.Spool.archive_command` — the same string the docs show, built in one place.
4. **The server**: ``ALTER SYSTEM`` for whatever differs (``archive_mode = on``,
   ``archive_command``, ``wal_level = replica`` when it is ``minimal``, ``archive_library`` reset
   because it would take precedence over ``archive_command``), then ``pg_reload_conf()``.
   ``archive_mode`` and ``wal_level`` only change at a restart, which is not ours to do on a
   production database: it is reported (:attr:`ArchivingSetup.restart_needed`), and a backup
   refuses to start until archiving is actually on (:func:`check_archiving_active`).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from schemas import DatabaseRef
from services.blobstore import BlobStore
from services.blobstore.owner import ForeignArchive, claim_prefix
from services.engines.base import EngineError
from services.engines.postgres.oscmd import OsCommandError, system_python
from services.engines.postgres.spool import Spool, SpoolError, install_walpush
from services.engines.postgres.sql import CODE_SQL, PgTarget, query, query_row

__all__ = [
    "CODE_FOREIGN",
    "CODE_NO_ARCHIVE",
    "CODE_SPOOL",
    "ArchivingSetup",
    "WalPushArchiving",
    "check_archiving_active",
    "claim_archive",
    "configure_server",
    "prepare_walpush",
    "spool_dir",
]

CODE_FOREIGN = "TM-PG-FOREIGN"
"""The archive prefix belongs to another database (owner.json or the objects in it say so)."""
CODE_SPOOL = "TM-PG-SPOOL"
"""The spool or walpush cannot be set up where configured (or there is no configuration)."""
CODE_NO_ARCHIVE = "TM-PG-NOARCHIVE"
"""WAL is not being archived, so a base backup taken now could never be restored."""

RELOAD_WAIT_S = 10.0
"""How long new sessions may take to see a reloaded configuration (the postmaster handles
SIGHUP asynchronously, so ``pg_reload_conf()`` returns before anything has changed)."""

_ARCHIVE_SETTINGS = (
    "SELECT current_setting('wal_level'), current_setting('archive_mode'), "
    "current_setting('archive_command'), current_setting('archive_library', true)"
)


class _Spooled(Protocol):
    """A declared database, as far as its spool goes (the archiver's declaration has both)."""

    @property
    def uid(self) -> str: ...

    @property
    def spool_dir(self) -> Path | None: ...


@dataclass(frozen=True)
class WalPushArchiving:
    """Where walpush is installed on this node, and which spool each database's WAL goes to.

    The spools are the archiver's (``archiver.databases[].spool_dir``): the executor and the
    archiver of a node must agree on them, so build this from the archiver's settings
    (:meth:`from_databases`) rather than configuring the paths twice."""

    tool_dir: Path
    spools: Mapping[str, Path]
    #: The interpreter walpush runs with; default: :func:`.oscmd.system_python` for the user.
    python: Path | None = None

    @classmethod
    def from_databases(
        cls, databases: Iterable[_Spooled], tool_dir: Path, python: Path | None = None
    ) -> WalPushArchiving:
        spools = {d.uid: d.spool_dir for d in databases if d.spool_dir is not None}
        return cls(tool_dir=tool_dir, spools=spools, python=python)


@dataclass(frozen=True)
class ArchivingSetup:
    """What :func:`configure_server` did."""

    archive_command: str
    #: Settings ALTER SYSTEM changed (empty when the server was already configured).
    changed: tuple[str, ...] = ()
    #: Settings that take effect only after a restart of the cluster.
    restart_needed: tuple[str, ...] = field(default=())


async def claim_archive(store: BlobStore, prefix: str, database: DatabaseRef) -> None:
    """Claim ``database``'s prefix, or refuse with ``TM-PG-FOREIGN`` if another owns it."""
    try:
        await claim_prefix(store, prefix, database)
    except ForeignArchive as exc:
        raise EngineError.of(exc.reason, code=CODE_FOREIGN) from None


def _prepare_walpush(target: PgTarget, spool_dir: Path, archiving: WalPushArchiving) -> str:
    spool = Spool(spool_dir)
    if spool.ready_dir.is_dir():
        # An existing spool keeps its limits (init would rewrite spool.json with ours); it is
        # only checked to be this database's.
        owner = spool.config().database_uid
        if owner not in (None, target.uid):
            raise SpoolError(
                f"{spool.path} is the spool of database {owner!r}, not {target.uid!r}: "
                "two databases never share a spool"
            )
    else:
        spool.init(target.uid, owner=target.user)
    python = archiving.python or system_python(target.user)
    tool = install_walpush(archiving.tool_dir, user=target.user, interpreter=python)
    return spool.archive_command(python, tool)


def spool_dir(target: PgTarget, archiving: WalPushArchiving | None) -> Path:
    """The spool configured for ``target``; ``TM-PG-SPOOL`` when there is none."""
    found = archiving.spools.get(target.uid) if archiving is not None else None
    if found is None:
        raise EngineError.of(
            f"database {target.uid}: no wal-push spool is configured on this node "
            "(the archiver's databases[].spool_dir, handed to PostgresEngine as archiving=)",
            code=CODE_SPOOL,
        )
    return found


async def prepare_walpush(target: PgTarget, archiving: WalPushArchiving | None) -> str:
    """Make sure ``target``'s spool exists and walpush is installed; return the
    ``archive_command`` that runs it. ``TM-PG-SPOOL`` when either cannot be done."""
    directory = spool_dir(target, archiving)
    assert archiving is not None
    try:
        return await asyncio.to_thread(_prepare_walpush, target, directory, archiving)
    except (SpoolError, OsCommandError, ValueError, OSError) as exc:
        raise EngineError.of(f"database {target.uid}: {exc}", code=CODE_SPOOL) from None


async def _wait_for_reload(target: PgTarget, before: str) -> None:
    deadline = time.monotonic() + RELOAD_WAIT_S
    while (await query_row(target, "SELECT pg_conf_load_time()"))[0] == before:
        if time.monotonic() > deadline:
            raise EngineError.of(
                f"database {target.uid}: the configuration reload was not seen within "
                f"{RELOAD_WAIT_S:g}s",
                code=CODE_SQL,
                retryable=True,
            )
        await asyncio.sleep(0.05)


async def configure_server(target: PgTarget, archive_command: str) -> ArchivingSetup:
    """Set what differs with ``ALTER SYSTEM``, reload, and say what still needs a restart."""
    wal_level, archive_mode, current_command, library = await query_row(target, _ARCHIVE_SETTINGS)
    statements: list[str] = []
    changed: list[str] = []
    if wal_level == "minimal":
        statements.append("ALTER SYSTEM SET wal_level = 'replica';")
        changed.append("wal_level")
    if archive_mode == "off":
        statements.append("ALTER SYSTEM SET archive_mode = 'on';")
        changed.append("archive_mode")
    if current_command != archive_command:
        statements.append("ALTER SYSTEM SET archive_command = :'archive_command';")
        changed.append("archive_command")
    if library:
        statements.append("ALTER SYSTEM RESET archive_library;")
        changed.append("archive_library")
    if statements:
        before = (await query_row(target, "SELECT pg_conf_load_time()"))[0]
        statements.append("SELECT pg_reload_conf();")
        await query(target, "\n".join(statements), variables={"archive_command": archive_command})
        await _wait_for_reload(target, before)
    pending = await query(
        target, "SELECT name FROM pg_settings WHERE pending_restart ORDER BY name"
    )
    restart = tuple(row[0] for row in pending if row[0] in ("wal_level", "archive_mode"))
    return ArchivingSetup(archive_command, tuple(changed), restart)


async def check_archiving_active(target: PgTarget) -> None:
    """Refuse (``TM-PG-NOARCHIVE``) when the running server archives no WAL.

    A base backup without WAL (``-X none``) is restorable only from the archive; with
    ``archive_mode`` off, or no command or library set, the server would not even wait for the
    end segment, and the backup would look complete while no restore could ever use it."""
    _, archive_mode, command, library = await query_row(target, _ARCHIVE_SETTINGS)
    if archive_mode == "off" or not (command or library):
        why = (
            "archive_mode is off (setting it needs a restart)"
            if archive_mode == "off"
            else "archive_command is empty"
        )
        raise EngineError.of(
            f"database {target.uid}: WAL is not archived ({why}); a base backup now could "
            "not be restored. Run setup_archiving first.",
            code=CODE_NO_ARCHIVE,
        )
