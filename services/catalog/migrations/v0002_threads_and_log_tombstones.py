"""Version 2: the threads of each lineage, and log tombstones.

- `lineage_threads`: every thread a lineage must be recovered on, reported by the archiver as
  enabled (`reported`) or seen on a log. Kept when the logs go, so a restart still knows a
  thread whose every log was deleted. Filled from the logs already stored (as seen).
- `log_tombstones`: a deleted log, by its natural key, with when it was deleted and which object
  it was (its crc32c and store time when the catalog held it). A `log.archived` of an object
  stored at or before the deletion is that object again and stays deleted.

Frozen: this is the schema as version 2 created it. Later changes are new migrations.
"""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    ForeignKeyConstraint,
    Integer,
    MetaData,
    String,
    Table,
    text,
)
from sqlalchemy.engine import Connection

from services.catalog.columns import UtcDateTime

_meta = MetaData()

# Version 1's table, only as far as the new foreign key refers to it (it is not created here).
Table(
    "lineages",
    _meta,
    Column("database_uid", String(63), primary_key=True),
    Column("key", String(16), primary_key=True),
)
_threads = Table(
    "lineage_threads",
    _meta,
    Column("database_uid", String(63), primary_key=True),
    Column("lineage", String(16), primary_key=True),
    Column("thread", Integer, primary_key=True, autoincrement=False),
    Column("reported", Boolean, nullable=False),
    ForeignKeyConstraint(["database_uid", "lineage"], ["lineages.database_uid", "lineages.key"]),
)
_tombstones = Table(
    "log_tombstones",
    _meta,
    Column("database_uid", String(63), primary_key=True),
    Column("lineage", String(16), primary_key=True),
    Column("thread", Integer, primary_key=True, autoincrement=False),
    Column("sequence", BigInteger, primary_key=True, autoincrement=False),
    Column("kind", String(16), primary_key=True),
    Column("name", String(64), primary_key=True),
    Column("object_key", String(1024), nullable=False),
    Column("deleted_at", UtcDateTime(), nullable=False),
    Column("stored_at", UtcDateTime()),
    Column("crc32c", String(8)),
    Column("reason", String(2000), nullable=False),
)


def apply(conn: Connection) -> None:
    # Only the two new tables: `lineages` above stands for version 1's own.
    _meta.create_all(conn, tables=[_threads, _tombstones])
    conn.execute(
        text(
            "INSERT INTO lineage_threads (database_uid, lineage, thread, reported) "
            "SELECT DISTINCT database_uid, lineage, thread, :no FROM logs "
            "WHERE kind IN ('redo', 'wal')"
        ),
        {"no": False},
    )
