"""Version 1: databases, lineages, logs, backups and backup tombstones.

Frozen: this is the schema as version 1 created it. Later changes are new migrations.
"""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    ForeignKeyConstraint,
    Index,
    Integer,
    MetaData,
    String,
    Table,
)
from sqlalchemy.engine import Connection

from services.catalog.columns import U64, UtcDateTime

_meta = MetaData()

Table(
    "databases",
    _meta,
    Column("uid", String(63), primary_key=True),
    Column("engine", String(16), nullable=False),
    Column("name", String(63), nullable=False),
    Column("system_id", U64()),
)
Table(
    "lineages",
    _meta,
    Column("database_uid", String(63), primary_key=True),
    Column("key", String(16), primary_key=True),
    Column("kind", String(16), nullable=False),
    Column("ident", BigInteger, nullable=False),
    Column("parent", String(16)),
    Column("branch_at", U64()),
    Column("number", Integer),
    ForeignKeyConstraint(["database_uid"], ["databases.uid"]),
)
Table(
    "logs",
    _meta,
    Column("database_uid", String(63), primary_key=True),
    Column("lineage", String(16), primary_key=True),
    Column("thread", Integer, primary_key=True),
    Column("sequence", BigInteger, primary_key=True, autoincrement=False),
    Column("kind", String(16), primary_key=True),
    Column("name", String(64), primary_key=True),
    Column("first", U64()),
    Column("next", U64()),
    Column("first_time", UtcDateTime()),
    Column("next_time", UtcDateTime()),
    Column("archived_at", UtcDateTime(), nullable=False),
    Column("stored_at", UtcDateTime(), nullable=False),
    Column("size_bytes", BigInteger, nullable=False),
    Column("crc32c", String(8), nullable=False),
    Column("compression", String(8), nullable=False),
    Column("object_key", String(1024), nullable=False),
    Column("node", String(253)),
    ForeignKeyConstraint(["database_uid", "lineage"], ["lineages.database_uid", "lineages.key"]),
    Index("logs_by_object_key", "database_uid", "object_key"),
)
Table(
    "backups",
    _meta,
    Column("database_uid", String(63), primary_key=True),
    Column("backup_id", String(64), primary_key=True),
    Column("lineage", String(16), nullable=False),
    Column("kind", String(16), nullable=False),
    Column("cumulative", Boolean, nullable=False),
    Column("tag", String(30)),
    Column("compression", String(8), nullable=False),
    Column("parent_backup_id", String(64)),
    Column("job_id", String(36), nullable=False),
    Column("start", U64(), nullable=False),
    Column("consistent_at", U64(), nullable=False),
    Column("started_at", UtcDateTime(), nullable=False),
    Column("completed_at", UtcDateTime(), nullable=False),
    Column("size_bytes", BigInteger, nullable=False),
    Column("piece_count", Integer, nullable=False),
    Column("manifest_key", String(1024), nullable=False),
    ForeignKeyConstraint(["database_uid", "lineage"], ["lineages.database_uid", "lineages.key"]),
)
Table(
    "backup_tombstones",
    _meta,
    Column("database_uid", String(63), primary_key=True),
    Column("backup_id", String(64), primary_key=True),
    Column("deleted_at", UtcDateTime(), nullable=False),
    Column("reason", String(2000), nullable=False),
)


def apply(conn: Connection) -> None:
    _meta.create_all(conn)
