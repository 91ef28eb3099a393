"""Which database a message is about."""

from __future__ import annotations

from enum import StrEnum

from pydantic import Field

from schemas._base import DatabaseUid, DbName, StrictModel


class Engine(StrEnum):
    """Database engines Tidemark drives through the same contracts."""

    ORACLE = "oracle"
    POSTGRES = "postgres"


class DatabaseRef(StrictModel):
    """A protected database.

    `uid` is chosen when the database is registered and never changes; it is the object-store
    prefix, so two databases never share one. `system_id` is what the engine calls itself
    (Oracle DBID, PostgreSQL system identifier) and is how a foreign archive is recognised.
    """

    uid: DatabaseUid
    engine: Engine
    name: DbName
    system_id: int | None = Field(default=None, ge=0, lt=1 << 64)
