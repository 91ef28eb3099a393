"""Forward-only schema migrations of the catalog's store, and the small runner that applies them.

Each migration is a numbered function over one connection. `migrate` runs the missing ones in
order inside the caller's transaction and records each in `schema_version`, so a migration that
fails leaves the store exactly at the version it was (PostgreSQL and SQLite both roll DDL back).
Two catalog replicas starting at once against one PostgreSQL serialise on an advisory lock; on
SQLite the store's `BEGIN IMMEDIATE` does the same.

A migration is frozen once released: it describes the tables as they were at its version, never
the current model in `tables.py`. A test checks that migrating an empty store ends exactly at the
current model.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from sqlalchemy import Column, DateTime, Integer, MetaData, String, Table, func, select, text
from sqlalchemy.engine import Connection

from services.catalog.migrations import (
    v0001_initial,
    v0002_threads_and_log_tombstones,
    v0003_stream_positions,
    v0004_thread_disables,
)


@dataclass(frozen=True)
class Migration:
    version: int
    description: str
    apply: Callable[[Connection], None]


class MigrationError(RuntimeError):
    """The store cannot be brought to this release's schema (newer store, broken sequence)."""


MIGRATIONS: tuple[Migration, ...] = (
    Migration(1, "databases, lineages, logs, backups, backup tombstones", v0001_initial.apply),
    Migration(
        2,
        "the threads of each lineage, log tombstones",
        v0002_threads_and_log_tombstones.apply,
    ),
    Migration(3, "how far into each stream the store has applied", v0003_stream_positions.apply),
    Migration(4, "the stretches on which threads were disabled", v0004_thread_disables.apply),
)

# An arbitrary constant: the key of the advisory lock migrations take on PostgreSQL.
_PG_LOCK_KEY = 0x7464_6D63_6174  # "tdmcat"

_meta = MetaData()
schema_version = Table(
    "schema_version",
    _meta,
    Column("version", Integer, primary_key=True, autoincrement=False),
    Column("description", String(200), nullable=False),
    Column("applied_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
)


def latest(migrations: Sequence[Migration] = MIGRATIONS) -> int:
    return migrations[-1].version if migrations else 0


def current_version(conn: Connection) -> int:
    """The version the store is at; 0 for an empty store."""
    if not conn.dialect.has_table(conn, schema_version.name):
        return 0
    found = conn.execute(select(func.max(schema_version.c.version))).scalar_one_or_none()
    return int(found or 0)


def migrate(conn: Connection, migrations: Sequence[Migration] = MIGRATIONS) -> list[int]:
    """Apply every missing migration in order, inside the caller's transaction.

    Returns the versions applied (empty when the store was current). Raises `MigrationError`
    when the store is newer than this release knows, since writing to it could lose data.
    """
    expected = list(range(1, len(migrations) + 1))
    if [m.version for m in migrations] != expected:
        raise MigrationError(f"migrations must be numbered 1..{len(migrations)} without gaps")
    if conn.dialect.name == "postgresql":
        conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _PG_LOCK_KEY})
    schema_version.create(conn, checkfirst=True)
    at = current_version(conn)
    if at > latest(migrations):
        raise MigrationError(
            f"the catalog store is at schema version {at}, this release knows up to "
            f"{latest(migrations)}: upgrade Tidemark (or rebuild the store) before using it"
        )
    applied = []
    for migration in migrations[at:]:
        migration.apply(conn)
        conn.execute(
            schema_version.insert().values(
                version=migration.version, description=migration.description
            )
        )
        applied.append(migration.version)
    return applied
