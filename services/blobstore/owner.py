"""Prefix ownership: a database archives only into a prefix that is its own.

The first time a database is archived, `<prefix>/<uid>/owner.json` is created (create-only)
with its engine, system id and name. Every later start reads it back: a different engine or
system id means the prefix belongs to another database (a copy-pasted uid, a restored clone
still configured as its source), and nothing is written — two databases mixing logs under one
prefix would make both unrestorable. A prefix that already holds logs but no owner file is
judged by the logs' own metadata before it is claimed.

The archiver claims the prefix before its first log, and an engine before it points a database's
archiving at it: both use this one rule.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from schemas import DatabaseRef
from services.blobstore.errors import ObjectConflict
from services.blobstore.layout import database_prefix, owner_key
from services.blobstore.model import BlobStore

OWNER_FORMAT = 1
#: How many existing objects are examined when a prefix has logs but no owner file.
_SAMPLE = 20


class ForeignArchive(Exception):
    """The prefix is owned by another database (alarm; nothing of this database is written
    until that is resolved). Not retryable: only a person can tell which database is right."""

    retryable: bool = False

    def __init__(self, reason: str, *, owner_system_id: int | None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.owner_system_id = owner_system_id


@dataclass(frozen=True, slots=True)
class Owner:
    engine: str
    system_id: int | None
    name: str

    def document(self) -> bytes:
        # Deterministic bytes, so re-creating the same owner is an identical (successful) write.
        body = {
            "format": OWNER_FORMAT,
            "engine": self.engine,
            "system_id": self.system_id,
            "name": self.name,
        }
        return json.dumps(body, sort_keys=True).encode() + b"\n"


def owner_of(database: DatabaseRef) -> Owner:
    return Owner(engine=database.engine.value, system_id=database.system_id, name=database.name)


def _parse(raw: bytes, key: str) -> Owner:
    try:
        body = json.loads(raw)
        system_id = body.get("system_id")
        return Owner(
            engine=str(body["engine"]),
            system_id=None if system_id is None else int(system_id),
            name=str(body.get("name", "")),
        )
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise ForeignArchive(
            f"{key} is not an owner record Tidemark can read ({exc}); refusing the prefix",
            owner_system_id=None,
        ) from None


def _refuse(database: DatabaseRef, found: Owner, where: str) -> ForeignArchive:
    return ForeignArchive(
        f"prefix of {database.uid} belongs to another database: {where} says "
        f"{found.engine} system id {found.system_id} ({found.name}), this is "
        f"{database.engine.value} system id {database.system_id} ({database.name})",
        owner_system_id=found.system_id,
    )


async def claim_prefix(store: BlobStore, prefix: str, database: DatabaseRef) -> Owner:
    """Make sure `database` owns its prefix, claiming it if free. Raises `ForeignArchive`."""
    key = owner_key(prefix, database.uid)
    mine = owner_of(database)
    existing = await store.head(key)
    if existing is None:
        await _check_unclaimed_logs(store, prefix, database, mine)
        try:
            await store.put_stream(key, mine.document(), {"kind": "owner"})
            return mine
        except ObjectConflict:
            pass  # claimed concurrently, or by the same database with another name: read it
    found = _parse(await store.get_bytes(key), key)
    if (found.engine, found.system_id) != (mine.engine, mine.system_id):
        raise _refuse(database, found, key)
    return found


async def _check_unclaimed_logs(
    store: BlobStore, prefix: str, database: DatabaseRef, mine: Owner
) -> None:
    seen = 0
    async for info in store.list(f"{database_prefix(prefix, database.uid)}/"):
        engine = info.metadata.get("engine")
        system_id = info.metadata.get("system_id")
        if engine and system_id and (engine, system_id) != (mine.engine, str(mine.system_id)):
            found = Owner(engine=engine, system_id=int(system_id), name="")
            raise _refuse(database, found, f"object {info.key}")
        seen += 1
        if seen >= _SAMPLE:
            return
